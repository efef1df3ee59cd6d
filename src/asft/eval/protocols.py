"""Evaluation protocols: named, versioned presets of how a benchmark is prompted, sampled and scored.

`paper` is the ASFT paper's protocol (upstream `math_evaluation/eval.sh`): the alpaca training
template followed by a newline, 16 samples per problem at temperature 1.0 and top_p 1.0, up to 4096
new tokens, the harness's stop strings; the reported number is the accuracy averaged over the 16
samples (avg@16, `mean_acc`), with pass@1 of sample 0 and pass@16 beside it, graded by the
`qwen_harness` policy (the decisions of the Qwen2.5-Math harness that graded the published numbers).
`fork_cot_greedy` is what the fork (doub7e/token-SFT) reported: the `cot` prompt
`Question: {question}\\nAnswer:`, one greedy sample. Its numbers are not comparable with the paper's.
`paper_medical` is upstream's medical evaluation (eval/medeval/vllm_medical_test.py) of MedQA,
MMLU-medical and MedMCQA: the `choice` prompt `Question: ...\\n\\nOptions:\\nA. ...\\n\\nAnswer:`, no
sampling: the answer is the option letter with the highest log-probability among the top-10 tokens
at the first generated position (scoring `choice_logprobs`, asft.eval.evaluation).
`custom` takes every field from the `eval` section of the config.
A protocol's version enters the eval keys: bump it when its definition changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from asft.core.names import did_you_mean


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    template: str
    n_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    description: str
    scoring: str = "generate"  # or choice_logprobs (asft.workflow.config.EvalConfig.scoring)
    grading: str = "strict"  # the grading policy of its numbers (asft.eval.grading); a score setting

    def eval_fields(self) -> dict:
        """The generation fields this protocol fixes (scoring included; plan.generate_settings keys it only
        when not `generate`, so the keys of the protocols made before it hold). Its grading policy is the
        score stage's, not generation's: changing it re-scores, it never re-generates."""
        fields = asdict(self)
        for meta in ("name", "version", "description", "grading"):
            fields.pop(meta)
        return fields


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("paper", 1, template="alpaca", n_samples=16, temperature=1.0, top_p=1.0, max_new_tokens=4096,
                 grading="qwen_harness",
                 description="ASFT paper: alpaca prompt + newline, avg@16 at T=1.0, top_p 1.0, 4096 tokens, graded "
                 "like the Qwen2.5-Math harness"),
        Protocol("fork_cot_greedy", 1, template="cot", n_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=4096,
                 description="fork (token-SFT): 'Question: ...\\nAnswer:' prompt, one greedy sample"),
        Protocol("paper_medical", 1, template="choice", n_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=1,
                 scoring="choice_logprobs",
                 description="upstream medeval (vllm_medical_test.py): 'Question: ...\\n\\nOptions:\\nA. ...\\n\\n"
                 "Answer:' prompt, the top-10 next-token log-probabilities choose the letter"),
    )
}
CUSTOM = "custom"


def get_protocol(name: str) -> Protocol | None:
    """The named protocol, or None for `custom` (the eval section decides)."""
    if name == CUSTOM:
        return None
    try:
        return PROTOCOLS[name]
    except KeyError:
        known = [CUSTOM, *PROTOCOLS]
        hint = did_you_mean(name, known)
        raise ValueError(f"unknown eval protocol '{name}'{hint}; known: {', '.join(known)}") from None
