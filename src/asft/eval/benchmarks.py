"""Evaluation benchmarks, registered by name.

A benchmark is mostly data: where its rows come from, which field holds the question, how the
gold answer is read, and a version. File benchmarks ship in `data/benchmarks/<name>/test.jsonl`
(byte-exact copies of the upstream harness files, see PROVENANCE.md there) and are checked
against their sha256 on every load. Embedded benchmarks are the fixed test splits of the
generated arithmetic tasks. YAML benchmarks (`eval.include_path`, :func:`load_include_path`) are
a user's jsonl files described by one YAML file each, as lm-evaluation-harness tasks are.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import ascii_uppercase
from typing import Any

from asft.core.names import did_you_mean
from asft.core.files import sha256_file
from asft.train.data_checks import read_jsonl_rows

DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "benchmarks"
QUESTION_FIELDS = ("question", "problem", "Question", "input")  # upstream parse_question order


@dataclass(frozen=True)
class Choices:
    """A multiple-choice item as its file gives it: the stem, the options in file order, the gold letter.

    The `choice` template lettering the options A, B, C, ... by position, as upstream does.
    """

    stem: str
    options: tuple[str, ...]
    gold: str

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(ascii_uppercase[: len(self.options)])


@dataclass(frozen=True)
class Problem:
    """One evaluation item: the question, its gold answer, and a reference solution if known.

    Multiple-choice items also carry their structured `choices`; `question` is then the stem with
    lettered options, what the free-text templates (alpaca, cot, ...) show the model.
    """

    question: str
    gold: str
    solution: str | None = None
    choices: Choices | None = None


@dataclass(frozen=True)
class HubSource:
    """A benchmark read from a Hugging Face dataset (offline cache honoured) or a local jsonl copy."""

    repo: str
    split: str
    subsets: tuple[str | None, ...] = (None,)
    revision: str = "main"


@dataclass(frozen=True)
class CodeSuite:
    """A code benchmark's EvalPlus dataset, its test suite, and the benchmark whose generation it scores
    (HumanEval and HumanEval+ share one generation: the same prompts, two sets of tests)."""

    dataset: str  # humaneval, mbpp
    suite: str  # base: the original tests; plus: the original and EvalPlus's extra tests
    generation: str  # the benchmark whose samples it scores (itself for the base suite)


@dataclass(frozen=True)
class Benchmark:
    name: str
    display: str
    version: int
    load_rows: Callable[[Mapping[str, Any]], list[Problem]] = field(repr=False)
    sha256: str | None = None
    path: Path | None = None
    hub: HubSource | None = None
    multiple_choice: bool = False  # its problems carry `choices` (template choice, scoring choice_logprobs)
    spec_file: Path | None = None  # the YAML file that defines it (eval.include_path); None for asft's own
    code: CodeSuite | None = None  # a code benchmark, scored by running its tests (asft.eval.code)
    judged: bool = False  # its outputs are judged against reference outputs by a judge model (AlpacaEval)

    def settings(self) -> dict[str, Any]:
        """What enters an eval key: identity and version, not the loader code."""
        settings: dict[str, Any] = {"name": self.name, "version": self.version, "sha256": self.sha256}
        if self.hub is not None:
            settings["hub"] = {"repo": self.hub.repo, "split": self.hub.split, "subsets": list(self.hub.subsets),
                               "revision": self.hub.revision}
        return settings


_REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in _REGISTRY:
        raise ValueError(f"benchmark '{benchmark.name}' is registered twice")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def available_benchmarks() -> list[str]:
    _load_env_include_path()
    return sorted(_REGISTRY)


def get_benchmark(name: str) -> Benchmark:
    if name not in _REGISTRY:
        _load_env_include_path()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown benchmark '{name}'{benchmark_hint(name)}; "
                         f"known: {', '.join(available_benchmarks())}") from None


#: Names users type for a benchmark (normalised: lower case, letters and digits only) -> its name.
#: Display names (MATH-500 -> math500) are matched too.
ALIASES = {"math500": "math_oai", "hendrycksmath500": "math_oai", "mathoai": "math_oai", "aime2024": "aime24",
           "amc2023": "amc23", "olympiad": "olympiadbench", "minerva": "minerva_math", "medqausmle": "medqa",
           "mmlumed": "mmlu_medical"}


def _normalised(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def benchmark_hint(name: object) -> str:
    """" (did you mean 'math_oai' (MATH-500)?)" for a near miss, an alias or a display name; "" otherwise."""
    key = _normalised(name)
    for bench in _REGISTRY.values():
        if key and key in (_normalised(bench.name), _normalised(bench.display)):
            return f" (did you mean '{bench.name}' ({bench.display})?)"
    if key in ALIASES and ALIASES[key] in _REGISTRY:
        return f" (did you mean '{ALIASES[key]}' ({_REGISTRY[ALIASES[key]].display})?)"
    return did_you_mean(name, _REGISTRY)


def _question(row: Mapping[str, Any], path: Path, index: int) -> str:
    for key in QUESTION_FIELDS:
        if isinstance(row.get(key), str) and row[key]:
            return row[key]
    raise ValueError(f"{path}: row {index} has no question field (looked for {', '.join(QUESTION_FIELDS)})")


def read_checked_jsonl(path: Path, sha256: str | None) -> list[dict[str, Any]]:
    """Read a jsonl benchmark file after checking its bytes against the recorded sha256."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} is missing")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ValueError(f"benchmark file {path} was changed: sha256 {actual}, expected {sha256}")
    # the training files' reader: a bad byte, bad JSON or a non-object row names the file and the line
    return read_jsonl_rows(path)


def _file_benchmark(name: str, display: str, sha256: str, gold: Callable[[dict], str | None], solution: str | None,
                    path: Path | None = None):
    path = path or DATA_DIR / name / "test.jsonl"

    def load(_: Mapping[str, Any]) -> list[Problem]:
        problems = []
        for index, row in enumerate(read_checked_jsonl(path, sha256)):
            answer = gold(row)
            if answer is None or str(answer).strip() == "":
                raise ValueError(f"{path}: row {index} has no gold answer")
            sol = row.get(solution) if solution else None
            if isinstance(sol, list):
                sol = sol[0] if sol else None
            problems.append(Problem(_question(row, path, index), str(answer), sol))
        return problems

    return Benchmark(name=name, display=display, version=1, load_rows=load, sha256=sha256, path=path)


def _gsm8k_gold(row: dict) -> str | None:
    answer = row.get("answer", "")
    return answer.split("####")[-1].strip().replace(",", "") if "####" in answer else None


def _amc_gold(row: dict) -> str | None:
    value = row.get("answer")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None if value is None else str(value)


def _olympiad_gold(row: dict) -> str | None:
    answers = row.get("final_answer") or []
    return answers[0].strip("$").strip() if answers else None


def _minerva_gold(row: dict) -> str | None:
    from asft.eval.grading import last_boxed  # the grader is heavy; only this benchmark's loader needs it

    return last_boxed(row.get("solution", ""))


def _str_field(key: str) -> Callable[[dict], str | None]:
    return lambda row: None if row.get(key) is None else str(row[key])


for _args in (
    ("math_oai", "MATH-500", "a239272930e5202bf1d5275f7fa475a56687c775a61f1354a6d3371bf9dd7a94", _str_field("answer"), "solution"),
    ("gsm8k", "GSM8K", "9f098df7ff4522078d6ccec27a5c38a454790fdb51131bedfaa0e490070d5394", _gsm8k_gold, None),
    ("minerva_math", "Minerva", "0e656b430d3a0a1dab6aa853f453ba3805e28e2cabe4fc72486a897cc09d8ba2", _minerva_gold, "solution"),
    ("olympiadbench", "Olympiad", "bb8c1e38a16ea9eacb77530315a674d883f267fbff79183effc53681b4fcc416", _olympiad_gold, "solution"),
    ("aime24", "AIME24", "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac", _str_field("answer"), "solution"),
    ("amc23", "AMC23", "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4", _amc_gold, None),
):
    register(_file_benchmark(*_args))


def _embedded_benchmark(task: str) -> Benchmark:
    def load(context: Mapping[str, Any]) -> list[Problem]:
        from asft.embedded.tasks import split

        _, test = split(task, int(context.get("split_seed", 0)))
        return [Problem(ex.instruction, ex.answer, ex.response) for ex in test]

    return Benchmark(name=f"embedded_{task}", display=task, version=1, load_rows=load)


for _task in ("add", "sub", "mul"):
    register(_embedded_benchmark(_task))


LETTERS = "ABCDEFGH"
#: Distances of the wrong options from the answer: the slips a model makes (a unit, a carry, a tens digit).
DISTRACTOR_OFFSETS = (-20, -10, -2, -1, 1, 2, 10, 20)


def arithmetic_choices(instruction: str, answer: str, rng: random.Random, n_options: int = 4) -> Choices:
    """The stem, `n_options` numeric options (the answer and near misses, none negative) and the gold letter."""
    value = int(answer)
    wrong = sorted({value + d for d in DISTRACTOR_OFFSETS if value + d >= 0})
    options = [str(v) for v in rng.sample(wrong, n_options - 1)]
    gold_index = rng.randrange(n_options)
    options.insert(gold_index, answer)
    return Choices(stem=instruction, options=tuple(options), gold=LETTERS[gold_index])


def _embedded_choice_benchmark(task: str) -> Benchmark:
    """The embedded test split as four-option multiple choice: a CPU-sized analogue of the medical suite."""

    def load(context: Mapping[str, Any]) -> list[Problem]:
        from asft.embedded.tasks import split

        seed = int(context.get("split_seed", 0))
        _, test = split(task, seed)
        problems = []
        for ex in test:
            # one generator per problem, seeded by split seed and prompt: a problem's options never
            # depend on which other problems are evaluated (eval.limit)
            rng = random.Random(f"asft-choice:{seed}:{ex.instruction}")
            choices = arithmetic_choices(ex.instruction, ex.answer, rng)
            problems.append(Problem(choice_question(choices.stem, list(choices.options)), choices.gold,
                                    choices=choices))
        return problems

    return Benchmark(name=f"embedded_{task}_choice", display=f"{task} (choice)", version=1, load_rows=load,
                     multiple_choice=True)


for _task in ("add", "sub", "mul"):
    register(_embedded_choice_benchmark(_task))


def choice_question(question: str, options: list[str]) -> str:
    """A multiple-choice question as the model sees it: the stem, then lettered options."""
    return question.strip() + "\n" + "\n".join(f"{LETTERS[i]}. {str(o).strip()}" for i, o in enumerate(options))


def _hub_rows(source: HubSource, context: Mapping[str, Any]) -> list[dict[str, Any]]:
    local = context.get("local_file")
    if local:
        return read_checked_jsonl(Path(local), context.get("local_sha256"))
    from datasets import load_dataset

    rows: list[dict[str, Any]] = []
    for subset in source.subsets:
        try:
            dataset = load_dataset(source.repo, subset, split=source.split, revision=source.revision)
        except Exception as error:
            raise RuntimeError(
                f"benchmark {source.repo}{'/' + subset if subset else ''} ({source.split}) could not be loaded: "
                f"{error}. Offline? fill HF_HOME and set HF_HUB_OFFLINE=1, or set eval.benchmark_files."
            ) from error
        rows += [dict(row) for row in dataset]
    return rows


def _choice_benchmark(name: str, display: str, source: HubSource,
                      parse: Callable[[dict], tuple[str, list[str], str]], version: int = 1,
                      sorted_options: bool = False) -> Benchmark:
    """A multiple-choice benchmark: graded by the letter of the chosen option.

    `choices` keeps the options in file order (upstream's prompt letters them by position);
    `question`, the free-text rendering, keeps the order it always had (`sorted_options` for MedQA's
    dict), so the keys and results of the `generate` scoring do not change.
    """

    def load(context: Mapping[str, Any]) -> list[Problem]:
        problems = []
        where = context.get("local_file") or f"{source.repo} ({source.split})"
        for index, row in enumerate(_hub_rows(source, context)):
            try:
                question, options, gold = parse(row)
                shown = [row["options"][k] for k in sorted(row["options"])] if sorted_options else options
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"benchmark {name}: {where} line {index + 1} lacks a field ({error}); "
                                 f"columns: {sorted(row)}") from None
            choices = Choices(stem=question, options=tuple(options), gold=gold)
            problems.append(Problem(choice_question(question, shown), gold, choices=choices))
        return problems

    return Benchmark(name=name, display=display, version=version, load_rows=load, hub=source, multiple_choice=True)


def _medqa(row: dict) -> tuple[str, list[str], str]:
    options = row["options"]
    return row["question"], [str(options[k]) for k in options], str(row["answer_idx"]).strip()


def _medmcqa(row: dict) -> tuple[str, list[str], str]:
    # upstream: chr(65 + cop), and an unlabelled row (cop == -1) counts as 'A'
    cop = int(row["cop"])
    return row["question"], [row["opa"], row["opb"], row["opc"], row["opd"]], "A" if cop == -1 else LETTERS[cop]


def _mmlu(row: dict) -> tuple[str, list[str], str]:
    return row["question"], list(row["choices"]), LETTERS[int(row["answer"])]


MMLU_MEDICAL = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine")
for _bench in (
    _choice_benchmark("medqa", "MedQA", HubSource("GBaker/MedQA-USMLE-4-options", "test"), _medqa,
                      sorted_options=True),
    # version 2: an unlabelled row (cop -1) has gold 'A' as upstream, no longer the impossible 'H'
    _choice_benchmark("medmcqa", "MedMCQA", HubSource("openlifescienceai/medmcqa", "validation"), _medmcqa,
                      version=2),
    _choice_benchmark("mmlu_medical", "MMLU-med", HubSource("cais/mmlu", "test", MMLU_MEDICAL), _mmlu),
):
    register(_bench)


def _alpaca_eval() -> Benchmark:
    """AlpacaEval 2: 805 open-ended instructions, judged against GPT-4 Turbo's outputs (asft.eval.judge).

    The gold of a problem is its reference output (what the judge compares with); there is no answer to
    extract, so no drift on a gold solution either."""
    from asft.eval.judge import reference

    def load(_: Mapping[str, Any]) -> list[Problem]:
        return [Problem(ref.instruction, ref.output) for ref in reference.load_reference()]

    return Benchmark(name=reference.BENCHMARK, display=reference.DISPLAY, version=1, load_rows=load,
                     sha256=reference.REFERENCE_SHA256, path=reference.REFERENCE_FILE, judged=True)


register(_alpaca_eval())


@dataclass(frozen=True)
class KnownCopy:
    """A benchmark file whose bytes are known: a local copy with this sha256 is that file."""

    benchmark: str
    source: str
    size: int


#: Upstream's own medical test files (Git LFS in zhuchichi56/ASFT, eval/medeval/test_data/). They are
#: not shipped here; a copy named in eval.benchmark_files is recognised by its sha256 (scores.json).
KNOWN_COPIES: dict[str, KnownCopy] = {
    "c3b905ccfa66152dc25afbcb2c10e86c0bdb208824f0658fcdb2c040f60a2beb":
        KnownCopy("medqa", "upstream test_data: zhuchichi56/ASFT eval/medeval/test_data/medqa_test.jsonl", 2075679),
    "7dc563331259cb7fb7b3bb802c9c1a8ce4967aa6db92f1f508c3cb0da0de2ed9":
        KnownCopy("mmlu_medical", "upstream test_data: zhuchichi56/ASFT eval/medeval/test_data/mmlu_medical_test.jsonl",
                  1096167),
    "67376143fbd289b2baa9f3ba661f7b2f1b89e1b1c46d2d2d5403c3e046f522b6":
        KnownCopy("medmcqa", "upstream test_data: zhuchichi56/ASFT eval/medeval/test_data/medmcqa_test.jsonl",
                  2680217),
}


def file_provenance(benchmark: str, sha256: str | None) -> str | None:
    """What a local benchmark file is, when its bytes are a known file: e.g. 'upstream test_data: ...'."""
    known = KNOWN_COPIES.get((sha256 or "").lower())
    if known is None:
        return None
    if known.benchmark != benchmark:
        return f"{known.source} (given for '{benchmark}', but it is the '{known.benchmark}' file)"
    return known.source


def _code_benchmark(name: str, display: str, suite: CodeSuite) -> Benchmark:
    """HumanEval(+) / MBPP(+): a problem's question is EvalPlus's prompt, its gold the task id (the score stage
    runs that task's tests), its solution the canonical one. The file is sha256-checked on every load."""
    from asft.eval.code.data import checked_file, get_dataset

    data = get_dataset(suite.dataset)

    def load(context: Mapping[str, Any]) -> list[Problem]:
        from asft.eval.code.data import read_tasks
        from asft.eval.code.prompts import task_prompt

        path = checked_file(suite.dataset, context.get("local_file"), context.get("local_sha256"))
        return [Problem(task_prompt(task), task["task_id"], task["canonical_solution"]) for task in read_tasks(path)]

    return Benchmark(name=name, display=display, version=1, load_rows=load, sha256=data.sha256, path=data.path,
                     code=suite)


for _bench in (
    _code_benchmark("humaneval", "HumanEval", CodeSuite("humaneval", "base", "humaneval")),
    _code_benchmark("humaneval_plus", "HumanEval+", CodeSuite("humaneval", "plus", "humaneval")),
    _code_benchmark("mbpp", "MBPP", CodeSuite("mbpp", "base", "mbpp")),
    _code_benchmark("mbpp_plus", "MBPP+", CodeSuite("mbpp", "plus", "mbpp")),
):
    register(_bench)


def generation_benchmark(name: str) -> str:
    """The benchmark whose generation `name` scores: itself, or for a plus suite its base benchmark."""
    bench = get_benchmark(name)
    return bench.code.generation if bench.code else name


def load_problems(name: str, context: Mapping[str, Any] | None = None, limit: int | None = None) -> list[Problem]:
    """Rows of a benchmark; `context` carries settings such as the embedded split seed."""
    problems = get_benchmark(name).load_rows(context or {})
    return problems[:limit] if limit else problems




# --- YAML benchmarks: eval.include_path ---------------------------------------------------------------

#: The folders of YAML benchmarks loaded in this process, as absolute paths (os.pathsep-separated); set
#: when the config is parsed, so that the jobs Snakemake starts register the same benchmarks.
INCLUDE_PATH_ENV = "ASFT_BENCHMARK_PATH"
YAML_FIELDS = {
    "task": "the benchmark's name, as eval.benchmarks and table.* name it (letters, digits, _ . -)",
    "display": "its column title in the table (default: the name)",
    "version": "an integer you bump when the benchmark changes in a way its file does not show (default 1)",
    "data_file": "the jsonl file of the problems, relative to the YAML file",
    "sha256": "the expected sha256 of data_file (checked; optional)",
    "doc_to_text": "the question: a row field, or a text with {{field}} placeholders",
    "doc_to_target": "the row field of the gold answer (multiple choice: a letter, a 0-based index or the option)",
    "doc_to_choice": "multiple choice only: the row field holding the options (a list, or a mapping letter -> option)",
    "doc_to_solution": "the row field of a reference solution (optional; drift is measured on it)",
    "description": "one line on what it is (asft ls benchmarks)",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_YAML_LOADED: set[str] = set()  # folders already read from INCLUDE_PATH_ENV
_FROM_ENV: set[str] = set()  # benchmarks registered from INCLUDE_PATH_ENV only: a config's own folders replace them


class YamlBenchmarkError(ValueError):
    """A YAML benchmark file is wrong; the message names the file and the field."""


def _field_name(value: object, where: str) -> str:
    """A row field named bare (`answer`) or as a placeholder (`{{answer}}`)."""
    if not isinstance(value, str) or not value.strip():
        raise YamlBenchmarkError(f"{where}: give a row field name, e.g. answer")
    match = _PLACEHOLDER.fullmatch(value.strip())
    return match.group(1) if match else value.strip()


def _row_value(row: Mapping[str, Any], field_name: str) -> Any:
    return row.get(field_name)


def _render(template: str, row: Mapping[str, Any], where: str) -> str:
    """doc_to_text of a row: a bare field name, or a text with {{field}} placeholders."""
    if not _PLACEHOLDER.search(template):
        value = _row_value(row, template.strip())
        if not isinstance(value, (str, int, float)) or str(value) == "":
            raise YamlBenchmarkError(f"{where}: no text in field '{template.strip()}'; fields: {sorted(row)}")
        return str(value)

    def fill(match: re.Match) -> str:
        value = _row_value(row, match.group(1))
        if value is None:
            raise YamlBenchmarkError(f"{where}: no field '{match.group(1)}'; fields: {sorted(row)}")
        return str(value)

    return _PLACEHOLDER.sub(fill, template)


def _choice_gold(target: Any, options: list[str], where: str) -> str:
    if isinstance(target, bool):
        raise YamlBenchmarkError(f"{where}: the gold answer is a boolean")
    if isinstance(target, int) and 0 <= target < len(options):
        return LETTERS[target]
    text = str(target).strip()
    letters = LETTERS[: len(options)]
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    if text in options:
        return LETTERS[options.index(text)]
    raise YamlBenchmarkError(f"{where}: gold answer {target!r} is neither an option letter ({', '.join(letters)}), "
                             f"a 0-based index nor one of the options")


def _yaml_problem(row: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> Problem:
    question = _render(spec["doc_to_text"], row, f"{where}: doc_to_text")
    target_field = spec["doc_to_target"]
    target = _row_value(row, target_field)
    if target is None or str(target).strip() == "":
        raise YamlBenchmarkError(f"{where}: doc_to_target: no gold answer in field '{target_field}'; "
                                 f"fields: {sorted(row)}")
    solution = _row_value(row, spec["doc_to_solution"]) if spec.get("doc_to_solution") else None
    if isinstance(solution, list):
        solution = solution[0] if solution else None
    if not spec.get("doc_to_choice"):
        return Problem(question, str(target), None if solution is None else str(solution))
    raw = _row_value(row, spec["doc_to_choice"])
    if isinstance(raw, Mapping):
        raw = [raw[k] for k in sorted(raw)]
    if not isinstance(raw, list) or not 2 <= len(raw) <= len(LETTERS):
        raise YamlBenchmarkError(f"{where}: doc_to_choice: field '{spec['doc_to_choice']}' must hold 2 to "
                                 f"{len(LETTERS)} options (a list, or a mapping letter -> option)")
    options = [str(o) for o in raw]
    gold = _choice_gold(target, options, f"{where}: doc_to_target")
    choices = Choices(stem=question, options=tuple(options), gold=gold)
    return Problem(choice_question(question, options), gold, choices=choices)


def _read_yaml_spec(path: Path) -> dict[str, Any]:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise YamlBenchmarkError(f"{path}: cannot read it ({error})") from None
    except yaml.YAMLError as error:
        raise YamlBenchmarkError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise YamlBenchmarkError(f"{path}: expected a mapping of {', '.join(YAML_FIELDS)}")
    for key in spec:
        if key not in YAML_FIELDS:
            raise YamlBenchmarkError(f"{path}: {key}: unknown field{did_you_mean(key, YAML_FIELDS)}; "
                                     f"known: {', '.join(YAML_FIELDS)}")
    for key in ("task", "data_file", "doc_to_text", "doc_to_target"):
        if key not in spec or spec[key] in (None, ""):
            raise YamlBenchmarkError(f"{path}: {key}: required ({YAML_FIELDS[key]})")
    name = spec["task"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise YamlBenchmarkError(f"{path}: task: {name!r} is not a name (letters, digits, _ . -)")
    if name.startswith("embedded_"):
        raise YamlBenchmarkError(f"{path}: task: names starting with 'embedded_' are the embedded benchmarks'")
    version = spec.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise YamlBenchmarkError(f"{path}: version: an integer >= 0, got {version!r}")
    for key in ("display", "description", "sha256", "data_file"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise YamlBenchmarkError(f"{path}: {key}: expected text, got {spec[key]!r}")
    if not isinstance(spec["doc_to_text"], str) or not spec["doc_to_text"].strip():
        raise YamlBenchmarkError(f"{path}: doc_to_text: {YAML_FIELDS['doc_to_text']}")
    fields = {"task": name, "version": version, "doc_to_text": spec["doc_to_text"],
              "doc_to_target": _field_name(spec["doc_to_target"], f"{path}: doc_to_target")}
    for key in ("doc_to_choice", "doc_to_solution"):
        if spec.get(key) is not None:
            fields[key] = _field_name(spec[key], f"{path}: {key}")
    return {**spec, **fields}


def yaml_benchmark(path: Path) -> Benchmark:
    """The benchmark a YAML file defines, its rows checked now (errors name the file, field and line).

    Its `sha256` (what the eval key holds) covers the data file's bytes and how its rows are read
    (doc_to_*), so editing either re-runs the evaluations of it."""
    path = Path(path).resolve()
    spec = _read_yaml_spec(path)
    data = (path.parent / spec["data_file"]).resolve()
    if not data.is_file():
        raise YamlBenchmarkError(f"{path}: data_file: {data} does not exist")
    file_sha = sha256_file(data)
    if spec.get("sha256") and spec["sha256"].lower() != file_sha:
        raise YamlBenchmarkError(f"{path}: sha256: {data} has sha256 {file_sha}, the YAML expects {spec['sha256']}")
    try:
        rows = read_jsonl_rows(data)
    except ValueError as error:
        raise YamlBenchmarkError(f"{path}: data_file: {error}") from None
    if not rows:
        raise YamlBenchmarkError(f"{path}: data_file: {data} holds no rows")
    reading = {k: spec.get(k) for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "doc_to_solution")}
    for index, row in enumerate(rows):
        _yaml_problem(row, reading, f"{path}: {data.name} line {index + 1}")
    digest = hashlib.sha256(json.dumps({"data_sha256": file_sha, **reading}, sort_keys=True).encode()).hexdigest()

    def load(_: Mapping[str, Any]) -> list[Problem]:
        return [_yaml_problem(row, reading, f"{path}: {data.name} line {i + 1}")
                for i, row in enumerate(read_checked_jsonl(data, file_sha))]

    return Benchmark(name=spec["task"], display=spec.get("display") or spec["task"], version=spec["version"],
                     load_rows=load, sha256=digest, path=data, multiple_choice=bool(spec.get("doc_to_choice")),
                     spec_file=path)


def describe_benchmark(bench: Benchmark) -> str:
    """One line on a benchmark (asft ls benchmarks)."""
    if bench.spec_file is not None:
        import yaml

        text = (yaml.safe_load(bench.spec_file.read_text(encoding="utf-8")) or {}).get("description")
        return f"{text or bench.display} (YAML: {bench.spec_file})"
    if bench.hub is not None:
        subsets = [s for s in bench.hub.subsets if s]
        return f"{bench.display}: hub {bench.hub.repo} ({bench.hub.split}{', ' + str(len(subsets)) + ' subjects' if subsets else ''})"
    if bench.path is not None:
        return f"{bench.display}: data/benchmarks/{bench.path.parent.name}/{bench.path.name}, sha256-checked"
    return f"{bench.display}: embedded test split (generated)"


def load_include_path(folders: list[str | Path], *, _from_env: bool = False) -> list[str]:
    """Register the benchmark of every `*.yaml`/`*.yml` file in the folders; returns their names.

    A file that is loaded again replaces its own benchmark (its content may have changed); a name
    that a built-in benchmark or another file already has is an error naming both. The folders are
    added to INCLUDE_PATH_ENV, so the jobs this process starts see the same benchmarks."""
    names: list[str] = []
    seen: dict[str, Path] = {}
    for folder in folders:
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise YamlBenchmarkError(f"{folder} is not a folder")
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
        if not files:
            raise YamlBenchmarkError(f"{folder} holds no *.yaml benchmark file")
        for file in files:
            bench = yaml_benchmark(file)
            existing = _REGISTRY.get(bench.name)
            if bench.name in seen:
                raise YamlBenchmarkError(f"{file}: task: '{bench.name}' is also defined by {seen[bench.name]}")
            if existing is not None and existing.spec_file is None:
                raise YamlBenchmarkError(f"{file}: task: '{bench.name}' is a built-in benchmark; choose another name")
            if existing is not None and existing.spec_file != bench.spec_file and (
                    _from_env or bench.name not in _FROM_ENV):
                raise YamlBenchmarkError(f"{file}: task: '{bench.name}' is also defined by {existing.spec_file}")
            seen[bench.name] = file
            _REGISTRY[bench.name] = bench
            (_FROM_ENV.add if _from_env else _FROM_ENV.discard)(bench.name)
            names.append(bench.name)
        known = [p for p in os.environ.get(INCLUDE_PATH_ENV, "").split(os.pathsep) if p]
        if str(folder) not in known:
            os.environ[INCLUDE_PATH_ENV] = os.pathsep.join([*known, str(folder)])
        _YAML_LOADED.add(str(folder))
    return names


def _load_env_include_path() -> None:
    """In a job: the YAML benchmarks of the folders the parse named (INCLUDE_PATH_ENV), once."""
    folders = [p for p in os.environ.get(INCLUDE_PATH_ENV, "").split(os.pathsep) if p and p not in _YAML_LOADED]
    if folders:
        _YAML_LOADED.update(folders)
        load_include_path(folders, _from_env=True)
