"""The `rl` stage: its rewards (pure), its settings and config, its plan nodes and keys, the Table 2 preset's
jobs, a short run of the runner whose model the generate stage reads, and RL raising the reward on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asft.eval.settings import PolicyRef
from asft.train.rewards import chosen_letter, gold_answer, gold_letter, grade_reward, letter_reward, reward
from asft.train.rl_settings import ALGORITHMS, RewardSettings, RLRuntime, RLSettings
from asft.workflow.config import ConfigError, layered_raw, load_config, parse_config, table_modes
from asft.workflow.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
STRICT = RewardSettings(kind="grade", policy=PolicyRef(name="strict", version=1))


# --- rewards ---------------------------------------------------------------------------------------

def test_math_reward_is_the_graders_verdict_against_the_answer_of_the_response():
    gold = gold_answer("7+5=12;4+3+1=8;\\boxed{82}", "strict")
    assert gold == "82"
    assert grade_reward("7+5=12;4+3+1=8;\\boxed{82}", gold, "strict") == 1.0
    assert grade_reward("7+5=12;4+3=7;\\boxed{72}", gold, "strict") == 0.0
    assert grade_reward("no answer at all", gold, "strict") == 0.0
    assert reward("grade", "\\boxed{82}", "82", policy="strict") == 1.0


@pytest.mark.parametrize("response, letter", [
    ("B", "B"), ("B. Aspirin", "B"), ("(C) Iron deficiency", "C"), ("D: none of the above", "D"),
    ("The answer is A.", "A"), ("Answer: C", "C"), ("Anemia is the most common finding", None), ("E. other", None),
])
def test_the_gold_letter_is_the_one_the_response_gives(response, letter):
    assert gold_letter(response) == letter


def test_letter_reward_reads_the_completion_as_the_score_stage_reads_a_choice():
    assert chosen_letter(" B") == "B" and chosen_letter("C. because") == "C" and chosen_letter("(D) x") == "D"
    assert letter_reward(" B. Aspirin", "B") == 1.0 and letter_reward(" C", "B") == 0.0
    # no letter as the first word: upstream's text rule, the first letter in letter order found anywhere in
    # the upper-cased text (the A of "probably" counts), else its default 'A'
    assert chosen_letter("it is c") == "C" and chosen_letter("probably b") == "A" and chosen_letter("") == "A"
    assert reward("letter", "A", "A") == 1.0
    with pytest.raises(ValueError, match="unknown reward 'judge'"):
        reward("judge", "A", "A")  # type: ignore[arg-type]


# --- settings and config -----------------------------------------------------------------------------

def rl_settings(algorithm: str = "dapo", **overrides) -> RLSettings:
    fields = {"num_generations": 4, "max_completion_length": 24, "temperature": 1.0, "template": "plain", "lr": 1e-4,
              "max_steps": 2, "global_batch_size": 8, "per_device_batch_size": 8, "max_prompts": 8,
              "reward": STRICT, "seed": 0, **overrides}
    return RLSettings.for_algorithm(algorithm, **fields)


def test_each_algorithm_is_its_trl_settings_in_one_place():
    dapo, grpo = rl_settings(), rl_settings(algorithm="grpo")
    assert (dapo.loss_type, dapo.beta, dapo.epsilon, dapo.epsilon_high, dapo.mask_truncated_completions) == \
        ("dapo", 0.0, 0.2, 0.28, True)
    assert (grpo.loss_type, grpo.beta, grpo.epsilon_high, grpo.mask_truncated_completions) == ("grpo", 0.04, None, False)
    assert set(ALGORITHMS) == {"grpo", "dapo"}
    for spec in ALGORITHMS.values():  # docs/rl.md's table names a source for every value
        assert set(spec.sources) == {"loss_type", "beta", "epsilon", "epsilon_high", "mask_truncated_completions"}


def test_trl_takes_every_setting_under_its_own_name(tmp_path):
    from asft.train.rl import grpo_config

    args = grpo_config(rl_settings(), RLRuntime(), checkpoint_dir=tmp_path, bars=False)
    assert (args.loss_type, args.beta, args.epsilon_high, args.mask_truncated_completions) == ("dapo", 0.0, 0.28, True)
    assert (args.num_generations, args.max_completion_length, args.learning_rate, args.max_steps) == (4, 24, 1e-4, 2)
    assert args.generation_batch_size == 8 and args.gradient_accumulation_steps == 1


def test_batches_that_do_not_split_into_groups_are_errors():
    with pytest.raises(ValueError, match="do not split into groups"):
        rl_settings(global_batch_size=6, per_device_batch_size=6)
    with pytest.raises(ValueError, match="max_steps or epochs"):
        rl_settings(epochs=1.0)


def config_with_rl(**rl) -> dict:
    raw = layered_raw([])
    raw["rl"] = rl
    return raw


@pytest.mark.parametrize("rl, message", [
    ({"algorithms": ["dapo"], "start_from": ["asfft"]}, r"rl.start_from: 'asfft' is not base or a mode .*did you mean 'asft'"),
    ({"algorithms": ["dappo"]}, r"rl.algorithms.0: Input should be 'grpo' or 'dapo'"),
    ({"algorithms": ["dapo"], "start_from": ["base", "sft"], "runs": ["sft+dap"]},
     r"rl.runs: 'sft\+dap' is not a run .*did you mean 'sft\+dapo'"),
    ({"algorithms": ["dapo", "dapo"]}, r"rl.algorithms: an algorithm is listed twice"),
    ({"algorithms": ["dapo"], "global_batch_size": 12}, r"rl.global_batch_size: 12 is not a multiple"),
])
def test_bad_rl_config_names_the_field(rl, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(config_with_rl(**rl))


# --- plan ------------------------------------------------------------------------------------------

def test_no_rl_section_means_no_rl_jobs_and_rl_changes_no_other_key():
    plain = build_plan(load_config())
    assert "rl" not in plain.nodes
    with_rl = build_plan(parse_config(config_with_rl(algorithms=["grpo", "dapo"], start_from=["base", "sft", "asft"],
                                                     max_steps=5)))
    for stage, nodes in plain.nodes.items():
        assert set(nodes) <= set(with_rl.nodes[stage]), stage
    assert len(with_rl.nodes["rl"]) == 2 * 3 * 2  # algorithms x starts x seeds


def test_sft_dapo_and_asft_dapo_start_from_the_sft_and_asft_runs_themselves():
    plan = build_plan(load_config(CONFIG / "paper_table2_rl.yaml"))
    medical = build_plan(load_config(CONFIG / "paper_medical.yaml"))
    train_of = {node.labels["mode"]: node for node in plan.nodes["train"].values()}
    for node in plan.nodes["rl"].values():
        mode = node.labels["mode"]
        if "+" in mode:
            start = mode.split("+")[0]
            assert node.parents["start"] == f"train/{train_of[start].key}"  # full fine-tuning: the train artifact
            assert train_of[start].key in medical.nodes["train"]  # the very runs of Table 1's preset
        else:
            assert "start" not in node.parents and node.settings.algorithm == mode
        assert node.settings.reward.kind == "letter"  # multiple choice: the chosen letter
    words = {plan.describe("rl", key) for key in plan.keys("rl")}
    assert words == {f"rl {a} from {s} seed 42 on train_medmcqa_alpaca_10k"
                     for a, s in [("grpo", "base"), ("dapo", "base"), ("dapo", "sft"), ("dapo", "asft")]}
    evaluated = {node.labels["mode"] for node in plan.nodes["generate"].values()}
    assert {"grpo", "dapo", "sft+dapo", "asft+dapo"} <= evaluated


def test_rl_nodes_read_back_from_their_files_as_the_same_typed_settings(tmp_path):
    from asft.workflow.plan import read_node, write_node_files

    plan = build_plan(load_config(CONFIG / "paper_table2_rl.yaml"))
    write_node_files(plan, tmp_path)
    for node in plan.nodes["rl"].values():
        again = read_node("rl", node.key, tmp_path)
        assert again.settings == node.settings and isinstance(again.settings, RLSettings)
        assert again.runtime == node.runtime and dict(again.parents) == dict(node.parents)


def test_a_lora_run_starts_rl_from_its_merge():
    plan = build_plan(parse_config(config_with_rl(algorithms=["dapo"], start_from=["asft"], max_steps=5)))
    for node in plan.nodes["rl"].values():
        assert node.parents["start"].startswith("merge/")
        assert node.settings.reward == RewardSettings(kind="grade", policy=PolicyRef(name="strict", version=1))


def test_the_table_lists_rl_runs_after_the_modes_in_table_2s_order():
    preset = load_config(Path(__file__).resolve().parents[1] / "config" / "paper_table2_rl.yaml")
    assert table_modes(preset) == ["sft", "dft", "iw-sft", "asft", "grpo", "dapo", "sft+dapo", "asft+dapo"]
    assert table_modes(load_config()) == load_config().modes  # no rl section: the modes alone


def test_paper_table2_preset_dry_runs_offline_to_its_job_counts(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n",
         "--configfile", str(CONFIG / "paper_table2_rl.yaml")],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = result.stdout.split("Job stats:")[-1].split("Reasons:")[0]
    counts = {parts[0]: int(parts[1]) for parts in map(str.split, stats.splitlines())
              if len(parts) == 2 and parts[1].isdigit()}
    # 4 train runs (sft, dft, iw-sft, asft), 4 rl runs (grpo, dapo, sft+dapo, asft+dapo), each with the base
    # evaluated on 3 benchmarks: 9 x 3 generations, each scored once (the chosen letter)
    assert counts == {"download_data": 1, "download_model": 1, "tokenize": 1, "train": 4, "rl": 4, "generate": 27,
                      "score": 27, "aggregate": 1, "publish": 1, "all": 1, "total": 68}


# --- the runner ------------------------------------------------------------------------------------

def embedded_data(tmp_path: Path, task: str) -> Path:
    from asft.train.data import build_dataset
    from asft.train.settings import EmbeddedData

    data = tmp_path / "data"
    data.mkdir()
    build_dataset(EmbeddedData(task=task, split_seed=0), data)
    return data


def test_two_rl_steps_give_a_model_that_generate_reads(tmp_path, tiny_base):
    from asft.core.job import StageJob
    from asft.eval.generate import run_generate_stage
    from asft.eval.settings import BenchmarkRef, EvalContext, GenerateRuntime, GenerateSettings
    from asft.eval.benchmarks import get_benchmark
    from asft.train.rl import run_rl_stage

    data = embedded_data(tmp_path, "mul")
    out = tmp_path / "rl"
    out.mkdir()
    job = StageJob(settings=rl_settings(), runtime=RLRuntime(save_steps=100), parents={"model": tiny_base, "data": data},
                   out=out, resume_dir=tmp_path / "rl.partial", threads=1,
                   labels={"mode": "dapo", "seed": 0, "train_set": "mul"})
    stats = run_rl_stage(job)
    assert stats["steps"] == 2 and stats["prompts"] == 8 and stats["rows_without_gold"] == 0
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "reward" in e] == [1, 2]
    assert all(0.0 <= e["reward"] <= 1.0 for e in entries if "reward" in e)
    assert (out / "curves.png").stat().st_size > 0 and (out / "model" / "config.json").is_file()

    generation = GenerateSettings(benchmark=BenchmarkRef.model_validate(get_benchmark("embedded_mul").settings()),
                                  context=EvalContext(split_seed=0), max_new_tokens=24, limit=4, drift=False)
    samples = tmp_path / "generate"
    samples.mkdir()
    run_generate_stage(StageJob(settings=generation, runtime=GenerateRuntime(batch_size=4), parents={"model": out},
                                out=samples, resume_dir=tmp_path / "g.partial"))
    assert len((samples / "samples.jsonl").read_text().splitlines()) == 4


def test_a_train_set_without_gold_answers_is_a_clear_error(tmp_path):
    from asft.train.rl import build_prompts

    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"instruction": "Which drug?", "response": "Aspirin is the drug"}) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl: no row's response gives an option letter"):
        build_prompts(rows, rl_settings(reward=RewardSettings(kind="letter")))
    rows.write_text(json.dumps({"instruction": "Which drug?\nA. x\nB. y", "response": "B. y"}) + "\n"
                    + json.dumps({"instruction": "Why?", "response": "Because."}) + "\n")
    prompts = build_prompts(rows, rl_settings(reward=RewardSettings(kind="letter"), template="alpaca"))
    assert prompts.golds == ["B"] and prompts.skipped == 1 and prompts.prompts[0].endswith("### Response:")


@pytest.mark.slow
def test_rl_raises_the_reward_of_the_embedded_model(tmp_path):
    """A base pre-trained briefly on addition gets under half of its sampled completions right; 24 GRPO steps
    on 16 of its train prompts, rewarded by the grader, raise the mean reward by far more than the step-to-step
    noise (measured: 0.44 over the first quarter of the steps, 0.81 over the last; about 70 s on 2 cores)."""
    from asft.embedded.pretrain import pretrain
    from asft.embedded.spec import EmbeddedBaseSpec
    from asft.train.rl import rl_run

    base = tmp_path / "base"
    pretrain(EmbeddedBaseSpec(steps=300, batch_size=32, warmup=30, task_mix={"add": 1.0}), base, progress=False,
             num_threads=1)
    data = embedded_data(tmp_path, "add")
    settings = rl_settings("grpo", num_generations=8, max_completion_length=32, lr=3e-4, lr_scheduler="constant",
                           max_steps=24, global_batch_size=32, per_device_batch_size=32, max_prompts=16)
    stats = rl_run(settings, RLRuntime(save_steps=1000), start_dir=base, tokenizer_dir=base,
                   data_file=data / "train.jsonl", out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt",
                   threads=2, progress=False)
    print("rl reward", stats["reward_first"], "->", stats["reward_last"])
    assert stats["reward_last"] > stats["reward_first"] + 0.25, stats
