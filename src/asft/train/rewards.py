"""The `rl` stage's rewards: our own scoring, one pure function per kind of answer.

- `grade`: math. 1.0 when the grading policy (asft.eval.grading, the score stage's grader) finds the
  completion's final answer equal to the gold answer, else 0.0. The gold is the answer the policy
  extracts from the train row's response (`gold_answer`).
- `letter`: multiple choice. 1.0 when the letter chosen from the completion is the gold letter. The
  letter is chosen by the score stage's rule (asft.eval.score.choose_letter) read on text: the
  completion's first word votes like a top token of the eval (`text.strip().upper()` is a letter), else
  the first letter, in letter order, found in the text. The gold is the letter the train row's response
  gives (`gold_letter`).

No torch import: the functions take text and return floats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from asft.eval.score import UPSTREAM_LETTERS, choose_letter

RewardKind = Literal["grade", "letter"]

#: A response that states its option: `B`, `B.`, `(B) text`, `B: text`, or `... answer is B ...`.
_LEADING_LETTER = re.compile(r"^\s*\(?([A-Z])(?:[\s.):]|$)")
_STATED_LETTER = re.compile(r"\b(?:answer|option)\s*(?:is|:)?\s*:?\s*\(?([A-Z])\b(?![a-z])", re.IGNORECASE)


def gold_answer(response: str, policy: str) -> str | None:
    """The gold answer of a math row: what `policy` extracts from its response (None: none found)."""
    from asft.eval.grading import extract_answer

    return extract_answer(response, policy=policy)


def gold_letter(response: str, letters: Sequence[str] = UPSTREAM_LETTERS) -> str | None:
    """The gold option of a multiple-choice row: the letter its response starts with (`B`, `B.`, `(B) ...`),
    else the one it states (`the answer is B`); None when it gives neither."""
    for pattern in (_LEADING_LETTER, _STATED_LETTER):
        match = pattern.search(response)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    return None


def chosen_letter(completion: str, letters: Sequence[str] = UPSTREAM_LETTERS) -> str:
    """The option a completion chooses, by the score stage's rule on text (see the module's docstring)."""
    words = completion.split()
    first = words[0].strip(".():,") if words else ""
    return choose_letter([(first, 0.0)], completion, letters).letter


def grade_reward(completion: str, gold: str, policy: str) -> float:
    """1.0 when `policy` grades the completion's final answer equal to `gold`, else 0.0."""
    from asft.eval.grading import is_correct

    return 1.0 if is_correct(completion, gold, policy) else 0.0


def letter_reward(completion: str, gold: str, letters: Sequence[str] = UPSTREAM_LETTERS) -> float:
    """1.0 when the letter chosen from the completion is `gold`, else 0.0."""
    return 1.0 if chosen_letter(completion, letters) == gold else 0.0


def reward(kind: RewardKind, completion: str, gold: str, *, policy: str = "strict") -> float:
    """The reward of one completion (`policy` is the grading policy of `grade`)."""
    if kind == "grade":
        return grade_reward(completion, gold, policy)
    if kind == "letter":
        return letter_reward(completion, gold)
    raise ValueError(f"unknown reward '{kind}'; known: grade, letter")
