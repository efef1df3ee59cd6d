"""Real data and models: local folders, the hub cache offline, checks, templates, masks, presets.

Nothing here touches the network: HF_HUB_OFFLINE=1 (conftest) and every "hub" test reads a fake
Hugging Face cache written under tmp_path in the layout huggingface_hub itself writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from asft.train.settings import LocalData, TokenizeSettings
from asft.workflow.artifacts import MANIFEST, Node
from asft.workflow.config import deep_merge, load_config, parse_config
from asft.train.data import (
    IGNORE_INDEX,
    PAPER_FILES,
    build_dataset,
    check_sha256,
    encode_batch,
    load_train_rows,
    tokenize_dataset,
    write_jsonl,
)
from asft.workflow.plan import build_plan
from asft.workflow.jobs import run_stage
from asft.train.templates import training_prompt

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- fixtures: a tiny model in the hub's on-disk format, a fake hub cache ----------------------

@pytest.fixture(scope="module")
def tokenizer():
    from asft.embedded.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Qwen2ForCausalLM + the embedded tokenizer, as save_pretrained writes them."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def toy_rows(n: int, prompt: str = "question", response: str = "answer") -> list[dict]:
    return [{prompt: f"What is {i} + {i}?", response: f"{i} + {i} = {2 * i}, so \\boxed{{{2 * i}}}."}
            for i in range(n)]


def fake_cache(hf_home: Path, repo_type: str, repo: str, files: dict[str, Path], commit: str = COMMIT,
               refs: tuple[str, ...] = ("main",)) -> Path:
    """Write a repository into a Hugging Face cache as huggingface_hub does: content-addressed blobs,
    a snapshot per commit of relative symlinks into them, and refs/<branch> holding the commit."""
    storage = hf_home / "hub" / f"{repo_type}s--{repo.replace('/', '--')}"
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = storage / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture()
def hf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def config_with(**overrides) -> dict:
    return deep_merge(DEFAULT, overrides)


def run_pipeline_prefix(raw: dict, results: Path, stages=("model", "data", "tokenize")) -> dict[str, Path]:
    """Run the model, data and tokenize stages of a config's plan, as the Snakemake jobs would."""
    plan = build_plan(parse_config(raw))
    done: dict[str, Path] = {}
    for stage in stages:
        (node,) = plan.nodes[stage].values()
        inputs = {role: results / ref for role, ref in node.parents.items()}
        final = results / stage / node.key
        run_stage(node, inputs, final)
        done[stage] = final
    return done


def only_node(raw: dict, stage: str) -> Node:
    (node,) = build_plan(parse_config(raw)).nodes[stage].values()
    return node


def nothing_left(parent: Path, key: str) -> bool:
    return not (parent / key).exists() and not list(parent.glob(f"{key}.tmp-*"))


# --- model, data and tokenize stages end to end -----------------------------------------------

def test_local_model_folder_and_local_file_end_to_end(tmp_path, model_folder, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from asft.train.data import pad_collator

    write_jsonl(tmp_path / "toy.jsonl", toy_rows(50))
    raw = config_with(
        model={"source": "local", "local_path": str(model_folder)},
        train_sets=[{"name": "toy", "source": "local", "path": str(tmp_path / "toy.jsonl"), "prompt_field": "question",
                     "response_field": "answer", "size": 40, "subsample_seed": 3}],
        tokenize={"template": "alpaca", "max_length": 256},
    )
    done = run_pipeline_prefix(raw, tmp_path / "results")
    for folder in done.values():
        assert json.loads((folder / MANIFEST).read_text())["key"] == folder.name
    model_stats = json.loads((done["model"] / "stats.json").read_text())
    assert model_stats["model_type"] == "qwen2" and model_stats["has_chat_template"]
    data_stats = json.loads((done["data"] / "stats.json").read_text())
    assert (data_stats["rows"], data_stats["source_rows"]) == (40, 50)
    assert data_stats["sha256"] == hashlib.sha256((tmp_path / "toy.jsonl").read_bytes()).hexdigest()
    stats = json.loads((done["tokenize"] / "stats.json").read_text())
    assert stats["examples"] == 40 and stats["dropped"] == 0 and stats["truncated"] == 0
    recorded = json.loads((done["tokenize"] / MANIFEST).read_text())["files"]
    assert set(recorded) >= {"stats.json", "dataset/dataset_info.json"}
    assert all(name == "stats.json" or name.startswith("dataset/") for name in recorded)  # no scratch left

    # What the trainer reads: the arrow dataset, padded by its collator, is a valid batch for the model.
    from datasets import load_from_disk

    dataset = load_from_disk(str(done["tokenize"] / "dataset"))
    batch = pad_collator(tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    model = AutoModelForCausalLM.from_pretrained(done["model"])
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0


def test_hub_cache_offline_resolves_model_and_train_set(tmp_path, hf_home, model_folder):
    files = {p.name: p for p in model_folder.iterdir()}
    fake_cache(hf_home, "model", "tiny-org/tiny-qwen", files)
    data_file = tmp_path / "numina_cot_10k.jsonl"
    write_jsonl(data_file, toy_rows(30, "instruction", "response"))
    fake_cache(hf_home, "dataset", "chichi56/ASFT", {"numina_cot_10k.jsonl": data_file})
    sha = hashlib.sha256(data_file.read_bytes()).hexdigest()
    raw = config_with(
        model={"source": "hub", "id": "tiny-org/tiny-qwen", "revision": "main"},
        train_sets=[{"name": "numina_cot_10k", "source": "hub", "repo": "chichi56/ASFT",
                     "filename": "numina_cot_10k.jsonl", "sha256": sha}],  # our stand-in, not the published file
        tokenize={"template": "chat", "max_length": 128},
    )
    done = run_pipeline_prefix(raw, tmp_path / "results")
    model_stats = json.loads((done["model"] / "stats.json").read_text())
    assert model_stats["origin"] == "hub:tiny-org/tiny-qwen@main" and model_stats["commit"] == COMMIT
    assert not any(p.is_symlink() for p in done["model"].rglob("*")), "artifact must not point into the cache"
    assert (done["model"] / "model.safetensors").is_file()
    data_stats = json.loads((done["data"] / "stats.json").read_text())
    assert data_stats["commit"] == COMMIT and data_stats["rows"] == 30 and data_stats["sha256"] == sha
    assert json.loads((done["tokenize"] / "stats.json").read_text())["examples"] == 30

    # A commit hash as revision resolves from snapshots/ without refs/.
    raw["model"]["revision"] = COMMIT
    run_pipeline_prefix(raw, tmp_path / "results-by-commit", stages=("model",))


def test_snakemake_jobs_resolve_the_hub_cache_offline(tmp_path, model_folder):
    """The real rules and scripts, in fresh processes that see only HF_HOME and HF_HUB_OFFLINE=1."""
    home = tmp_path / "hf-home"
    fake_cache(home, "model", "tiny-org/tiny-qwen", {p.name: p for p in model_folder.iterdir()})
    data_file = tmp_path / "math.jsonl"
    write_jsonl(data_file, toy_rows(20, "problem", "solution"))
    fake_cache(home, "dataset", "someone/math", {"math.jsonl": data_file})
    layer = {"model": {"source": "hub", "id": "tiny-org/tiny-qwen"},
             "train_sets": [{"name": "math", "source": "hub", "repo": "someone/math", "filename": "math.jsonl",
                             "prompt_field": "problem", "response_field": "solution", "size": 16}],
             "tokenize": {"template": "alpaca", "max_length": 256}}
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(layer))
    (tokenize,) = build_plan(load_config(tmp_path / "hub.yaml")).nodes["tokenize"].values()
    target = f"results/tokenize/{tokenize.key}/manifest.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                             str(tmp_path / "work"), "--cores", "2", target, "--configfile", str(tmp_path / "hub.yaml")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stats = json.loads((tmp_path / "work" / target).with_name("stats.json").read_text())
    assert stats["examples"] == 16 and stats["template"] == "alpaca"


def test_local_mirror_folder_with_filename(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_jsonl(mirror / "set.jsonl", toy_rows(12, "instruction", "response"))
    out = tmp_path / "out"
    out.mkdir()
    stats = build_dataset(LocalData(path=str(mirror), filename="set.jsonl"), out)
    assert stats["rows"] == 12 and (out / "train.jsonl").is_file()
    with pytest.raises(FileNotFoundError, match="is a folder: set train_sets"):
        build_dataset(LocalData(path=str(mirror)), tmp_path / "x")


# --- checks with clear errors ---------------------------------------------------------------------

def test_paper_files_are_pinned_in_the_key_and_checked(tmp_path, hf_home):
    entry = PAPER_FILES["numina_cot_10k"]
    raw = config_with(train_sets=[{"name": "numina_cot_10k", "source": "hub", "repo": "chichi56/ASFT",
                                   "filename": "numina_cot_10k.jsonl"}])
    node = only_node(raw, "data")
    assert node.settings.sha256 == entry.sha256
    assert {f.filename for f in PAPER_FILES.values()} == {
        "numina_cot_10k.jsonl", "numina_cot_30k.jsonl", "numina_cot_100k.jsonl",
        "train_medmcqa_alpaca_10k.jsonl", "magpie10k.jsonl"}
    # An explicit sha256 replaces the published one (and so changes the key).
    other = config_with(train_sets=[{**raw["train_sets"][0], "sha256": "ab" * 32}])
    assert only_node(other, "data").key != node.key

    # A cached file that is not the published one (here: truncated) fails, naming file, both hashes, sizes.
    fake = tmp_path / "numina_cot_10k.jsonl"
    write_jsonl(fake, toy_rows(5, "instruction", "response"))
    fake_cache(hf_home, "dataset", "chichi56/ASFT", {"numina_cot_10k.jsonl": fake})
    results = tmp_path / "results"
    with pytest.raises(ValueError) as error:
        run_stage(node, {}, results / "data" / node.key)
    message = str(error.value)
    actual = hashlib.sha256(fake.read_bytes()).hexdigest()
    assert "numina_cot_10k.jsonl" in message and actual in message and entry.sha256 in message
    assert str(entry.bytes) in message
    assert nothing_left(results / "data", node.key)


def test_check_sha256_names_the_file_and_both_hashes(tmp_path):
    path = tmp_path / "file.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\n')
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert check_sha256(path, actual.upper()) == actual and check_sha256(path, None) == actual
    with pytest.raises(ValueError, match=f"file.jsonl: sha256 mismatch: got {actual}, expected {'0' * 64}"):
        check_sha256(path, "0" * 64)


def test_unknown_model_offline_names_the_id_and_the_ways_out(tmp_path, hf_home):
    raw = config_with(model={"source": "hub", "id": "nobody/no-such-model", "revision": "main"})
    node = only_node(raw, "model")
    with pytest.raises(RuntimeError) as error:
        run_stage(node, {}, tmp_path / "model" / node.key)
    message = str(error.value)
    assert "nobody/no-such-model" in message and "'main'" in message
    assert "HF_HUB_OFFLINE" in message and "local_path" in message and str(hf_home) in message
    assert nothing_left(tmp_path / "model", node.key)


def test_download_failing_midway_leaves_no_artifact(tmp_path, hf_home, model_folder, monkeypatch):
    import asft.train.models

    fake_cache(hf_home, "model", "tiny-org/tiny-qwen", {p.name: p for p in model_folder.iterdir()})
    real_copy = asft.train.models._copy_tree

    def copy_then_fail(src, dest, patterns=None):
        real_copy(src, dest, ("config.json",))  # some files are in place ...
        raise OSError("No space left on device")  # ... when the copy dies

    monkeypatch.setattr(asft.train.models, "_copy_tree", copy_then_fail)
    node = only_node(config_with(model={"source": "hub", "id": "tiny-org/tiny-qwen"}), "model")
    with pytest.raises(OSError, match="No space left"):
        run_stage(node, {}, tmp_path / "model" / node.key)
    assert nothing_left(tmp_path / "model", node.key)

    # A data download cut by the network: named, and nothing left behind either.
    import huggingface_hub

    def cut(**kwargs):
        raise ConnectionError("connection reset by peer after 3.1 MB")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cut)
    node = only_node(config_with(train_sets=[{"name": "n", "source": "hub", "repo": "chichi56/ASFT",
                                              "filename": "numina_cot_30k.jsonl"}]), "data")
    with pytest.raises(RuntimeError, match=r"numina_cot_30k.jsonl' of dataset 'chichi56/ASFT'.*connection reset"):
        run_stage(node, {}, tmp_path / "data" / node.key)
    assert nothing_left(tmp_path / "data", node.key)


def test_missing_column_names_the_file_and_the_column(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", toy_rows(3, "problem", "solution"))
    raw = config_with(train_sets=[{"name": "qa", "source": "local", "path": str(tmp_path / "qa.jsonl")}])
    # Parsing the config already stops on it (tests/test_bad_input.py); the job checks again, since the
    # file may change between the parse and the job.
    (node,) = build_plan(parse_config(raw, check_files=False)).nodes["data"].values()
    with pytest.raises(ValueError) as error:
        run_stage(node, {}, tmp_path / "data" / node.key)
    message = str(error.value)
    assert str(tmp_path / "qa.jsonl") in message and "no column 'instruction'" in message
    assert "'problem'" in message and "prompt_field" in message
    # A row deep in the file with a null response: named by row and column.
    rows = toy_rows(5, "instruction", "response")
    rows[3]["response"] = None
    write_jsonl(tmp_path / "null.jsonl", rows)
    with pytest.raises(ValueError, match=r"null.jsonl: row 3 \(counting from 0\): column 'response' is null, not text"):
        build_dataset(LocalData(path=str(tmp_path / "null.jsonl")), tmp_path)
    # The tokenize stage checks the data stage's file again before any work.
    (tmp_path / "stage").mkdir()
    write_jsonl(tmp_path / "stage" / "train.jsonl", [{"instruction": "a"}])
    with pytest.raises(ValueError, match=r"stage/train.jsonl: row 0 has no text column 'response'"):
        load_train_rows(tmp_path / "stage" / "train.jsonl")


def test_size_larger_than_the_file_names_it(tmp_path):
    write_jsonl(tmp_path / "small.jsonl", toy_rows(7, "instruction", "response"))
    with pytest.raises(ValueError, match=r"small.jsonl: train_sets\[\].size is 20 but the file has only 7 rows"):
        build_dataset(LocalData(path=str(tmp_path / "small.jsonl"), size=20, subsample_seed=0), tmp_path)


def test_subsample_size_and_seed_are_in_the_key_and_deterministic(tmp_path):
    def data_key(**fields):
        base = {"name": "toy", "source": "local", "path": str(tmp_path / "toy.jsonl")}
        return only_node(config_with(train_sets=[{**base, **fields}]), "data")

    write_jsonl(tmp_path / "toy.jsonl", toy_rows(40, "instruction", "response"))  # parsing the config checks it
    whole, size10, size10_seed1 = data_key(), data_key(size=10), data_key(size=10, subsample_seed=1)
    assert len({whole.key, size10.key, size10_seed1.key}) == 3
    assert size10.settings.size == 10 and size10_seed1.settings.subsample_seed == 1
    assert whole.key == data_key(subsample_seed=5).key  # the seed matters only when subsampling
    picks = []
    for attempt in ("a", "b"):
        (tmp_path / attempt).mkdir()
        build_dataset(size10_seed1.settings, tmp_path / attempt)
        picks.append((tmp_path / attempt / "train.jsonl").read_text())
    assert picks[0] == picks[1] and len(picks[0].splitlines()) == 10


# --- tokenize: templates, exact masks, padding, over-length ------------------------------------

@pytest.mark.parametrize("template", ["plain", "alpaca", "chat"])
def test_masks_are_exact_for_every_template(tmp_path, model_folder, tokenizer, template):
    from datasets import load_from_disk

    from asft.train.data import pad_collator

    rows = [{"instruction": f"Compute {i} * 3.", "response": f"{i} * 3 = {3 * i}" + " more" * (i % 4)}
            for i in range(6)]
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    stats = tokenize_dataset(TokenizeSettings(template=template, max_length=512), tmp_path / "data",
                             model_folder, tmp_path / "out")
    assert stats["examples"] == 6 and stats["dropped"] == 0
    dataset = load_from_disk(str(tmp_path / "out" / "dataset"))
    eos = tokenizer.eos_token
    end_of_turn = "<|im_end|>\n" if template == "chat" else ""
    for row, example in zip(rows, dataset):
        ids, labels = example["input_ids"], example["labels"]
        prompt = tokenizer(training_prompt(template, row["instruction"], tokenizer), add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert labels[len(prompt):] == ids[len(prompt):]  # every response token is a label, eos included
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[len(prompt):]) == row["response"] + end_of_turn + eos

    # Padding (the trainer's collator): pad ids, -100 labels, zero attention on every padded position.
    batch = pad_collator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    width = batch["input_ids"].shape[1]
    for row, example in enumerate(dataset):
        n = len(example["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == example["input_ids"]
        assert batch["labels"][row, :n].tolist() == example["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (width - n)
        assert batch["input_ids"][row, n:].tolist() == [tokenizer.pad_token_id] * (width - n)


def test_a_tokenizer_that_adds_bos_keeps_it_masked(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from asft.embedded.tokenizer import byte_level_symbols

    vocab = {s: i for i, s in enumerate(byte_level_symbols())} | {"<s>": 256, "</s>": 257}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    llama_like = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    out = encode_batch(["Q"], ["A"], llama_like, template="plain", max_length=64, overlong="truncate")
    assert out["input_ids"][0] == [256, ord("Q"), ord("A"), 257]
    assert out["labels"][0] == [IGNORE_INDEX, IGNORE_INDEX, ord("A"), 257]


def test_upstream_boundary_masks_a_token_merged_across_the_boundary(tmp_path, model_folder):
    """Qwen2's pre-tokenizer joins ':' and the next word; with a merge for ':T' upstream's joint
    tokenization masks that token, so the response loses its 'T'. exact keeps every response token."""
    from transformers import Qwen2Tokenizer

    from asft.embedded.tokenizer import byte_level_symbols

    vocab = {s: i for i, s in enumerate(byte_level_symbols())} | {":T": 256, "<|endoftext|>": 257}
    merged = Qwen2Tokenizer(vocab=vocab, merges=[(":", "T")], unk_token=None, bos_token=None,
                            eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    options = {"template": "plain", "max_length": 64, "overlong": "truncate"}
    exact = encode_batch(["Q:"], ["To"], merged, **options)
    upstream = encode_batch(["Q:"], ["To"], merged, **options, prompt_boundary="upstream")
    assert (exact["input_ids"][0], exact["labels"][0]) == ([81, 58, 84, 111, 257], [IGNORE_INDEX, IGNORE_INDEX, 84, 111, 257])
    assert (upstream["input_ids"][0], upstream["labels"][0]) == ([81, 256, 111, 257], [IGNORE_INDEX, IGNORE_INDEX, 111, 257])
    # Without such a merge (the embedded tokenizer: one token per byte) both give the same examples,
    # and the option enters the tokenize key only when it is not the default.
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", toy_rows(8, "instruction", "response"))
    results = [tokenize_dataset(TokenizeSettings(**{**options, "max_length": 256, "prompt_boundary": boundary}),
                                tmp_path / "data",
                                model_folder, tmp_path / boundary) for boundary in ("exact", "upstream")]
    assert results[0]["tokens"] == results[1]["tokens"] and results[0]["response_tokens"] == results[1]["response_tokens"]
    default = only_node(config_with(), "tokenize")
    assert "prompt_boundary" not in default.settings.key_payload()
    assert only_node(config_with(tokenize={"prompt_boundary": "upstream"}), "tokenize").key != default.key


def test_chat_template_is_required_for_template_chat(tmp_path, tokenizer):
    folder = tmp_path / "no-chat"
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink()
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"instruction": "a", "response": "b"}])
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_dataset(TokenizeSettings(template="chat", max_length=64), tmp_path / "data", folder,
                         tmp_path / "out")


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_overlong_examples_truncated_or_dropped_and_counted(tmp_path, model_folder, overlong):
    from datasets import load_from_disk

    # The embedded tokenizer has one token per ASCII byte, so lengths are known: prompt + response + eos.
    rows = ([{"instruction": "q" * 10, "response": "r" * 10}] * 5          # 21 tokens: fits
            + [{"instruction": "q" * 10, "response": "r" * 60}] * 3        # 71: too long, response cut
            + [{"instruction": "q" * 70, "response": "r" * 5}] * 2)        # 76: the prompt alone fills 64
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    stats = tokenize_dataset(TokenizeSettings(template="plain", max_length=64, overlong=overlong), tmp_path / "data",
                             model_folder, tmp_path / "out")
    if overlong == "truncate":
        assert (stats["kept_whole"], stats["truncated"], stats["dropped_overlong"], stats["dropped_no_response"]) == \
            (5, 3, 0, 2)
        assert stats["examples"] == 8 and stats["max_length_seen"] == 64
    else:
        assert (stats["kept_whole"], stats["truncated"], stats["dropped_overlong"], stats["dropped_no_response"]) == \
            (5, 0, 5, 0)
        assert stats["examples"] == 5 and stats["max_length_seen"] == 21
    assert stats["dropped"] == stats["dropped_overlong"] + stats["dropped_no_response"]
    assert stats["length_before_truncation"]["max"] == 76
    dataset = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(dataset) == stats["examples"]
    assert sum(sum(label != IGNORE_INDEX for label in ex["labels"]) for ex in dataset) == stats["response_tokens"]
    assert all(len(ex["input_ids"]) <= 64 for ex in dataset)


def test_parallel_tokenization_gives_the_same_dataset(tmp_path, model_folder):
    from datasets import load_from_disk

    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", toy_rows(2500, "instruction", "response"))
    settings = TokenizeSettings(template="alpaca", max_length=256)
    one = tokenize_dataset(settings, tmp_path / "data", model_folder, tmp_path / "one", num_proc=1)
    two = tokenize_dataset(settings, tmp_path / "data", model_folder, tmp_path / "two", num_proc=2)
    assert one == two
    assert load_from_disk(str(tmp_path / "one" / "dataset")).to_dict() == \
        load_from_disk(str(tmp_path / "two" / "dataset")).to_dict()


# --- presets: what they set, and the DAG they plan, offline -------------------------------------

PRESETS = ("quick", "full", "paper")


@pytest.mark.parametrize("name", PRESETS)
def test_presets_override_everything_embedded(name):
    cfg = load_config(ROOT / "config" / f"{name}.yaml")
    assert cfg.model.source == "hub" and cfg.model.id.startswith("Qwen/Qwen2.5-")
    assert all(s.source == "hub" and s.repo == "chichi56/ASFT" for s in cfg.train_sets)
    # The fork's train_v2.py default length and merge_lora.py's float16 (quick, full); the paper: 2048, bf16.
    fork = name in ("quick", "full")
    assert cfg.tokenize.template == "alpaca" and cfg.tokenize.max_length == (512 if fork else 2048)
    assert not any(b.startswith("embedded_") for b in cfg.eval.benchmarks)
    assert cfg.eval.backend == "vllm" and cfg.eval.template == "alpaca"
    assert cfg.train.precision == "bf16" and cfg.merge_dtype == ("fp16" if fork else "bf16")
    assert cfg.train.lora.target_modules == ["q_proj", "v_proj"] and cfg.train.lora.dropout == 0.05
    assert cfg.resources.train.gpus >= 1 and cfg.resources.eval.gpus >= 1
    plan = build_plan(cfg)
    for node in plan.nodes["data"].values():
        assert node.settings.sha256 == PAPER_FILES[node.labels["train_set"]].sha256


def test_paper_preset_is_the_paper_recipe():
    cfg = load_config(ROOT / "config" / "paper.yaml")
    assert cfg.model.id == "Qwen/Qwen2.5-7B"
    assert [s.filename for s in cfg.train_sets] == ["numina_cot_100k.jsonl"]
    assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.max_steps, cfg.train.epochs) == (32, 64, None, 1)
    assert (cfg.train.global_batch_size, cfg.train.per_device_batch_size, cfg.train.lr) == (256, 2, 5e-5)
    assert cfg.loss.kl_weight == 0.05 and cfg.train.deepspeed is None  # LoRA without ZeRO, as upstream
    assert cfg.eval.benchmarks == ["math_oai", "minerva_math", "olympiadbench", "aime24", "amc23", "gsm8k"]
    assert (cfg.eval.n_samples, cfg.eval.temperature, cfg.eval.max_new_tokens) == (16, 1.0, 4096)
    assert cfg.table.target == ["aime24", "math_oai", "minerva_math", "olympiadbench", "amc23"]
    quick = load_config(ROOT / "config" / "quick.yaml")
    assert (quick.model.id, quick.train.max_steps, quick.train.lora.r, quick.train.lora.alpha) == \
        ("Qwen/Qwen2.5-1.5B", 200, 8, 16)
    full = load_config(ROOT / "config" / "full.yaml")
    assert (full.train.max_steps, full.train.epochs, full.train_sets[0].filename) == (None, 3, "numina_cot_10k.jsonl")


def test_presets_plan_their_whole_dag_offline(tmp_path):
    """`snakemake -n` of each preset from an empty working folder: the full DAG, nothing downloaded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    runs = {}
    for name in PRESETS:
        workdir = tmp_path / name
        workdir.mkdir()
        command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                   "-n", "results/table.csv", "--configfile", str(ROOT / "config" / f"{name}.yaml")]
        runs[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for name, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: snakemake -n failed\n{out[-3000:]}\n{err[-3000:]}"
        table = out.split("Job stats:")[1].split("total")[0]
        jobs = Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)})
        cfg = load_config(ROOT / "config" / f"{name}.yaml")
        runs_count = len(cfg.train_sets) * len(cfg.modes) * len(cfg.seeds)
        expected = {"download_model": 1, "download_data": len(cfg.train_sets), "tokenize": len(cfg.train_sets),
                    "train": runs_count, "merge": runs_count,
                    "generate": len(cfg.eval.benchmarks) * (runs_count + int(cfg.evaluate_base)),
                    "score": len(cfg.eval.benchmarks) * (runs_count + int(cfg.evaluate_base)), "aggregate": 1}
        assert {rule: jobs[rule] for rule in expected} == expected, f"{name}: {dict(jobs)}"
        assert not (tmp_path / name / "results").exists()
    assert not (tmp_path / "hf-home").exists() or not any((tmp_path / "hf-home").rglob("*")), "something downloaded"
    shutil.rmtree(tmp_path, ignore_errors=True)
