"""Extending and exporting: user loss modes (`plugins:`), YAML benchmarks (`eval.include_path`),
`asft ls`, and `asft export`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from asft.eval import benchmarks
from asft.train import modes
from asft.workflow.config import DEFAULT_CONFIG, ConfigError, parse_config
from asft.workflow.plan import build_plan

DEFAULT = yaml.safe_load(DEFAULT_CONFIG.read_text())
ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A user's loss modes: light to import (no torch at the top)."""
from asft.train.modes import register_mode


@register_mode("user-focal")
def focal(stats, *, gamma=2.0):
    """Focal CE: the token's CE weighted by (1 - p)^gamma."""
    return (1 - stats.p_target) ** gamma


# torch is needed by this one: it is named, and imported only when the loss first runs
register_mode("user-half", "user_heavy:half", hparams={"scale": 0.5}, uses_kl=True, description="half CE + KL")
'''
HEAVY = '''
import torch


def half(stats, *, scale=0.5):
    return torch.full_like(stats.ce, scale)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin file with a sibling module; the modes it registers are removed afterwards."""
    (tmp_path / "user_modes.py").write_text(PLUGIN)
    (tmp_path / "user_heavy.py").write_text(HEAVY)
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "user_modes.py"
    for name in ("user-focal", "user-half"):
        modes._MODES.pop(name, None)
    modes._REGISTERED_BY.pop("user_modes.py", None)
    modes._RESOLVED.pop("user_heavy:half", None)
    sys.modules.pop("user_heavy", None)


@pytest.fixture
def clean_benchmarks():
    """The registry and INCLUDE_PATH_ENV as they were (a parse sets the variable for its jobs)."""
    import os

    env = os.environ.pop(benchmarks.INCLUDE_PATH_ENV, None)
    before = dict(benchmarks._REGISTRY)
    yield
    benchmarks._REGISTRY.clear()
    benchmarks._REGISTRY.update(before)
    benchmarks._YAML_LOADED.clear()
    benchmarks._FROM_ENV.clear()
    os.environ.pop(benchmarks.INCLUDE_PATH_ENV, None)
    if env is not None:
        os.environ[benchmarks.INCLUDE_PATH_ENV] = env


def config(**changes) -> dict:
    raw = json.loads(json.dumps(DEFAULT))
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return raw


def train_keys(cfg) -> dict[str, str]:
    plan = build_plan(cfg)
    return {f"{n.labels['mode']}/{n.labels['seed']}": n.key for n in plan.nodes["train"].values()}


# --- user loss modes ------------------------------------------------------------------------------------

def test_a_plugin_mode_validates_and_its_code_enters_the_train_key(plugin):
    cfg = parse_config(config(plugins=[str(plugin)], modes=["sft", "user-focal", "user-half"]))
    keys = train_keys(cfg)
    builtin = train_keys(parse_config(config(modes=["sft"])))
    assert keys["sft/0"] == builtin["sft/0"]  # a plugin leaves asft's own modes' keys alone
    node = next(n for n in build_plan(cfg).nodes["train"].values() if n.labels["mode"] == "user-focal")
    source = node.settings.key_payload()["mode_source"]
    assert source["plugin"] == "user_modes.py" and len(source["sha256"]) == 64
    assert "path" not in source  # keys do not depend on the folder
    assert node.settings.hparams == {"gamma": 2.0}
    half = next(n for n in build_plan(cfg).nodes["train"].values() if n.labels["mode"] == "user-half")
    assert half.settings.kl_weight == 0.05 and half.settings.hparams == {"scale": 0.5}

    # editing the user's loss (or the module its lazily named function lives in) re-trains its modes only
    plugin.write_text(PLUGIN.replace("** gamma", "** gamma * 1.0"))
    edited = train_keys(parse_config(config(plugins=[str(plugin)], modes=["sft", "user-focal", "user-half"])))
    assert edited["sft/0"] == keys["sft/0"] and edited["user-focal/0"] != keys["user-focal/0"]
    (plugin.parent / "user_heavy.py").write_text(HEAVY + "\n# edited\n")
    again = train_keys(parse_config(config(plugins=[str(plugin)], modes=["sft", "user-focal", "user-half"])))
    assert again["user-half/0"] != edited["user-half/0"]


def test_a_plugin_mode_without_its_plugin_and_a_bad_plugin_name_the_field(plugin, tmp_path):
    with pytest.raises(ConfigError, match=r"modes: unknown mode 'user-focel'"):
        parse_config(config(plugins=[str(plugin)], modes=["user-focel"]))
    with pytest.raises(ConfigError, match=r"plugins: plugin 'no_such_module_xyz': cannot import it"):
        parse_config(config(plugins=["no_such_module_xyz"]))
    with pytest.raises(ConfigError, match=r"plugins: plugin file 'missing.py' does not exist"):
        parse_config(config(plugins=["missing.py"]))
    broken = tmp_path / "broken_modes.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"plugins: '.*broken_modes.py' raised RuntimeError: boom"):
        parse_config(config(plugins=[str(broken)]))
    with pytest.raises(ConfigError, match=r"loss.hparams.user-focal.alpha: unknown hyper-parameter"):
        parse_config(config(plugins=[str(plugin)], modes=["user-focal"], loss={"hparams": {"user-focal": {"alpha": 1}}}))


def test_a_module_plugin_is_imported_by_name_from_the_working_folder(plugin):
    (plugin.parent / "my_project").mkdir()
    (plugin.parent / "my_project" / "__init__.py").write_text("")
    (plugin.parent / "my_project" / "my_modes.py").write_text(
        PLUGIN.replace("user-focal", "user-pkg-focal").replace('register_mode("user-half"', '# '))
    try:
        cfg = parse_config(config(plugins=["my_project.my_modes"], modes=["user-pkg-focal"]))
        node = next(iter(build_plan(cfg).nodes["train"].values()))
        assert node.settings.mode_source.plugin == "my_project.my_modes"
        assert node.settings.mode_source.path == str(plugin.parent)
    finally:
        modes._MODES.pop("user-pkg-focal", None)
        sys.modules.pop("my_project.my_modes", None)
        sys.modules.pop("my_project", None)


def test_parsing_a_config_with_a_plugin_imports_no_torch(plugin):
    """The lazily named function's module imports torch: only the train job imports it."""
    probe = textwrap.dedent(f"""
        import sys, json
        from asft.workflow.config import parse_config
        from asft.workflow.plan import build_plan
        raw = json.loads({json.dumps(json.dumps(config(plugins=[str(plugin)], modes=["user-focal", "user-half"])))})
        build_plan(parse_config(raw))
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=plugin.parent)
    assert out.stdout.strip() == "False", out.stderr


def test_the_job_loads_the_plugin_from_its_settings_and_refuses_changed_code(plugin, tmp_path):
    """What a train job (or a torchrun worker) does: validate the settings read back from its node file."""
    cfg = parse_config(config(plugins=[str(plugin)], modes=["user-focal", "user-half"]))
    node = next(n for n in build_plan(cfg).nodes["train"].values() if n.labels["mode"] == "user-half")
    dumped = json.dumps(node.settings.model_dump(mode="json"))
    probe = textwrap.dedent(f"""
        import json, sys
        from asft.train.settings import TrainSettings
        from asft.train.modes import get_mode
        settings = TrainSettings.model_validate(json.loads({dumped!r}))
        mode = get_mode(settings.mode)
        print(mode.uses_kl, mode.weight_fn.__name__, "torch" in sys.modules)
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=elsewhere)
    assert out.stdout.split() == ["True", "half", "True"], out.stderr
    plugin.write_text(PLUGIN + "\n# edited after the plan was made\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=elsewhere)
    assert out.returncode != 0 and "changed since the plan was made" in out.stderr


def test_a_lazy_mode_checks_its_hyper_parameters_when_resolved(plugin):
    modes.register_mode("user-lazy-bad", "user_heavy:half", hparams={"other": 1.0})
    try:
        with pytest.raises(TypeError, match="takes hyper-parameters"):
            modes.get_mode("user-lazy-bad").weight_fn
    finally:
        modes._MODES.pop("user-lazy-bad", None)
    with pytest.raises(ValueError, match="already registered"):
        modes.register_mode("asft", "user_heavy:half")


def test_a_plugin_mode_trains_through_the_real_trainer(plugin, tmp_path, tiny_base, tiny_dataset):
    from asft.train.trainer import train_run
    from tests.conftest import RUNTIME, train_settings

    parse_config(config(plugins=[str(plugin)], modes=["user-focal", "user-half"]))
    for mode in ("user-focal", "user-half"):
        spec = modes.get_mode(mode)
        settings = train_settings(mode, max_steps=2, kl_weight=0.05 if spec.uses_kl else 0.0,
                                  kl_direction="ref_policy" if spec.uses_kl else None,
                                  mode_source=vars(spec.source))
        out = tmp_path / mode / "out"
        out.mkdir(parents=True)
        stats = train_run(settings, RUNTIME, model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out,
                          checkpoint_dir=tmp_path / mode / "ckpt", progress=False)
        assert stats["steps"] == 2
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        logged = [e for e in logged if "loss" in e]
        if mode == "user-focal":
            assert logged[0]["weighted_ce"] < logged[0]["ce"]
        else:  # weights 0.5: weighted CE is half the CE
            assert logged[0]["weighted_ce"] == pytest.approx(0.5 * logged[0]["ce"], rel=1e-5)


# --- YAML benchmarks ----------------------------------------------------------------------------------

TASK = """\
task: user_sums
display: Sums
version: 2
data_file: sums.jsonl
doc_to_text: "{{q}}"
doc_to_target: a
description: two sums a user wrote
"""


def yaml_task(folder: Path, text: str = TASK, rows: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sums.yaml").write_text(text)
    rows = rows if rows is not None else [{"q": "What is 1+1?", "a": "2"}, {"q": "What is 2+3?", "a": 5}]
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def eval_config(folder: Path, names=("user_sums",)) -> dict:
    return config(eval={"include_path": [str(folder)], "benchmarks": [*names, "embedded_mul"]},
                  table={"target": ["embedded_mul"], "retention": list(names)})


def generate_keys(cfg, benchmark="user_sums") -> list[str]:
    return sorted(n.key for n in build_plan(cfg).nodes["generate"].values() if n.labels["benchmark"] == benchmark)


def test_a_yaml_benchmark_runs_through_the_plan_and_its_file_enters_the_key(tmp_path, clean_benchmarks):
    folder = yaml_task(tmp_path / "tasks")
    cfg = parse_config(eval_config(folder))
    node = next(n for n in build_plan(cfg).nodes["generate"].values() if n.labels["benchmark"] == "user_sums")
    assert node.settings.benchmark.name == "user_sums" and node.settings.benchmark.version == 2
    problems = benchmarks.load_problems("user_sums")
    assert [(p.question, p.gold) for p in problems] == [("What is 1+1?", "2"), ("What is 2+3?", "5")]
    assert benchmarks.get_benchmark("user_sums").display == "Sums"
    keys = generate_keys(cfg)

    yaml_task(folder, rows=[{"q": "What is 1+1?", "a": "2"}])  # the data changes: new evaluations
    changed = generate_keys(parse_config(eval_config(folder)))
    assert changed != keys
    yaml_task(folder, TASK.replace("version: 2", "version: 3"), rows=[{"q": "What is 1+1?", "a": "2"}])
    assert generate_keys(parse_config(eval_config(folder))) != changed


def test_a_yaml_benchmark_is_scored_like_the_built_ins(tmp_path, clean_benchmarks):
    from asft.eval.score import run_score
    from asft.eval.settings import PolicyRef, ScoreSettings

    folder = yaml_task(tmp_path / "tasks")
    parse_config(eval_config(folder))
    samples = tmp_path / "samples"
    samples.mkdir()
    completions = ["1+1 is \\boxed{2}", "The answer is \\boxed{6}"]
    (samples / "generation.json").write_text("{}")
    (samples / "samples.jsonl").write_text("".join(
        json.dumps({"problem": i, "sample": 0, "prompt": p.question, "completion": c, "gold": p.gold}) + "\n"
        for i, (p, c) in enumerate(zip(benchmarks.load_problems("user_sums"), completions))))
    out = tmp_path / "scored"
    out.mkdir()
    scores = run_score(ScoreSettings(method="grade", policy=PolicyRef(name="strict", version=1)),
                       samples_dir=samples, out_dir=out)
    assert scores["accuracy"] == 50.0


def test_a_job_registers_the_yaml_benchmarks_the_parse_named(tmp_path, clean_benchmarks):
    import os

    folder = yaml_task(tmp_path / "tasks")
    parse_config(eval_config(folder))
    env = {**os.environ, benchmarks.INCLUDE_PATH_ENV: os.environ[benchmarks.INCLUDE_PATH_ENV]}
    probe = "from asft.eval.benchmarks import load_problems; print(len(load_problems('user_sums')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "2", out.stderr


def test_a_multiple_choice_yaml_benchmark(tmp_path, clean_benchmarks):
    text = TASK.replace("doc_to_target: a", "doc_to_target: a\ndoc_to_choice: options")
    folder = yaml_task(tmp_path / "tasks", text, rows=[
        {"q": "1+1?", "options": ["1", "2", "3"], "a": "B"},
        {"q": "2+2?", "options": ["4", "5"], "a": 0},
        {"q": "3+3?", "options": ["5", "6"], "a": "6"},
    ])
    parse_config(eval_config(folder))
    problems = benchmarks.load_problems("user_sums")
    assert benchmarks.get_benchmark("user_sums").multiple_choice
    assert [p.gold for p in problems] == ["B", "A", "B"]
    assert problems[0].choices.options == ("1", "2", "3") and problems[0].question == "1+1?\nA. 1\nB. 2\nC. 3"


@pytest.mark.parametrize("text, rows, message", [
    (TASK.replace("doc_to_target: a\n", ""), None, r"sums.yaml: doc_to_target: required"),
    (TASK + "doc_to_targets: a\n", None, r"sums.yaml: doc_to_targets: unknown field \(did you mean 'doc_to_target'\?\)"),
    (TASK.replace("task: user_sums", "task: math_oai"), None, r"sums.yaml: task: 'math_oai' is a built-in benchmark"),
    (TASK.replace("version: 2", "version: two"), None, r"sums.yaml: version: an integer >= 0"),
    (TASK.replace("sums.jsonl", "nope.jsonl"), None, r"sums.yaml: data_file: .*nope.jsonl does not exist"),
    (TASK, [{"q": "1?", "a": "1"}, {"q": "2?"}], r"sums.yaml: sums.jsonl line 2: doc_to_target: no gold answer in field 'a'"),
    (TASK + "sha256: " + "a" * 64 + "\n", None, r"sums.yaml: sha256: .* has sha256"),
    ("- a list\n", None, r"sums.yaml: expected a mapping"),
])
def test_yaml_benchmark_errors_name_the_file_and_the_field(tmp_path, clean_benchmarks, text, rows, message):
    folder = yaml_task(tmp_path / "tasks", text, rows)
    with pytest.raises(ConfigError) as error:
        parse_config(eval_config(folder))
    first = str(error.value).splitlines()[1]
    assert first.startswith("  eval.include_path: ")
    assert re.search(message, first), first


def test_unknown_benchmarks_get_did_you_mean_for_what_users_type():
    for typed in ("math500", "MATH-500", "Math_500", "aime2024"):
        with pytest.raises(ConfigError) as error:
            parse_config(config(eval={"benchmarks": [typed]}, table={"target": [], "retention": []}))
        assert "(did you mean '" in str(error.value), typed
    assert benchmarks.benchmark_hint("math500") == " (did you mean 'math_oai' (MATH-500)?)"
    assert benchmarks.benchmark_hint("gsm8") == " (did you mean 'gsm8k'?)"


# --- asft ls ----------------------------------------------------------------------------------------------

def test_asft_ls_lists_every_kind_with_a_line_each(capsys, plugin, tmp_path, clean_benchmarks):
    from asft.ops.cli import main

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for title in ("loss modes", "benchmarks", "presets", "evaluation protocols", "grading policies"):
        assert f"{title} (" in out
    assert "  asft " in out and "math_oai" in out and "MATH-500" in out
    assert "config/paper_math.yaml" in out and "ASFT Table 1, math half" in out and "schema.yaml" not in out
    assert "qwen_harness" in out and "fork_cot_greedy" in out
    # a config's plugins and YAML benchmarks are listed with it
    folder = yaml_task(tmp_path / "tasks")
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump({"plugins": [str(plugin)], "modes": ["user-focal"],
                                   "eval": {"include_path": [str(folder)]}}))
    assert main(["ls", "modes", "--configfile", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "user-focal" in out and "Focal CE" in out and "plugin user_modes.py" in out and "gamma=2.0" in out
    assert main(["ls", "benchmarks"]) == 0
    assert re.search(r"user_sums +two sums a user wrote \(YAML: ", capsys.readouterr().out)


def test_a_config_s_own_yaml_folder_replaces_benchmarks_inherited_from_the_environment(tmp_path, clean_benchmarks):
    """A job inherits INCLUDE_PATH_ENV; a process that then parses another config with the same task name in
    another folder uses its own folder's file."""
    import os

    os.environ[benchmarks.INCLUDE_PATH_ENV] = str(yaml_task(tmp_path / "old"))
    assert len(benchmarks.load_problems("user_sums")) == 2
    parse_config(eval_config(yaml_task(tmp_path / "new", rows=[{"q": "1+1?", "a": "2"}])))
    assert len(benchmarks.load_problems("user_sums")) == 1


# --- asft export ------------------------------------------------------------------------------------------

def write_artifact(results: Path, node, files: dict[str, bytes | str]) -> Path:
    from asft.workflow.artifacts import writing_artifact

    final = results / node.stage / node.key
    with writing_artifact(final, node) as tmp:
        for name, content in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return final


def hub_results(tmp_path) -> tuple[Path, object]:
    """A results folder of one LoRA run of a hub model: model, train, merge, generate and score artifacts."""
    raw = config(model={"source": "hub", "id": "Qwen/Qwen2.5-0.5B", "revision": "abc123"}, modes=["asft"],
                 seeds=[1], evaluate_base=False)
    plan = build_plan(parse_config(raw))
    results = tmp_path / "results"
    model = next(iter(plan.nodes["model"].values()))
    write_artifact(results, model, {"config.json": "{}"})
    train = next(iter(plan.nodes["train"].values()))
    adapter = {"base_model_name_or_path": str(results / "model" / model.key), "peft_type": "LORA", "r": 8}
    write_artifact(results, train, {"model/adapter_config.json": json.dumps(adapter),
                                    "model/adapter_model.safetensors": b"weights", "metrics.jsonl": ""})
    merge = next(iter(plan.nodes["merge"].values()))
    write_artifact(results, merge, {"config.json": "{}", "model.safetensors": b"merged"})
    for node in plan.nodes["generate"].values():
        write_artifact(results, node, {"generation.json": "{}"})
    for i, node in enumerate(sorted(plan.nodes["score"].values(), key=lambda n: n.labels["benchmark"])):
        scores = {"accuracy": 50.0 + i, "pass@1": 50.0 + i, "grading": {"method": "grade", "policy": "strict"}}
        write_artifact(results, node, {"scores.json": json.dumps(scores)})
    return results, plan


def test_export_of_a_lora_run_points_its_adapter_at_the_hub_id_and_has_a_model_card(tmp_path):
    from asft.ops.export import export_artifact

    results, plan = hub_results(tmp_path)
    train = next(iter(plan.nodes["train"].values()))
    folder, record = export_artifact(results / "train" / train.key, results=results, to=tmp_path / "out")
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "Qwen/Qwen2.5-0.5B" and adapter["revision"] == "abc123"
    assert (folder / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (folder / "manifest.json").exists() and not (folder / "metrics.jsonl").exists()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "base_model: Qwen/Qwen2.5-0.5B" in card
    assert "| mode | asft |" in card and "| seed | 1 |" in card and "kl_weight: 0.05" in card
    # the scores of the merged model's evaluations (the run was evaluated through its merge)
    assert {row["benchmark"] for row in record["scores"]} == {"embedded_mul", "embedded_add", "embedded_sub"}
    assert "| embedded_add | strict | custom | 50.00 | pass@1 50.00 |" in card
    assert record["name"] == "Qwen2.5-0.5B-asft-mul-seed1"
    assert json.loads((folder / "asft_export.json").read_text())["train_key"] == train.key

    # by key, the merge artifact, under a readable name; a non-empty target needs --force
    merge = next(iter(plan.nodes["merge"].values()))
    folder, record = export_artifact(merge.key, results=results, to=tmp_path / "merged", name="Qwen ASFT mul")
    assert (folder / "model.safetensors").read_bytes() == b"merged" and record["format"] == "merged_weights"
    assert "# Qwen ASFT mul" in (folder / "README.md").read_text() and len(record["scores"]) == 3
    with pytest.raises(ValueError, match="not empty"):
        export_artifact(merge.key, results=results, to=tmp_path / "merged")
    export_artifact(merge.key, results=results, to=tmp_path / "merged", force=True)


def test_export_refuses_what_is_not_a_sound_train_or_merge_artifact(tmp_path):
    from asft.ops.export import export_artifact

    results, plan = hub_results(tmp_path)
    score = next(iter(plan.nodes["score"].values()))
    with pytest.raises(ValueError, match="export a train or merge artifact"):
        export_artifact(results / "score" / score.key, results=results, to=tmp_path / "x")
    with pytest.raises(ValueError, match="no train or merge artifact with key"):
        export_artifact("0" * 16, results=results, to=tmp_path / "x")
    train = next(iter(plan.nodes["train"].values()))
    (results / "train" / train.key / "model" / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(ValueError, match="is not sound"):
        export_artifact(train.key, results=results, to=tmp_path / "x")


def test_export_push_uploads_the_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from asft.ops.cli import main

    calls = []

    class FakeApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Info", (), {"commit_url": "https://hub/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    results, plan = hub_results(tmp_path)
    train = next(iter(plan.nodes["train"].values()))
    out = tmp_path / "exported"
    assert main(["export", train.key, "--results", str(results), "--to", str(out), "--push", "me/qwen-asft",
                 "--private"]) == 0
    assert calls == [
        ("create_repo", {"repo_id": "me/qwen-asft", "repo_type": "model", "private": True, "exist_ok": True}),
        ("upload_folder", {"folder_path": str(out), "repo_id": "me/qwen-asft", "repo_type": "model",
                           "commit_message": "asft export: Qwen2.5-0.5B-asft-mul-seed1"}),
    ]
    assert "pushed to me/qwen-asft: https://hub/commit/1" in capsys.readouterr().out
    assert 'from_pretrained("me/qwen-asft")' in (out / "README.md").read_text()


def test_an_exported_embedded_adapter_loads_with_peft(tmp_path, tiny_base, tiny_dataset):
    import shutil

    from peft import AutoPeftModelForCausalLM

    from asft.ops.export import export_artifact
    from asft.train.trainer import train_run
    from tests.conftest import RUNTIME, train_settings

    plan = build_plan(parse_config(config(modes=["sft"], seeds=[0], evaluate_base=False)))
    results = tmp_path / "results"
    model = next(iter(plan.nodes["model"].values()))
    write_artifact(results, model, {p.name: p.read_bytes() for p in tiny_base.iterdir() if p.is_file()})
    out = tmp_path / "run"
    out.mkdir()
    train_run(train_settings("sft", max_steps=1), RUNTIME, model_dir=tiny_base, dataset_dir=tiny_dataset,
              out_dir=out, checkpoint_dir=tmp_path / "ckpt", progress=False)
    train = next(iter(plan.nodes["train"].values()))
    files = {f"model/{p.name}": p.read_bytes() for p in (out / "model").iterdir() if p.is_file()}
    write_artifact(results, train, files)
    shutil.rmtree(out)
    folder, record = export_artifact(train.key, results=results, to=tmp_path / "exported")
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((results / "model" / model.key).resolve())
    assert record["base"]["source"] == "embedded" and "embedded tiny Qwen2 model" in (folder / "README.md").read_text()
    loaded = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())


def test_a_lora_adapter_names_its_hub_base_by_id(tmp_path):
    """peft writes the folder the base was loaded from (results/model/<key>); the train stage names a hub
    base by its id and revision instead, and leaves embedded/local bases alone."""
    from asft.train.launch import name_the_base

    weights, model = tmp_path / "run" / "model", tmp_path / "model"
    weights.mkdir(parents=True)
    model.mkdir()
    adapter = {"base_model_name_or_path": str(model), "r": 8, "peft_type": "LORA"}
    for settings, expected in (({"source": "hub", "id": "Qwen/Qwen2.5-7B", "revision": "main"}, ("Qwen/Qwen2.5-7B", None)),
                               ({"source": "hub", "id": "meta-llama/Llama-2-7b-hf", "revision": "abc123"},
                                ("meta-llama/Llama-2-7b-hf", "abc123")),
                               ({"source": "embedded"}, (str(model), None))):
        (weights / "adapter_config.json").write_text(json.dumps(adapter))
        (model / "manifest.json").write_text(json.dumps({"settings": settings}))
        name_the_base(weights, model)
        written = json.loads((weights / "adapter_config.json").read_text())
        assert (written["base_model_name_or_path"], written.get("revision")) == expected and written["r"] == 8
    name_the_base(tmp_path / "full-weights", model)  # no adapter (full fine-tuning): nothing to do
