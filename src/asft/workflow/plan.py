"""The workflow plan: every stage run of a configuration, with its typed settings and content key.

`build_plan(config)` resolves each stage's settings model (only what changes its result:
asft.train.settings, asft.eval.settings), hashes its key payload with the keys of its inputs
(asft.workflow.keys) and returns the nodes the Snakemake rules are made of. Settings that do not
change a result (chunk size, eval batch size, logging) travel as the node's runtime and stay out of
the key, so changing them re-runs nothing.

At parse time the Snakefile writes each node to a node file (`write_node_files`); a job reads its
own node back (`read_node`) instead of parsing the config and rebuilding the whole plan, and checks
that the settings it read still hash to its key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asft.core.files import sha256_file
from asft.eval.benchmarks import CodeSuite, available_benchmarks, generation_benchmark, get_benchmark
from asft.eval.protocols import get_protocol
from asft.eval.settings import (
    BenchmarkRef,
    EvalContext,
    ExecuteSettings,
    GenerateRuntime,
    GenerateSettings,
    JudgeRuntime,
    JudgeSettings,
    PolicyRef,
    ProtocolRef,
    ScoreRuntime,
    ScoreSettings,
)
from asft.train.data import expected_sha256
from asft.train.settings import (
    DynamicsSettings,
    EmbeddedData,
    EmbeddedModel,
    HubData,
    HubDataset,
    HubModel,
    LocalData,
    LocalModel,
    LoraSettings,
    MergeSettings,
    ProbeSettings,
    TokenizeRuntime,
    TokenizeSettings,
    TrainRuntime,
    TrainSettings,
)
from asft.core.settings import Runtime, StageSettings
from asft.train.rl_settings import RewardSettings, RLRuntime, RLSettings
from asft.workflow.artifacts import Node
from asft.workflow.config import ROOT, Config, TrainSetConfig, dynamics_benchmarks, grading_policies, rl_reward_kind
from asft.workflow.keys import KEY_LENGTH, canonical_json, stage_key
from asft.workflow.stages import get_stage

BASE_LABEL = "base"
#: Where the Snakefile writes the nodes at parse time, relative to the working directory.
NODES_DIR = Path(".snakemake") / "asft" / "nodes"


def _node(stage: str, settings: StageSettings, parents: dict[str, Node], labels: dict[str, Any] | None = None,
          runtime: Runtime | None = None) -> Node:
    refs = {role: f"{parent.stage}/{parent.key}" for role, parent in parents.items()}
    return Node(stage, stage_key(stage, settings.key_payload(), refs), settings, refs, labels or {}, runtime)


def model_settings(cfg: Config) -> StageSettings:
    model = cfg.model
    fixes = {"missing_pad_token": model.missing_pad_token, "special_tokens": dict(model.special_tokens)}
    if model.source == "embedded":
        return EmbeddedModel(embedded=model.embedded, **fixes)
    if model.source == "hub":
        return HubModel(id=model.id, revision=model.revision, local_path=model.local_path, **fixes)
    return LocalModel(path=model.local_path, **fixes)


def data_settings(cfg: Config, train_set: TrainSetConfig) -> StageSettings:
    common = {"size": train_set.size, "subsample_seed": train_set.subsample_seed if train_set.size else None}
    if train_set.source == "embedded":
        return EmbeddedData(task=train_set.task, split_seed=cfg.model.embedded.split_seed, **common)
    fields = {"prompt_field": train_set.prompt_field, "response_field": train_set.response_field,
              "format": train_set.format, "input_field": train_set.input_field,
              "messages_field": train_set.messages_field}
    if train_set.source == "hub_dataset":
        return HubDataset(dataset=train_set.dataset, config=train_set.config, split=train_set.split,
                          revision=train_set.revision, **fields, **common)
    sha256 = train_set.sha256.lower() if train_set.sha256 else None
    if train_set.source == "hub":
        # The paper's files (asft.train.data.PAPER_FILES) are pinned by their published sha256 when the
        # config gives none: the data stage checks it, and the key holds it.
        return HubData(repo=train_set.repo, filename=train_set.filename, revision=train_set.revision,
                       sha256=sha256 or expected_sha256(train_set.repo, train_set.filename),
                       local_path=train_set.path, **fields, **common)
    return LocalData(path=train_set.path, sha256=sha256, filename=train_set.filename, **fields, **common)


def tokenize_settings(cfg: Config) -> TokenizeSettings:
    tok = cfg.tokenize
    return TokenizeSettings(template=tok.template, max_length=tok.max_length, overlong=tok.overlong,
                            prompt_boundary=tok.prompt_boundary)


def train_settings(cfg: Config, mode: str, seed: int) -> TrainSettings:
    train = cfg.train
    return TrainSettings.for_mode(
        mode, kl_weight=cfg.loss.kl_weight, kl_direction=cfg.loss.kl_direction,
        hparams=dict(cfg.loss.hparams.get(mode, {})),
        normalize=cfg.loss.normalize,
        seed=seed,
        method=train.method,
        lora=LoraSettings(**train.lora.model_dump()) if train.method == "lora" else None,
        max_steps=train.max_steps,
        epochs=None if train.max_steps else train.epochs,
        global_batch_size=train.global_batch_size,
        per_device_batch_size=train.per_device_batch_size,
        lr=train.lr,
        lr_scheduler=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        warmup_ratio=train.warmup_ratio,
        weight_decay=train.weight_decay,
        adam_betas=train.adam_betas,
        max_grad_norm=train.max_grad_norm,
        precision="bf16_mixed" if (train.method, train.precision) == ("full", "bf16") else train.precision,
        dynamics=dynamics_settings(cfg),
    )


def dynamics_settings(cfg: Config) -> DynamicsSettings | None:
    """train.eval_every: each benchmark as its eval stage reads it (rows, template, budget, stop strings), scored
    greedily: a multiple-choice one by the chosen letter, another by the config's first grading policy."""
    from asft.eval.grading import policy_version

    if cfg.train.eval_every is None:
        return None
    policy = grading_policies(cfg.eval)[0]
    probes = []
    for bench in dynamics_benchmarks(cfg):
        generation = generate_settings(cfg, bench)
        choice = get_benchmark(bench).multiple_choice
        probes.append(ProbeSettings(
            benchmark=generation.benchmark, context=generation.context,
            template="choice" if choice else generation.template,
            scoring="choice_logprobs" if choice else "generate",
            max_new_tokens=1 if choice else generation.max_new_tokens, stop=[] if choice else list(generation.stop),
            policy=None if choice else PolicyRef(name=policy, version=policy_version(policy)),
        ))
    return DynamicsSettings(every=cfg.train.eval_every, limit=cfg.train.eval_limit, benchmarks=probes)


def repo_path(path: str | None) -> str | None:
    """A relative path of the repository (e.g. config/deepspeed/zero3.json), valid from any working dir."""
    if path is None or Path(path).is_absolute():
        return path
    return str(ROOT / path) if (ROOT / path).exists() else path


def train_runtime(cfg: Config) -> TrainRuntime:
    return TrainRuntime(
        implementation=cfg.loss.implementation,
        chunk_size=cfg.loss.chunk_size,
        save_steps=cfg.train.save_steps,
        logging_steps=cfg.train.logging_steps,
        deepspeed=repo_path(cfg.train.deepspeed),
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        num_processes=cfg.train.num_processes or max(1, cfg.resources.train.gpus),
        report_to=tuple(cfg.train.report_to),
    )


def shared_file(benchmark: str, files: dict[str, str]) -> str | None:
    """A benchmark whose data file `benchmark` shares (HumanEval+ for HumanEval, ...), if files names one."""
    return next((name for name in sorted(files) if name in available_benchmarks()
                 and generation_benchmark(name) == benchmark != name), None)


def rl_settings(cfg: Config, algorithm: str, seed: int) -> RLSettings:
    """One RL run: the algorithm's TRL settings (asft.train.rl_settings.ALGORITHMS), the config's sampling and
    optimisation, the reward (the first grading policy's verdict, or the chosen letter) and the seed."""
    from asft.eval.grading import policy_version

    rl = cfg.rl
    kind = rl_reward_kind(cfg)
    policy = grading_policies(cfg.eval)[0]
    reward = RewardSettings(kind=kind, policy=PolicyRef(name=policy, version=policy_version(policy))
                            if kind == "grade" else None)
    return RLSettings.for_algorithm(
        algorithm, scale_rewards=rl.scale_rewards, num_iterations=rl.num_iterations,
        num_generations=rl.num_generations, max_completion_length=rl.max_completion_length,
        temperature=rl.temperature, top_p=rl.top_p, template=cfg.tokenize.template, lr=rl.lr,
        lr_scheduler=rl.lr_scheduler, warmup_ratio=rl.warmup_ratio, weight_decay=rl.weight_decay,
        max_grad_norm=rl.max_grad_norm, max_steps=rl.max_steps, epochs=None if rl.max_steps else rl.epochs,
        global_batch_size=rl.global_batch_size, per_device_batch_size=rl.per_device_batch_size,
        max_prompts=rl.max_prompts, precision=rl.precision, reward=reward, seed=seed)


def rl_runtime(cfg: Config) -> RLRuntime:
    return RLRuntime(logging_steps=cfg.rl.logging_steps, save_steps=cfg.rl.save_steps,
                     gradient_checkpointing=cfg.rl.gradient_checkpointing, use_vllm=cfg.rl.use_vllm)


def generate_settings(cfg: Config, benchmark: str) -> GenerateSettings:
    ev = cfg.eval
    protocol = get_protocol(ev.protocol)
    fields = protocol.eval_fields() if protocol else {
        "template": ev.template, "n_samples": ev.n_samples, "temperature": ev.temperature, "top_p": ev.top_p,
        "max_new_tokens": ev.max_new_tokens, "scoring": ev.scoring,
    }
    sampled = fields["temperature"] > 0
    context = EvalContext()
    if benchmark.startswith("embedded_"):
        context = EvalContext(split_seed=cfg.model.embedded.split_seed)
    given = benchmark if benchmark in ev.benchmark_files else shared_file(benchmark, ev.benchmark_files)
    if given in ev.benchmark_files:
        local = Path(ev.benchmark_files[given])
        if not local.is_file():
            raise FileNotFoundError(f"eval.benchmark_files.{given}: {local} does not exist")
        context = EvalContext(local_file=str(local), local_sha256=sha256_file(local))
    return GenerateSettings(
        benchmark=BenchmarkRef.model_validate(get_benchmark(benchmark).settings()),
        context=context,
        protocol=ProtocolRef(name=protocol.name, version=protocol.version) if protocol else None,
        backend=ev.backend,
        **{**fields, "top_p": fields["top_p"] if sampled else 1.0},
        stop=[*ev.stop, *code_stop_strings(benchmark, fields["template"])],
        seed=ev.seed,
        drift=ev.drift,
        limit=ev.limit,
    )


def score_settings(generation: GenerateSettings, policy: str, *, benchmark: str | None = None,
                   cfg: Config | None = None) -> ScoreSettings:
    """How a generation of `benchmark` (default: the generation's own) is judged: by `policy`, by the letter
    rule for multiple choice, by running its tests (code benchmarks) or by a judge model (AlpacaEval, which
    reads the judge from `cfg`); only `grade` uses the policy."""
    from asft.eval.grading import policy_version  # the policy table only: no grader is imported

    bench = get_benchmark(benchmark or generation.benchmark.name)
    if bench.judged:
        if cfg is None:
            raise ValueError(f"benchmark '{bench.name}' is judged: its scoring needs the config's eval.judge")
        return ScoreSettings(method="judge", judge=judge_settings(cfg))
    if generation.scoring == "choice_logprobs":
        return ScoreSettings(method="choose_letter")
    if bench.code is not None:
        return ScoreSettings(method="execute", execute=execute_settings(generation, bench.code))
    return ScoreSettings(method="grade", policy=PolicyRef(name=policy, version=policy_version(policy)))


def judge_settings(cfg: Config) -> JudgeSettings:
    """What decides a judge's verdicts (eval.judge): annotator and its files' sha256, judge model, package,
    reference outputs. The endpoint and how it is called are the score runtime (`score_runtime`)."""
    from asft.eval.judge.annotator import annotator_model, annotator_sha256, package_version
    from asft.eval.judge.reference import REFERENCE_GENERATOR, REFERENCE_SHA256

    judge = cfg.eval.judge
    model = judge.serve or judge.model or annotator_model(judge.annotator)
    return JudgeSettings(annotator=judge.annotator, model=model,
                         annotator_sha256=annotator_sha256(judge.annotator), package=package_version(),
                         reference=REFERENCE_GENERATOR, reference_sha256=REFERENCE_SHA256)


def score_runtime(cfg: Config) -> ScoreRuntime:
    judge = cfg.eval.judge
    return ScoreRuntime(judge=JudgeRuntime(
        base_url=judge.base_url, api_key_env=judge.api_key_env, serve=judge.serve is not None,
        serve_tensor_parallel=judge.serve_tensor_parallel, concurrency=judge.concurrency,
        max_retries=judge.max_retries, timeout_s=judge.timeout_s, cache_dir=judge.cache_dir))


def execute_settings(generation: GenerateSettings, code: CodeSuite) -> ExecuteSettings:
    """A code benchmark's tests, run by EvalPlus on its generation's samples (asft.eval.code)."""
    from asft.eval.code.prompts import CODE_TEMPLATES, continues_prompt

    if generation.template not in CODE_TEMPLATES:
        raise ValueError(f"eval.template: '{generation.template}' has no code form; the code benchmarks "
                         f"({generation.benchmark.name}) take {', '.join(CODE_TEMPLATES)}")
    return ExecuteSettings(dataset=code.dataset, suite=code.suite, prefix_prompt=continues_prompt(generation.template),
                           local_file=generation.context.local_file, local_sha256=generation.context.local_sha256)


def code_stop_strings(benchmark: str, template: str) -> list[str]:
    """EvalPlus's stop strings of a code benchmark's generation (none for the others)."""
    code = get_benchmark(benchmark).code
    if code is None:
        return []
    from asft.eval.code.prompts import code_stop

    return code_stop(code.dataset, template)


@dataclass(frozen=True)
class Plan:
    """All nodes of a configuration, by stage and key, plus the rows of the results table."""

    config: Config
    nodes: dict[str, dict[str, Node]] = field(default_factory=dict)
    #: The swept settings (config `sweep`, `sweep_zip`), label names of the nodes; empty without a sweep.
    swept: tuple[str, ...] = ()

    def add(self, node: Node) -> Node:
        """Add a node; one already there (the same content, reached again, e.g. from another sweep point)
        keeps only the swept labels that every point reaching it agrees on."""
        stage = self.nodes.setdefault(node.stage, {})
        old = stage.get(node.key)
        if old is not None and self.swept:
            node = dataclasses.replace(node, labels={
                name: value for name, value in node.labels.items()
                if name not in self.swept or (name in old.labels and old.labels[name] == value)})
        stage[node.key] = node
        return node

    def node(self, stage: str, key: str) -> Node:
        try:
            return self.nodes[stage][key]
        except KeyError:
            raise KeyError(f"no {stage} job with key {key} in this configuration") from None

    def parent(self, node: Node, role: str) -> Node:
        """The node a parent reference ("stage/key") of `node` points to."""
        stage, key = node.parents[role].split("/")
        return self.node(stage, key)

    def keys(self, stage: str) -> list[str]:
        return sorted(self.nodes.get(stage, {}))

    def iter_nodes(self) -> Iterator[Node]:
        for stage in self.nodes.values():
            yield from stage.values()

    def table_key(self) -> str:
        """Key of the results table: which evaluations it aggregates and how. A config whose table
        differs gets a new plan file, so the table is rebuilt even without Snakemake's metadata."""

        payload = {"rows": self.eval_rows(), "table": self.config.table.model_dump(mode="json"),
                   "benchmarks": self.config.eval.benchmarks, "modes": self.config.modes, "name": self.config.name}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]

    def describe(self, stage: str, key: str) -> str:
        """The job in words, for Snakemake's console (`message:`) and the logs: `train asft seed 1 on
        numina_cot_10k`, `generate math_oai with asft seed 1 (numina_cot_10k)`."""
        labels = self.node(stage, key).labels
        swept = ", ".join(f"{name}={labels[name]}" for name in self.swept if name in labels)
        words = self._describe(stage, key, labels)
        return f"{words} ({swept})" if swept else words

    def _describe(self, stage: str, key: str, labels: dict[str, Any]) -> str:
        if stage == "model":
            return f"prepare the base model ({labels.get('model')})"
        if stage in ("data", "tokenize"):
            return f"{'fetch' if stage == 'data' else 'tokenize'} the train set {labels.get('train_set')}"
        run = ("the base model" if labels.get("mode") == BASE_LABEL
               else f"{labels.get('mode')} seed {labels.get('seed')} on {labels.get('train_set')}")
        if stage in ("train", "merge"):
            return f"{'train' if stage == 'train' else 'merge the adapter of'} {run}"
        if stage == "rl":
            node = self.node(stage, key)
            start = self.parent(node, "start").labels.get("mode") if "start" in node.parents else BASE_LABEL
            return f"rl {node.settings.algorithm} from {start} seed {labels.get('seed')} on {labels.get('train_set')}"
        if stage == "generate":
            return f"generate {labels.get('benchmark')} with {run}"
        settings = self.node(stage, key).settings
        how = ("by the chosen letter" if settings.method == "choose_letter"
               else f"by the judge {settings.judge.model}" if settings.method == "judge"
               else f"with {', '.join(labels.get('policies', []))}")
        return f"score {labels.get('benchmark')} of {run} {how}"

    def eval_rows(self) -> list[dict[str, Any]]:
        """One row per (evaluation, grading policy): its labels and score key (what the aggregate reads).
        A multiple-choice score has no policy: its one score node is the row of every policy."""
        rows = []
        for node in sorted(self.nodes.get("score", {}).values(), key=lambda n: n.key):
            for policy in node.labels["policies"]:
                labels = {k: v for k, v in node.labels.items() if k != "policies"}
                rows.append({**labels, "grading": policy, "score_key": node.key})
        order = {policy: i for i, policy in enumerate(grading_policies(self.config.eval))}
        return sorted(rows, key=lambda r: (order.get(r["grading"], len(order)), r["score_key"]))

    def train_rows(self) -> list[dict[str, Any]]:
        """One row per training run: its labels (train set, mode, seed) and train key (the aggregate
        reads its metrics.jsonl for the training curves of all modes)."""
        return [{**node.labels, "train_key": node.key}
                for node in sorted(self.nodes.get("train", {}).values(), key=lambda n: n.key)]


def build_plan(cfg: Config) -> Plan:
    """Every node of a config; with a sweep (asft.workflow.sweeps), of every point, in one plan: nodes of
    the same content are one node, labelled with the swept values its points agree on."""
    from asft.workflow.sweeps import sweep_points, swept_names

    plan = Plan(cfg, swept=tuple(swept_names(cfg)))
    for point in sweep_points(cfg):
        _add_point(plan, point.config, point.values)
    return plan


def _add_point(plan: Plan, cfg: Config, swept: dict[str, Any]) -> None:
    """The nodes of one configuration (a sweep point: `swept` its values, added to every node's labels)."""
    model = plan.add(_node("model", model_settings(cfg), {}, {"model": cfg.model.id or cfg.model.source, **swept}))
    tokenize = tokenize_settings(cfg)
    generate_runtime = GenerateRuntime(batch_size=cfg.eval.batch_size, tensor_parallel=cfg.eval.tensor_parallel)
    # a plus suite scores its base benchmark's generation (the same prompts): one generate node for both
    generated = {benchmark: generation_benchmark(benchmark) for benchmark in cfg.eval.benchmarks}
    generations = {benchmark: generate_settings(cfg, name) for benchmark, name in generated.items()}
    policies = grading_policies(cfg.eval)

    def add_evals(evaluated: Node, labels: dict[str, Any]) -> None:
        for benchmark, settings in generations.items():
            parents = {"model": evaluated}
            if cfg.eval.drift and evaluated is not model:
                parents["base"] = model
            eval_labels = {**labels, "benchmark": benchmark, **swept}
            samples = plan.add(_node("generate", settings, parents, {**eval_labels, "benchmark": generated[benchmark]},
                                     generate_runtime))
            # one score node per distinct scoring (multiple choice: one for every policy), labelled with
            # the policies it stands for
            judged: dict[str, tuple[ScoreSettings, list[str]]] = {}
            for policy in policies:
                scoring = score_settings(settings, policy, benchmark=benchmark, cfg=cfg)
                judged.setdefault(canonical_json(scoring.key_payload()), (scoring, []))[1].append(policy)
            for scoring, names in judged.values():
                runtime = score_runtime(cfg) if scoring.method == "judge" else ScoreRuntime()  # where a judge is reached
                plan.add(_node("score", scoring, {"samples": samples}, {**eval_labels, "policies": names}, runtime))

    if cfg.evaluate_base:
        add_evals(model, {"train_set": "-", "mode": BASE_LABEL, "seed": None})
    for train_set in cfg.train_sets:
        data = plan.add(_node("data", data_settings(cfg, train_set), {}, {"train_set": train_set.name, **swept}))
        tokenized = plan.add(_node("tokenize", tokenize, {"model": model, "data": data},
                                   {"train_set": train_set.name, **swept},
                                   TokenizeRuntime(num_proc=cfg.tokenize.num_proc)))
        starts: dict[tuple[str, int], Node] = {}  # (mode, seed) -> the trained model an rl run starts from
        for mode in cfg.modes:
            for seed in cfg.seeds:
                labels = {"train_set": train_set.name, "mode": mode, "seed": seed, **swept}
                trained = plan.add(_node("train", train_settings(cfg, mode, seed),
                                         {"model": model, "tokenize": tokenized}, labels, train_runtime(cfg)))
                evaluated = trained
                if cfg.train.method == "lora":
                    evaluated = plan.add(_node("merge", MergeSettings(dtype=cfg.merge_dtype),
                                               {"train": trained, "model": model}, labels))
                add_evals(evaluated, labels)
                starts[(mode, seed)] = evaluated
        # RL (docs/rl.md): from the base model, or from a trained mode's run of each seed (its merge for LoRA)
        for algorithm, start in cfg.rl.planned_runs():
            for seed in cfg.seeds:
                labels = {"train_set": train_set.name, "mode": cfg.rl.run_label(algorithm, start), "seed": seed,
                          **swept}
                parents = {"model": model, "data": data}
                if start != BASE_LABEL:
                    parents["start"] = starts[(start, seed)]
                add_evals(plan.add(_node("rl", rl_settings(cfg, algorithm, seed), parents, labels, rl_runtime(cfg))),
                          labels)


# --- node files: the plan as the jobs read it ------------------------------------------------------

def node_file(nodes_dir: Path, stage: str, key: str) -> Path:
    return Path(nodes_dir) / stage / f"{key}.json"


def write_node_files(plan: Plan, nodes_dir: Path = NODES_DIR) -> int:
    """Write each node to its file (temp file + rename, so a job never reads half a file); a file that
    already holds the same node is left alone. Returns how many were written."""
    written = 0
    for node in plan.iter_nodes():
        path = node_file(nodes_dir, node.stage, node.key)
        text = json.dumps(node.to_json(), indent=1, sort_keys=True) + "\n"
        try:
            if path.read_text() == text:
                continue
        except OSError:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written += 1
    return written


def read_node(stage: str, key: str, nodes_dir: Path = NODES_DIR) -> Node:
    """A job's node from its file, its settings validated into the stage's model and checked against
    the key (a node file edited or left by another version of the code stops the job here)."""
    path = node_file(nodes_dir, stage, key)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; the workflow writes it when Snakemake parses the Snakefile "
                                "(run the same snakemake command again)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error}); run the same snakemake command again") from None
    table = get_stage(stage)
    settings = table.parse_settings(data["settings"])
    node = Node(stage, key, settings, data.get("parents", {}), data.get("labels", {}),
                table.parse_runtime(data.get("runtime")))
    actual = stage_key(stage, settings.key_payload(), node.parents)
    if actual != key:
        raise ValueError(f"{path}: its settings hash to {actual}, not {key}; the file was edited or written by "
                         "another version of asft (run the same snakemake command again)")
    return node
