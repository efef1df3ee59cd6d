"""The workflow plan: every stage run of a configuration, with its content key.

`build_plan(config)` resolves each stage's settings (only what changes its result), hashes them
with the keys of its inputs (asft.workflow.keys) and returns the nodes the Snakemake rules are made of.
Settings that do not change a result (chunk size, eval batch size, logging) travel as `runtime`
and stay out of the key, so changing them re-runs nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asft.workflow.artifacts import Node
from asft.eval.benchmarks import get_benchmark
from asft.workflow.config import ROOT, Config, TrainSetConfig
from asft.train.data import expected_sha256
from asft.workflow.keys import KEY_LENGTH, canonical_json, stage_key
from asft.train.modes import get_mode
from asft.eval.protocols import get_protocol

BASE_LABEL = "base"


def _node(stage: str, settings: dict[str, Any], parents: dict[str, Node], labels=None, runtime=None) -> Node:
    refs = {role: f"{parent.stage}/{parent.key}" for role, parent in parents.items()}
    return Node(stage, stage_key(stage, settings, refs), settings, refs, labels or {}, runtime or {})


def model_settings(cfg: Config) -> dict[str, Any]:
    model = cfg.model
    if model.source == "embedded":
        settings: dict[str, Any] = {"source": "embedded", "embedded": model.embedded.model_dump(mode="json")}
    elif model.source == "hub":
        settings = {"source": "hub", "id": model.id, "revision": model.revision, "local_path": model.local_path}
    else:
        settings = {"source": "local", "path": model.local_path}
    # Tokenizer fixes enter the key only when they differ from the default, so keys made before them hold.
    if model.missing_pad_token != "add":
        settings["missing_pad_token"] = model.missing_pad_token
    if model.special_tokens:
        settings["special_tokens"] = dict(sorted(model.special_tokens.items()))
    return settings


#: The value a setting had in the keys before it was renamed: users' cached runs keep their keys.
_NORMALIZE_KEY_NAMES = {"microbatch_mean": "microbatch_tokens"}


def data_settings(cfg: Config, train_set: TrainSetConfig) -> dict[str, Any]:
    common = {"size": train_set.size, "subsample_seed": train_set.subsample_seed if train_set.size else None}
    if train_set.source == "embedded":
        return {"source": "embedded", "task": train_set.task, "split_seed": cfg.model.embedded.split_seed, **common}
    fields = {"prompt_field": train_set.prompt_field, "response_field": train_set.response_field}
    sha256 = train_set.sha256.lower() if train_set.sha256 else None
    if train_set.source == "hub":
        # The paper's files (asft.train.data.PAPER_FILES) are pinned by their published sha256 when the
        # config gives none: the data stage checks it, and the key holds it.
        sha256 = sha256 or expected_sha256(train_set.repo, train_set.filename)
        return {
            "source": "hub", "repo": train_set.repo, "filename": train_set.filename,
            "revision": train_set.revision, "sha256": sha256, "local_path": train_set.path,
            **fields, **common,
        }
    local = {"source": "local", "path": train_set.path, "sha256": sha256, **fields, **common}
    if train_set.filename:  # the file inside a folder given as path; absent otherwise, so older keys hold
        local["filename"] = train_set.filename
    return local


def train_settings(cfg: Config, mode_name: str, seed: int) -> dict[str, Any]:
    mode = get_mode(mode_name)
    train = cfg.train
    hparams = {**mode.defaults, **cfg.loss.hparams.get(mode_name, {})}
    settings: dict[str, Any] = {
        "mode": mode_name,
        "hparams": hparams,
        # KL settings enter only the runs whose loss has a KL term: changing kl_weight
        # leaves sft and dft untouched.
        "kl_weight": cfg.loss.kl_weight if mode.uses_kl else 0.0,
        "kl_direction": cfg.loss.kl_direction if mode.uses_kl else None,
        "normalize": _NORMALIZE_KEY_NAMES.get(cfg.loss.normalize, cfg.loss.normalize),
        "seed": seed,
        "method": train.method,
        "lora": train.lora.model_dump(mode="json") if train.method == "lora" else None,
        "max_steps": train.max_steps,
        "epochs": None if train.max_steps else train.epochs,
        "global_batch_size": train.global_batch_size,
        "per_device_batch_size": train.per_device_batch_size,
        "lr": train.lr,
        "lr_scheduler": train.lr_scheduler,
        "warmup_steps": train.warmup_steps,
        **({"warmup_ratio": train.warmup_ratio} if train.warmup_ratio is not None else {}),
        "weight_decay": train.weight_decay,
        "adam_betas": list(train.adam_betas),
        "max_grad_norm": train.max_grad_norm,
        # Full fine-tuning in "bf16" stepped bf16 weights before bf16_pure existed; now it keeps fp32
        # master weights, so its key says so and never reuses a run made the old way.
        "precision": "bf16_mixed" if (train.method, train.precision) == ("full", "bf16") else train.precision,
    }
    return settings


def repo_path(path: str | None) -> str | None:
    """A relative path of the repository (e.g. config/deepspeed/zero3.json), valid from any working dir."""
    if path is None or Path(path).is_absolute():
        return path
    return str(ROOT / path) if (ROOT / path).exists() else path


def train_runtime(cfg: Config) -> dict[str, Any]:
    return {
        "implementation": cfg.loss.implementation,
        "chunk_size": cfg.loss.chunk_size,
        "save_steps": cfg.train.save_steps,
        "logging_steps": cfg.train.logging_steps,
        "deepspeed": repo_path(cfg.train.deepspeed),
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "num_processes": cfg.train.num_processes or max(1, cfg.resources.train.gpus),
    }


def eval_settings(cfg: Config, benchmark: str) -> dict[str, Any]:
    ev = cfg.eval
    protocol = get_protocol(ev.protocol)
    fields = protocol.eval_fields() if protocol else {
        "template": ev.template, "n_samples": ev.n_samples, "temperature": ev.temperature, "top_p": ev.top_p,
        "max_new_tokens": ev.max_new_tokens, "scoring": ev.scoring,
    }
    if fields["scoring"] == "generate":  # absent means generate, so keys made before the option hold
        del fields["scoring"]
    sampled = fields["temperature"] > 0
    context: dict[str, Any] = {}
    if benchmark.startswith("embedded_"):
        context["split_seed"] = cfg.model.embedded.split_seed
    if benchmark in ev.benchmark_files:
        from asft.core.files import sha256_file

        local = Path(ev.benchmark_files[benchmark])
        if not local.is_file():
            raise FileNotFoundError(f"eval.benchmark_files.{benchmark}: {local} does not exist")
        context.update(local_file=str(local), local_sha256=sha256_file(local))
    return {
        "benchmark": get_benchmark(benchmark).settings(),
        "context": context,
        "protocol": {"name": protocol.name, "version": protocol.version} if protocol else None,
        "backend": ev.backend,
        **fields,
        "top_p": fields["top_p"] if sampled else 1.0,
        "stop": list(ev.stop),
        "seed": ev.seed,
        "drift": ev.drift,
        "limit": ev.limit,
    }


@dataclass(frozen=True)
class Plan:
    """All nodes of a configuration, by stage and key, plus the rows of the results table."""

    config: Config
    nodes: dict[str, dict[str, Node]] = field(default_factory=dict)

    def add(self, node: Node) -> Node:
        self.nodes.setdefault(node.stage, {})[node.key] = node
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

    def eval_rows(self) -> list[dict[str, Any]]:
        """One row per evaluation: its labels and key (what the aggregate stage reads)."""
        return [
            {**node.labels, "eval_key": node.key}
            for node in sorted(self.nodes.get("eval", {}).values(), key=lambda n: n.key)
        ]


def build_plan(cfg: Config) -> Plan:
    plan = Plan(cfg)
    model = plan.add(_node("model", model_settings(cfg), {}, {"model": cfg.model.id or cfg.model.source}))
    tokenize_settings = {
        "template": cfg.tokenize.template,
        "max_length": cfg.tokenize.max_length,
        "overlong": cfg.tokenize.overlong,
    }
    if cfg.tokenize.prompt_boundary != "exact":  # absent means exact, so keys made before the option hold
        tokenize_settings["prompt_boundary"] = cfg.tokenize.prompt_boundary

    def add_evals(evaluated: Node, labels: dict[str, Any]) -> None:
        for benchmark in cfg.eval.benchmarks:
            parents = {"model": evaluated}
            if cfg.eval.drift and evaluated is not model:
                parents["base"] = model
            plan.add(
                _node(
                    "eval", eval_settings(cfg, benchmark), parents,
                    {**labels, "benchmark": benchmark},
                    {"batch_size": cfg.eval.batch_size, "tensor_parallel": cfg.eval.tensor_parallel},
                )
            )

    if cfg.evaluate_base:
        add_evals(model, {"train_set": "-", "mode": BASE_LABEL, "seed": None})
    for train_set in cfg.train_sets:
        data = plan.add(_node("data", data_settings(cfg, train_set), {}, {"train_set": train_set.name}))
        tokenized = plan.add(
            _node("tokenize", tokenize_settings, {"model": model, "data": data}, {"train_set": train_set.name},
                  {"num_proc": cfg.tokenize.num_proc})
        )
        for mode in cfg.modes:
            for seed in cfg.seeds:
                labels = {"train_set": train_set.name, "mode": mode, "seed": seed}
                trained = plan.add(
                    _node("train", train_settings(cfg, mode, seed), {"model": model, "tokenize": tokenized},
                          labels, train_runtime(cfg))
                )
                evaluated = trained
                if cfg.train.method == "lora":
                    evaluated = plan.add(
                        _node("merge", {"dtype": cfg.merge_dtype}, {"train": trained, "model": model}, labels)
                    )
                add_evals(evaluated, labels)
    return plan
