"""Config validation: bad configs fail with a message naming the field; the schema is current."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asft.workflow.config import ConfigError, ModelConfig, json_schema, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def default_raw() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_embedded_default_is_valid():
    cfg = load_config()
    assert cfg.model.source == "embedded"
    assert cfg.modes == ["sft", "dft", "sft+kl", "asft"]


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"modes": ["sft", "asfd"]}, "did you mean 'asft'"),
        ({"modes": []}, "modes"),
        ({"seeds": []}, "seeds"),
        ({"loss": {"kl_weight": -0.1}}, "loss.kl_weight"),
        ({"loss": {"kl_weight": float("inf")}}, "loss.kl_weight"),
        ({"loss": {"kl_direction": "backward"}}, "loss.kl_direction"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"lerning_rate": 1e-4}}, "train.lerning_rate"),
        ({"eval": {"benchmarks": ["math500"]}}, "eval.benchmarks"),
        ({"model": {"source": "hub", "id": None}}, "model.id"),
        ({"train_sets": [{"name": "x", "source": "hub", "repo": "chichi56/ASFT"}]}, "filename"),
        ({"table": {"target": ["gsm8k"]}}, "table.target"),
        ({"loss": {"hparams": {"sft-topk": {"kep": 0.5}}}, "modes": ["sft-topk"], "table": {"target": [], "retention": []}}, "kep"),
        ({"train": {"global_batch_size": 30, "per_device_batch_size": 4}}, "global_batch_size"),
    ],
)
def test_bad_config_names_the_field(patch, field):
    raw = default_raw()
    for key, value in patch.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert field in str(error.value)


def test_non_mapping_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(["not", "a", "mapping"])


def test_schema_file_is_generated_from_the_models():
    on_disk = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    assert on_disk == json_schema(), "config/schema.yaml is stale: run `asft schema -o config/schema.yaml`"


def test_json_schema_rejects_what_the_models_reject():
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json_schema())
    assert not list(validator.iter_errors(default_raw()))
    bad = default_raw()
    bad["train"]["lerning_rate"] = 1.0
    assert any("lerning_rate" in e.message for e in validator.iter_errors(bad))


def test_the_config_and_pretraining_share_one_embedded_spec():
    from asft.embedded.spec import EmbeddedBaseSpec

    assert ModelConfig.model_fields["embedded"].annotation is EmbeddedBaseSpec
    assert load_config().model.embedded == EmbeddedBaseSpec()
    with pytest.raises(ConfigError, match="model.embedded: .*num_heads"):
        parse_config({"model": {"embedded": {"num_heads": 3}}})


def test_presets_layer_like_snakemake(tmp_path):
    layer = tmp_path / "more_seeds.yaml"
    layer.write_text("seeds: [0, 1, 2]\ntrain: {lr: 1.0e-3}\n")
    cfg = load_config(layer)
    assert cfg.seeds == [0, 1, 2]
    assert cfg.train.lr == 1e-3
    assert cfg.train.max_steps == 300  # untouched keys come from the default


def test_config_mode_list_matches_the_loss_registry():
    from asft.train.losses import available_modes

    for mode in ("sft", "dft", "sft+kl", "asft", "sft-topk", "sft-antiop", "sft-lr"):
        assert mode in available_modes()
