"""Paper fidelity: the settings that make our runs do what produced the published numbers.

Each test checks one setting against an independent computation of what upstream (zhuchichi56/ASFT
train_v2.py under the HF Trainer) does: loss normalisation over accumulation steps, the prompt
boundary, KL-direction names, warm-up ratio and precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asft.workflow.config import ConfigError, layered_raw, load_config, parse_config
from asft.train.settings import TrainRuntime
from asft.workflow.plan import build_plan
from tests.conftest import train_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
ACCUMULATION = 4


# --- loss normalisation over gradient accumulation ----------------------------------------------

def _reference_gradient(model_dir: Path, micro_batches: list[dict], normalize: str) -> tuple[float, float]:
    """Loss and gradient norm of one optimizer step, computed without the trainer or asft.train.losses.

    upstream: sum over micro-batches of each one's mean token CE (train_v2.py; the HF Trainer does not
    divide by the accumulation steps for a model that accepts loss kwargs); microbatch_mean: that sum
    / steps; global_tokens: every response token of the step weighs 1 / (tokens of the step)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    total_tokens = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in micro_batches)
    step_loss = 0.0
    for batch in micro_batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        token_ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum")
        n_tokens = int((targets != -100).sum())
        loss = {"upstream": token_ce / n_tokens, "microbatch_mean": token_ce / n_tokens / len(micro_batches),
                "global_tokens": token_ce / total_tokens}[normalize]
        loss.backward()
        step_loss += float(loss.detach())
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    return step_loss, float(norm)


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory, tiny_dataset) -> Path:
    """Eight examples whose response lengths differ, so the three normalisations really differ."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(tiny_dataset))
    picked, seen = [], set()
    for index, example in enumerate(dataset):
        n = sum(label != -100 for label in example["labels"])
        if n not in seen or len(seen) >= 3:
            picked.append(index)
            seen.add(n)
        if len(picked) == 2 * ACCUMULATION:
            break
    assert len(seen) >= 2, "the tiny train set has no examples of different response lengths"
    folder = tmp_path_factory.mktemp("uneven") / "dataset"
    dataset.select(picked).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("normalize", ["upstream", "microbatch_mean", "global_tokens"])
def test_each_normalisation_gives_its_gradient_over_four_accumulation_steps(normalize, tmp_path, tiny_base,
                                                                           uneven_dataset, monkeypatch):
    import asft.train.trainer as trainer

    seen: list[dict] = []
    real_collator = trainer.pad_collator

    def recording_collator(pad_id):
        collate = real_collator(pad_id)

        def record(features):
            batch = collate(features)
            seen.append({k: v.clone() for k, v in batch.items()})
            return batch

        return record

    monkeypatch.setattr(trainer, "pad_collator", recording_collator)
    settings = train_settings("sft", method="full", lora=None, normalize=normalize, max_steps=1,
                              global_batch_size=2 * ACCUMULATION, per_device_batch_size=2, lr=1e-3, warmup_steps=0,
                              max_grad_norm=1e9)
    out = tmp_path / "out"
    out.mkdir()
    stats = trainer.train_run(settings, TrainRuntime(chunk_size=7, save_steps=100, logging_steps=1),
                              model_dir=tiny_base, dataset_dir=uneven_dataset, out_dir=out,
                              checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert stats["gradient_accumulation"] == ACCUMULATION and len(seen) == ACCUMULATION
    logged = next(e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e)
    loss, grad_norm = _reference_gradient(tiny_base, seen, normalize)
    assert logged["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)
    assert logged["loss"] == pytest.approx(loss, abs=1e-4)


def test_upstream_is_accumulation_steps_times_microbatch_mean(tiny_base, tiny_dataset):
    from datasets import load_from_disk

    from asft.train.data import pad_collator

    dataset = load_from_disk(str(tiny_dataset))
    collate = pad_collator(0)
    batches = [collate([dataset[2 * i], dataset[2 * i + 1]]) for i in range(ACCUMULATION)]
    upstream = _reference_gradient(tiny_base, batches, "upstream")
    mean = _reference_gradient(tiny_base, batches, "microbatch_mean")
    assert upstream[0] == pytest.approx(ACCUMULATION * mean[0], rel=1e-5)
    assert upstream[1] == pytest.approx(ACCUMULATION * mean[1], rel=1e-5)


def test_old_normalisation_name_is_microbatch_mean_with_the_same_key():
    old = parse_config({**layered_raw([]), "loss": {"normalize": "microbatch_tokens"}})
    new = parse_config({**layered_raw([]), "loss": {"normalize": "microbatch_mean"}})
    assert old.loss.normalize == new.loss.normalize == "microbatch_mean"
    assert build_plan(old).keys("train") == build_plan(new).keys("train")
    upstream = parse_config({**layered_raw([]), "loss": {"normalize": "upstream"}})
    assert set(build_plan(upstream).keys("train")).isdisjoint(build_plan(new).keys("train"))


def test_paper_presets_use_upstream_normalisation_and_boundary():
    for preset in ("paper.yaml", "paper_math.yaml", "paper_math_lora.yaml", "paper_medical.yaml", "quick.yaml",
                   "fork_quick.yaml", "full.yaml"):
        cfg = load_config(CONFIG / preset)
        assert cfg.loss.normalize == "upstream", preset
        assert cfg.tokenize.prompt_boundary == "upstream", preset


def test_paper_presets_follow_the_text_where_it_states_a_setting_and_paper_code_the_scripts():
    for preset in ("paper_math.yaml", "paper_math_lora.yaml", "paper_medical.yaml"):
        cfg = load_config(CONFIG / preset)
        assert (cfg.train.lr_scheduler, cfg.train.warmup_ratio, cfg.train.warmup_steps) == ("cosine", 0.1, 0), preset
        assert cfg.loss.kl_weight == 0.05 and cfg.loss.kl_direction == "ref_policy", preset
    assert load_config(CONFIG / "paper_math.yaml").train.precision == "bf16_pure"
    medical = load_config(CONFIG / "paper_medical.yaml")
    assert (medical.train.precision, medical.eval.protocol, medical.tokenize.max_length) == ("bf16_pure",
                                                                                           "paper_medical", 512)
    assert medical.model.special_tokens == {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"}
    code = load_config(CONFIG / "paper_math.yaml", CONFIG / "paper_code.yaml")
    assert (code.train.lr_scheduler, code.train.warmup_ratio, code.train.warmup_steps) == ("linear", None, 0)


# --- KL direction names ---------------------------------------------------------------------------

@pytest.mark.parametrize("alias,canonical", [("forward", "ref_policy"), ("reverse", "policy_ref")])
def test_kl_direction_aliases_resolve_to_the_same_key(alias, canonical):
    by_alias = parse_config({**layered_raw([]), "loss": {"kl_direction": alias}})
    by_name = parse_config({**layered_raw([]), "loss": {"kl_direction": canonical}})
    assert by_alias.loss.kl_direction == canonical
    assert build_plan(by_alias).keys("train") == build_plan(by_name).keys("train")


def test_forward_kl_is_kl_of_reference_to_policy():
    """The paper's eq. 6 forward KL, D_KL(pi_base || pi_theta) = sum_v q_v (log q_v - log p_v)."""
    from asft.train.losses import compute_loss

    torch.manual_seed(0)
    logits, ref = torch.randn(1, 4, 9), torch.randn(1, 4, 9)
    labels = torch.tensor([[-100, 1, 2, 3]])
    p, q = logits[0, :3].log_softmax(-1), ref[0, :3].log_softmax(-1)
    forward = (q.exp() * (q - p)).sum(-1).mean()
    out = compute_loss(logits, labels, "sft+kl", kl_weight=1.0, ref_logits=ref, kl_direction="ref_policy")
    assert out.kl.item() == pytest.approx(forward.item(), rel=1e-5)


# --- schedule and precision -------------------------------------------------------------------------

def test_warmup_ratio_rounds_up_a_fraction_of_the_steps(tmp_path, tiny_base, tiny_dataset):
    from asft.train.trainer import train_run

    settings = train_settings("sft", max_steps=10, warmup_steps=0, warmup_ratio=0.25, lr=1e-2,
                              lr_scheduler="linear")
    out = tmp_path / "out"
    out.mkdir()
    train_run(settings, TrainRuntime(chunk_size=64, save_steps=100, logging_steps=1),
              model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out, checkpoint_dir=tmp_path / "c",
              progress=False)
    lrs = [e["learning_rate"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "learning_rate" in e]
    # ceil(0.25 x 10) = 3 warm-up steps: 0, 1/3, 2/3 of the peak (each logged rate is the one of its step),
    # the peak at the fourth step, then linear decay to 0 over the remaining 7.
    assert lrs[:5] == pytest.approx([0.0, 1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2 * 6 / 7], rel=1e-3)


def test_warmup_ratio_and_steps_together_is_a_config_error():
    raw = layered_raw([])
    raw["train"] = {**raw["train"], "warmup_ratio": 0.1, "warmup_steps": 20}
    with pytest.raises(ConfigError, match=r"train.warmup_ratio \(0.1\) and train.warmup_steps \(20\)"):
        parse_config(raw)


def test_warmup_ratio_enters_the_key_only_when_set():
    default = build_plan(load_config())
    assert all("warmup_ratio" not in node.settings.key_payload() for node in default.nodes["train"].values())
    raw = layered_raw([])
    raw["train"] = {**raw["train"], "warmup_ratio": 0.1, "warmup_steps": 0}
    assert set(build_plan(parse_config(raw)).keys("train")).isdisjoint(default.keys("train"))


@pytest.mark.parametrize("precision,method,dtype", [
    ("fp32", "full", torch.float32), ("bf16", "full", torch.float32), ("bf16", "lora", torch.bfloat16),
    ("bf16_pure", "full", torch.bfloat16), ("bf16_pure", "lora", torch.bfloat16),
])
def test_precision_decides_the_dtype_adamw_steps(precision, method, dtype):
    from asft.train.trainer import weights_dtype

    assert weights_dtype(precision, method) is dtype


def test_bf16_pure_steps_bf16_weights_and_adamw_states(tmp_path, tiny_base, tiny_dataset):
    """Upstream full fine-tuning: the weights and AdamW's moments are bf16 (CPU autocast runs bf16 too)."""
    import asft.train.trainer as trainer

    captured = {}
    real_init = trainer.AnchoredTrainer.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        captured["trainer"] = self

    trainer.AnchoredTrainer.__init__ = keep
    try:
        out = tmp_path / "out"
        out.mkdir()
        trainer.train_run(train_settings("sft", method="full", lora=None, precision="bf16_pure", max_steps=1),
                          TrainRuntime(chunk_size=64, save_steps=100, logging_steps=1),
                          model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out, checkpoint_dir=tmp_path / "c",
                          progress=False)
    finally:
        trainer.AnchoredTrainer.__init__ = real_init
    fitted = captured["trainer"]
    assert {p.dtype for p in fitted.model.parameters()} == {torch.bfloat16}
    states = [s for s in fitted.optimizer.state.values() if "exp_avg" in s]
    assert states and {s["exp_avg"].dtype for s in states} == {torch.bfloat16}


def test_bf16_pure_under_deepspeed_needs_bf16_master_weights():
    raw = layered_raw([CONFIG / "paper_math.yaml"])
    assert parse_config(raw).train.deepspeed == "config/deepspeed/zero3_bf16_pure.json"
    raw["train"] = {**raw["train"], "deepspeed": "config/deepspeed/zero3.json"}
    with pytest.raises(ConfigError, match="train.precision is bf16_pure but train.deepspeed"):
        parse_config(raw)
    raw["train"] = {**raw["train"], "precision": "bf16", "deepspeed": "config/deepspeed/zero3_bf16_pure.json"}
    with pytest.raises(ConfigError, match="keeps bf16 master weights"):
        parse_config(raw)


def test_full_finetuning_in_mixed_bf16_gets_a_new_key():
    """Full fine-tuning in `bf16` used to step bf16 weights; now mixed precision keeps fp32 masters."""
    raw = layered_raw([CONFIG / "paper_math_lora.yaml"])
    raw["train"] = {**raw["train"], "method": "full", "precision": "bf16"}
    node = next(iter(build_plan(parse_config(raw)).nodes["train"].values()))
    assert node.settings.precision == "bf16_mixed"


# --- the prompt boundary --------------------------------------------------------------------------

def _boundary_bpe(texts: list[str]):
    """A byte-level BPE with Qwen2's pre-tokenizer, trained on alpaca prompt + response text, so it
    learns merges across the boundary (':' joins the next word, as in Qwen2.5's own vocabulary)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    qwen2_split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen2_split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_upstream_boundary_equals_joint_tokenisation_on_the_shipped_benchmarks():
    from asft.eval.benchmarks import load_problems
    from asft.train.data import encode_batch
    from asft.train.templates import training_prompt

    problems = [p for p in load_problems("math_oai") if p.solution][:300]
    questions, solutions = [p.question for p in problems], [p.solution for p in problems]
    prompts = [training_prompt("alpaca", q) for q in questions]
    tokenizer = _boundary_bpe([p + s for p, s in zip(prompts, solutions)])
    options = {"template": "alpaca", "max_length": 4096, "overlong": "truncate"}
    upstream = encode_batch(questions, solutions, tokenizer, **options, prompt_boundary="upstream")
    exact = encode_batch(questions, solutions, tokenizer, **options)
    merged_across = 0
    for i, (prompt, solution) in enumerate(zip(prompts, solutions)):
        # upstream preprocess(): tokenize prompt + response + eos as one text; mask len(tokenize(prompt)).
        joint = tokenizer(prompt + solution + tokenizer.eos_token)["input_ids"]
        n_prompt = len(tokenizer(prompt)["input_ids"])
        assert upstream["input_ids"][i] == joint
        assert upstream["labels"][i] == [-100] * n_prompt + joint[n_prompt:]
        merged_across += exact["input_ids"][i] != joint
    # The test means something only if the tokenizer does merge across the boundary somewhere.
    assert merged_across > 0


# --- docs/fidelity.md: every override it offers works ------------------------------------------

def _fidelity_overrides() -> list[str]:
    import re

    text = (ROOT / "docs" / "fidelity.md").read_text()
    return re.findall(r"--config '([^']+)'", text)


@pytest.mark.parametrize("override", _fidelity_overrides())
def test_every_override_in_the_fidelity_table_changes_a_preset(override):
    from snakemake.cli import parse_config as snakemake_parse_config

    overrides = snakemake_parse_config([override])  # exactly as `snakemake --config` reads it
    changed = []
    for preset in ("paper_math.yaml", "paper_math_lora.yaml", "paper_medical.yaml", "quick.yaml"):
        try:
            with_override = parse_config(layered_raw([CONFIG / preset], overrides))
        except ConfigError:
            continue  # e.g. a LoRA-only override on a full fine-tuning preset
        if with_override != load_config(CONFIG / preset):
            changed.append(preset)
    assert changed, f"--config '{override}' changes no paper preset (or is invalid for all of them)"


def test_the_fidelity_table_offers_overrides():
    assert len(_fidelity_overrides()) >= 15


# --- Llama-2: no pad token, and upstream's special tokens -------------------------------------------

def test_llama_special_tokens_and_pad_as_upstream(tmp_path):
    """train_v2.py on Llama-2: '[PAD]' added (mean-initialised rows) and bos/eos/unk set to '</s>', so
    every sequence starts with '</s>' (its slow tokenizer builds inputs from the new bos id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    from asft.train.models import fix_tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "▁": 5, "▁a": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "a")], unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tokenizer = LlamaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=True)
    assert tokenizer.pad_token is None and tokenizer("a b")["input_ids"][0] == 1
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=7, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    before = AutoModelForCausalLM.from_pretrained(tmp_path).get_input_embeddings().weight.detach().clone()

    done = fix_tokenizer(tmp_path, special_tokens={"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"},
                         missing_pad_token="add")
    fixed = AutoTokenizer.from_pretrained(tmp_path)
    assert (fixed.bos_token, fixed.eos_token, fixed.unk_token, fixed.pad_token) == ("</s>", "</s>", "</s>", "[PAD]")
    assert fixed("a b")["input_ids"][0] == 2 and fixed.pad_token_id == 7 and done["pad_token"]["id"] == 7
    rows = AutoModelForCausalLM.from_pretrained(tmp_path).get_input_embeddings().weight.detach()
    assert rows.shape[0] == 8 and torch.allclose(rows[7], before.mean(0), atol=1e-6)
