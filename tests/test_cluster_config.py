"""Cluster configuration, checked without a cluster: rules, conda envs, the SLURM profile, how the
config's resources reach the jobs and the sbatch command line, and the DeepSpeed configs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "rules").glob("*.smk"))
ENVS = ROOT / "envs"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"

# vllm==0.33.0 requires torch==2.14.0 and transformers>=5.16.1,<5.21.0 (its package metadata), so the
# eval env cannot take pyproject's torch/transformers pins; every other pin must match pyproject.
VLLM_REQUIRES = {"torch": "==2.14.0", "transformers": ">=5.16.1,<5.21.0"}
BIG_TRAIN = {"gpus": 4, "mem_mb": 200000, "runtime": 1440, "threads": 16}


def _rule_blocks() -> dict[str, str]:
    """Rule name -> its text, for every rule in rules/*.smk."""
    blocks = {}
    for path in RULES:
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            blocks[name] = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]  # up to the next top-level line
    return blocks


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for line in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.]+)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return _pins(lines)


def _env(name: str) -> tuple[dict, dict[str, str]]:
    env = yaml.safe_load((ENVS / name).read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip) == 1 and set(pip[0]) == {"pip"}, name
    return env, _pins(pip[0]["pip"])


def _profile(environ: dict[str, str] | None = None) -> dict:
    """The profile as Snakemake reads it (YTE-rendered, dicts flattened to key=value lists)."""
    from snakemake.profiles import ProfileConfigFileParser

    saved = dict(os.environ)
    try:
        for key in ("ASFT_SLURM_PARTITION", "ASFT_SLURM_ACCOUNT"):
            os.environ.pop(key, None)
        os.environ.update(environ or {})
        with open(PROFILE) as stream:
            return dict(ProfileConfigFileParser().parse(stream))
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- rules and conda envs ------------------------------------------------------------------------


def test_every_rule_has_a_conda_env_file_a_log_and_a_benchmark():
    blocks = _rule_blocks()
    assert {"download_model", "download_data", "tokenize", "train", "merge", "generate", "score", "aggregate"} <= set(blocks)
    for name, body in blocks.items():
        conda = re.search(r"^    conda:\n\s+\"([^\"]+)\"", body, flags=re.M)
        assert conda, f"rule {name}: no conda: env"
        assert (ROOT / "rules" / conda.group(1)).resolve().parent == ENVS, f"rule {name}: env not in envs/"
        assert (ROOT / "rules" / conda.group(1)).is_file(), f"rule {name}: {conda.group(1)} does not exist"
        assert re.search(r"^    log:\n", body, flags=re.M), f"rule {name}: no log:"
        assert re.search(r"^    benchmark:\n", body, flags=re.M), f"rule {name}: no benchmark:"
        assert re.search(r"^    message:\n", body, flags=re.M), f"rule {name}: no message: (the job in words)"


@pytest.mark.parametrize("name", ["train.yaml", "eval.yaml", "light.yaml"])
def test_env_files_pin_exactly_and_agree_with_pyproject(name):
    env, pins = _env(name)
    assert env["channels"] == ["conda-forge", "nodefaults"]
    assert "python=3.11" in env["dependencies"] and "pip" in env["dependencies"]
    project = _pyproject_pins()
    exceptions = {*VLLM_REQUIRES, "vllm"} if name == "eval.yaml" else set()
    for package, version in pins.items():
        if package in exceptions:
            continue
        assert package in project, f"{name}: {package} is not pinned in pyproject.toml"
        assert version == project[package], f"{name}: {package}=={version}, pyproject.toml: {project[package]}"
    # Commented-out optional pins (DeepSpeed in train.yaml) must agree too.
    for package, version in re.findall(r"#\s*-\s*([\w\-]+)==([\w.]+)", (ENVS / name).read_text()):
        assert project.get(package) == version, f"{name}: commented {package}=={version} vs pyproject.toml"


def test_eval_env_satisfies_vllms_own_pins():
    from packaging.specifiers import SpecifierSet

    _, pins = _env("eval.yaml")
    from asft.eval.generation import VLLM_REQUIREMENT

    assert f"vllm=={pins['vllm']}" == VLLM_REQUIREMENT  # vLLM is not a pyproject extra: it needs its own env
    for package, spec in VLLM_REQUIRES.items():
        assert pins[package] in SpecifierSet(spec), f"eval.yaml: {package}=={pins[package]} but vllm needs {spec}"


def test_envs_hold_the_stacks_their_rules_need():
    _, train = _env("train.yaml")
    _, evaluation = _env("eval.yaml")
    _, light = _env("light.yaml")
    assert {"torch", "transformers", "peft", "accelerate", "trl", "datasets"} <= set(train)
    assert {"vllm", "torch", "transformers", "math-verify"} <= set(evaluation)
    assert {"pandas", "matplotlib", "pyyaml"} <= set(light) and "torch" not in light


def test_aggregate_code_imports_nothing_outside_the_light_env():
    code = ("import sys; import asft.workflow.jobs, asft.eval.table, yaml; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_envs_do_not_install_asft_by_relative_path_and_scripts_still_import_it():
    # Snakemake copies an env file to .snakemake/conda/<hash>.yaml before `conda env create`, and conda
    # runs pip from that copy's folder: a `-e ..` line would point into .snakemake/. Instead the
    # script preamble appends the invoking interpreter's sys.path, which holds asft (src/ when
    # installed with `pip install -e .`), after the env's own paths.
    for path in ENVS.glob("*.yaml"):
        for line in yaml.safe_load(path.read_text())["dependencies"][-1]["pip"]:
            assert not line.startswith(("-e", ".", "/")), f"{path.name}: {line}"
    from snakemake.common import get_snakemake_searchpaths

    assert any((Path(p) / "asft" / "__init__.py").is_file() for p in get_snakemake_searchpaths())


# --- the SLURM profile ---------------------------------------------------------------------------


def test_slurm_profile_parses_with_the_expected_settings():
    profile = _profile()
    assert profile["executor"] == "slurm"
    assert int(profile["jobs"]) >= 1 and int(profile["latency-wait"]) >= 5
    assert int(profile["retries"]) >= 1  # a timed-out or preempted training job is resubmitted and resumes
    assert profile["rerun-triggers"] == ["mtime", "input"]  # content keys decide staleness
    assert profile["slurm-requeue"] == "True"
    assert profile["slurm-status-command"] == "squeue"
    defaults = dict(item.split("=", 1) for item in profile["default-resources"])
    assert {"runtime", "mem_mb"} <= set(defaults)
    assert "slurm_partition" not in defaults and "slurm_account" not in defaults  # cluster defaults
    with_env = _profile({"ASFT_SLURM_PARTITION": "gpu", "ASFT_SLURM_ACCOUNT": "proj1"})
    defaults = dict(item.split("=", 1) for item in with_env["default-resources"])
    assert defaults["slurm_partition"] == "gpu" and defaults["slurm_account"] == "proj1"


def test_slurm_profile_keys_are_options_of_snakemake_and_the_plugin():
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    from snakemake.cli import get_argument_parser

    options = {opt for action in get_argument_parser()._actions for opt in action.option_strings}
    for key in _profile():
        assert f"--{key}" in options, f"profiles/slurm: unknown option --{key}"


#: A job's message (rules' `message:`) starts with what it does, in words: the rule it comes from.
_RULE_OF_WORD = {"prepare": "download_model", "fetch": "download_data", "tokenize": "tokenize", "train": "train",
                 "merge": "merge", "generate": "generate", "score": "score"}
_JOB_LINE = re.compile(r"^Job \d+: (\w+) .* \((\d+) threads, (\d+) MB, (\d+) min(?:, (\d+) GPU)?\)$", re.M)


def _dry_run_jobs(tmp_path: Path, *layers: Path) -> dict[str, list[dict]]:
    """Rule -> the jobs of `snakemake -n`, each with the threads and resources Snakemake resolved for it
    (each rule's `message:` names the job in words and shows them)."""
    # --cores 256: a dry run caps threads at --cores (1 by default); a SLURM run has no such cap.
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
               "-n", "--cores", "256", "--configfile", str(TINY), *map(str, layers)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs: dict[str, list[dict]] = {}
    for word, threads, mem_mb, runtime, gpu in _JOB_LINE.findall(out.stdout):
        job = {"threads": int(threads), "mem_mb": mem_mb, "runtime": runtime, **({"gpu": gpu} if gpu else {})}
        jobs.setdefault(_RULE_OF_WORD[word], []).append(job)
    assert "Shell command" not in out.stdout  # script rules: nothing to echo
    return jobs


@pytest.fixture(scope="module")
def big_train_jobs(tmp_path_factory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("dry")
    layer = tmp / "resources.yaml"
    layer.write_text(yaml.safe_dump({"resources": {"train": BIG_TRAIN}}))
    return _dry_run_jobs(tmp, layer)


def test_train_jobs_request_exactly_the_configured_resources(big_train_jobs):
    assert len(big_train_jobs["train"]) == 2
    for job in big_train_jobs["train"]:
        assert job["threads"] == BIG_TRAIN["threads"]
        assert int(job["mem_mb"]) == BIG_TRAIN["mem_mb"]
        assert int(job["runtime"]) == BIG_TRAIN["runtime"]
        assert int(job["gpu"]) == BIG_TRAIN["gpus"]
    # Other stages keep their own (the default config's) resources.
    for job in big_train_jobs["tokenize"] + big_train_jobs["merge"]:
        assert int(job.get("gpu", 0)) == 0 and int(job["mem_mb"]) < BIG_TRAIN["mem_mb"]


class _Resources(dict):
    """The two ways the plugin reads a job's resources: .get(name) and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _sbatch_line(job: dict, settings) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    resources = _Resources({k: int(v) for k, v in job.items() if k in ("mem_mb", "runtime", "gpu")})
    fake = SimpleNamespace(resources=resources, threads=job["threads"], name="train", is_group=lambda: False)
    params = {"run_uuid": "asft_run", "slurm_logfile": "/tmp/%j.log", "comment_str": "rule_train",
              "account": "", "partition": " -p gpu", "workdir": "/tmp"}
    return get_submit_command(fake, params, settings=settings) + set_gres_string(fake)


def test_the_plugin_turns_those_resources_into_sbatch_flags(big_train_jobs):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    profile = _profile()
    settings = SimpleNamespace(requeue=profile["slurm-requeue"] == "True", no_requeue=False, qos=None,
                               reservation=None)
    train = _sbatch_line(big_train_jobs["train"][0], settings)
    for flag in ("-t 1440", "--mem 200000", "--cpus-per-task=16", "--gpus=4", "--requeue", "-p gpu"):
        assert f" {flag}" in train, f"{flag} missing from: {train}"
    tokenize = _sbatch_line(big_train_jobs["tokenize"][0], settings)
    assert "--gpus" not in tokenize and "--gres" not in tokenize and " --ntasks=1" in tokenize


# --- DeepSpeed -----------------------------------------------------------------------------------

# The keys the HF Trainer's DeepSpeed integration fills in for "auto" (transformers.integrations.deepspeed).
HF_AUTO_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "bf16.enabled", "fp16.enabled", "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_param_persistence_threshold",
}


def _auto_keys(config: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        if isinstance(value, dict):
            keys |= _auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            keys.add(prefix + key)
    return keys


@pytest.mark.parametrize("name,stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_configs_leave_batch_precision_and_optimizer_to_the_trainer(name, stage):
    config = json.loads((ROOT / "config" / "deepspeed" / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
            "gradient_clipping", "bf16.enabled"} <= _auto_keys(config) <= HF_AUTO_KEYS
    # No optimizer/scheduler: the Trainer's AdamW and schedule, exactly as without DeepSpeed.
    assert "optimizer" not in config and "scheduler" not in config
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json"])
def test_deepspeed_configs_resolve_in_the_hf_integration(name):
    from importlib.metadata import PackageNotFoundError, version

    try:  # the HF integration checks DeepSpeed's version, never imports it here
        version("deepspeed")
    except PackageNotFoundError:
        pytest.skip("DeepSpeed is a GPU-only extra (pip install -e '.[deepspeed]')")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = HfTrainerDeepSpeedConfig(str(ROOT / "config" / "deepspeed" / name))
    args = TrainingArguments(output_dir="/tmp/asft-ds", per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             report_to=[])
    config.trainer_config_process(args)
    config.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=3584)), 100)
    assert not config.mismatches and "auto" not in json.dumps(config.config)
    assert config.config["train_batch_size"] == 8


def test_local_cluster_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "tests" / "slurm" / "local_cluster.sh")], check=True)
