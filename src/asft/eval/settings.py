"""Typed settings of the two evaluation stages.

`generate` (GenerateSettings): which benchmark, how it is prompted and sampled: the model's
completions (or, for multiple choice, its next-token log-probabilities). The GPU part.
`score` (ScoreSettings): how those samples are judged: a grading policy and its version, or the
multiple-choice letter rule. CPU, seconds; a change here re-runs only scoring and the table.

One frozen model per node (asft.core.settings): the plan builds it from the config and the named
protocol, its `key_payload()` is what the key hashes, and the runner receives it as it is.
No torch import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from asft.core.settings import Runtime, StageSettings


class HubSourceRef(StageSettings):
    """Where a hub benchmark's rows come from (a local copy's bytes are in `EvalContext` instead)."""

    repo: str
    split: str
    subsets: list[str | None]
    revision: str


class BenchmarkRef(StageSettings):
    """A registered benchmark's identity: name, version and the sha256 of its shipped file."""

    name: str
    version: int
    sha256: str | None = None
    hub: HubSourceRef | None = None

    key_omits = {"hub": None}  # file benchmarks have no hub source


class EvalContext(StageSettings):
    """What else decides a benchmark's rows: the embedded split, or a local copy of a hub benchmark."""

    split_seed: int | None = None
    local_file: str | None = None
    local_sha256: str | None = None

    key_omits = {"split_seed": None, "local_file": None, "local_sha256": None}


class ProtocolRef(StageSettings):
    """A named evaluation protocol (asft.eval.protocols) and its version."""

    name: str
    version: int


class GenerateSettings(StageSettings):
    benchmark: BenchmarkRef
    context: EvalContext = Field(default_factory=EvalContext)
    protocol: ProtocolRef | None = None  # None: the eval section's own fields (`custom`)
    backend: Literal["hf", "vllm"] = "hf"
    template: Literal["plain", "alpaca", "chat", "cot", "choice"] = "plain"
    n_samples: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = 1.0  # 1.0 whenever sampling is greedy, so an unused top_p changes no key
    max_new_tokens: int = Field(32, ge=1)
    scoring: Literal["generate", "choice_logprobs"] = "generate"
    stop: list[str] = Field(default_factory=list)
    seed: int = 0
    drift: bool = True
    limit: int | None = None

    key_omits = {"scoring": "generate"}  # absent means generate, so keys made before the option hold


class GenerateRuntime(Runtime):
    batch_size: int = Field(256, ge=1)
    tensor_parallel: int = Field(1, ge=1)


class PolicyRef(StageSettings):
    """A named grading policy (asft.eval.grading) and its version: a new version re-scores, never re-generates."""

    name: str
    version: int


class ExecuteSettings(StageSettings):
    """Method `execute` (code benchmarks): which tests EvalPlus runs on each sample, under which limits."""

    dataset: str  # the EvalPlus dataset (humaneval, mbpp) whose tests run
    suite: Literal["base", "plus"] = "base"  # the original tests, or the original and EvalPlus's extra ones
    prefix_prompt: bool = True  # the program is prompt + completion (base-model form), else the completion
    min_time_limit: float = Field(1.0, gt=0)  # EvalPlus's per-test time limit: max(this, factor x reference time)
    gt_time_limit_factor: float = Field(4.0, gt=0)
    memory_mb: int = Field(4096, ge=256)  # address-space limit of each test process (EvalPlus's default 4 GiB)
    local_file: str | None = None  # a user's copy of the EvalPlus file (eval.benchmark_files), else the shipped one
    local_sha256: str | None = None

    key_omits = {"local_file": None, "local_sha256": None}


class JudgeSettings(StageSettings):
    """Method `judge` (AlpacaEval 2): the judge that compares each output with the reference outputs.

    Everything that can change a verdict: the annotator (its prompt and parser, as the installed
    alpaca-eval ships them, by sha256, and that package's version, whose code parses the verdicts and
    fits the length-controlled win rate), the judge model, and the reference outputs. Where the judge is
    reached (endpoint, key, concurrency, retries) is `JudgeRuntime`, outside the key.
    """

    annotator: str  # the alpaca-eval annotator config (e.g. weighted_alpaca_eval_gpt4_turbo)
    model: str  # the judge model the endpoint serves
    annotator_sha256: str  # the annotator's configs.yaml and prompt template, as installed
    package: str  # "alpaca-eval <version>": its code parses the judge's answers and computes the win rates
    reference: str = "gpt4_1106_preview"  # the generator of the reference outputs
    reference_sha256: str  # the shipped reference file (data/benchmarks/alpaca_eval/)


class JudgeRuntime(Runtime):
    """How the judge is reached: none of it changes a verdict, so none of it is in the key."""

    base_url: str | None = None  # an OpenAI-compatible endpoint; None: the OpenAI API (or the local server)
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable that holds the key (its value is never stored)
    serve: bool = False  # start a local vLLM OpenAI server of the judge model in the score job (GPU)
    serve_tensor_parallel: int = Field(1, ge=1)
    concurrency: int = Field(4, ge=1)  # requests in flight
    max_retries: int = Field(6, ge=0)  # per request, on 429/5xx/timeouts (the OpenAI client's backoff)
    timeout_s: float = Field(120.0, gt=0)  # per request
    cache_dir: str = "results/judge_cache"  # judgements kept across runs, one folder per judge key


class ScoreRuntime(Runtime):
    judge: JudgeRuntime | None = None  # method judge only


class ScoreSettings(StageSettings):
    """How the samples of one generation are judged.

    `grade`: each completion's answer against the gold by `policy`; `choose_letter`: the option letter
    from the recorded next-token log-probabilities (upstream medeval's rule), no grading policy;
    `execute`: code samples run against the benchmark's tests (`execute`); `judge`: outputs compared with
    reference outputs by a judge model (`judge`).
    """

    method: Literal["grade", "choose_letter", "execute", "judge"] = "grade"
    policy: PolicyRef | None = None
    execute: ExecuteSettings | None = None  # method execute: code benchmarks, run by EvalPlus in the sandbox
    judge: JudgeSettings | None = None  # method judge: AlpacaEval 2, a judge model's preferences

    key_omits = {"policy": None, "execute": None, "judge": None}
