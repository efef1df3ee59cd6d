"""Fuzzing the config loader: whatever the input, the only error is a ConfigError that says where.

Random nested structures (real field names with wrong types, unknown keys, odd scalars), the
default config with one value replaced at a random path, random text and random bytes as YAML
files: `parse_config`, `read_yaml` and `load_config` either return a Config or raise ConfigError
with a non-empty message that names a field (`  <field.path>: ...`) or the file.
"""

from __future__ import annotations

import copy
import datetime
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from asft.workflow.config import DEFAULT_CONFIG, Config, ConfigError, load_config, parse_config, read_yaml

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _field_names(model: type[BaseModel], seen: set | None = None) -> set[str]:
    seen = set() if seen is None else seen
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for arg in [info.annotation, *getattr(info.annotation, "__args__", ())]:
            inner = getattr(arg, "__args__", (arg,))
            for candidate in (arg, *inner):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate not in seen:
                    seen.add(candidate)
                    names |= _field_names(candidate, seen)
    return names


FIELD_NAMES = sorted(_field_names(Config) | {"extends"})  # extends: a preset names its parents
DEFAULT_RAW = yaml.safe_load(DEFAULT_CONFIG.read_text())
WORDS = [*FIELD_NAMES, "asft", "sft", "dft", "sft+kl", "embedded", "hub", "local", "lora", "full", "cosine",
         "embedded_mul", "ref_policy", "", " ", "null", "~", "-1", "1e400", ".nan", "yes", "on"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS), st.text(max_size=12),
    st.dates(min_value=datetime.date(1, 1, 1)),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(-3, 3), st.booleans())
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into the default config (dict keys and list indices), branches included."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


DEFAULT_PATHS = _paths(DEFAULT_RAW) + [("model", "embedded", "steps"), ("train", "lora", "r"),
                                       ("loss", "hparams"), ("eval", "stop"), ("resources", "train", "gpus")]


def _set(raw: dict, path: tuple, value: Any) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node[part]
        if not isinstance(node, (dict, list)):
            return raw
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value
    return raw


#: "  <field.path>: <what is wrong>" (a field name may itself be odd: a key of the user's file).
FIELD_LINE = re.compile(r"^  .+: \S", re.DOTALL)


def _check(error: ConfigError, path: Path | None = None) -> None:
    message = str(error)
    assert message.strip(), "empty ConfigError message"
    # The file itself, or a preset it `extends` (named relative to it, so it shares its folder).
    names_file = path is not None and (str(path) in message or str(path.parent) in message)
    head, _, body = message.partition("\n")
    # Field names come from the user's file and may hold any character (a newline too), so the
    # check is on the shape: "invalid configuration:" then "  <field>: <problem>" lines.
    names_field = (head == "invalid configuration:" and bool(FIELD_LINE.match(body))) or "top level" in message
    assert names_file or names_field, f"the message names neither a field nor the file: {message!r}"


@FAST
@given(structures)
@example([])
@example("modes: [asfd]")
@example({"seeds": []})
@example({"modes": ["sft", "asfd"]})
@example({"loss": {"kl_weight": -1}})
@example({1: 2, None: 3})
@example({"train_sets": [{"name": "x", "source": "local"}]})
def test_parse_config_raises_only_config_errors_naming_a_field(raw):
    try:
        parse_config(raw)
    except ConfigError as error:
        _check(error)


@FAST
@given(st.sampled_from(DEFAULT_PATHS), structures)
@example(("seeds",), [])
@example(("loss", "kl_weight"), -0.5)
@example(("loss", "hparams"), {"sft-topk": {"keep": "x"}, "asft": {"nope": 1}})
@example(("train", "per_device_batch_size"), 7)
@example(("eval", "benchmarks"), ["math500"])
@example(("table", "target"), ["gsm8k"])
def test_default_config_with_one_wrong_value_fails_cleanly(path, value):
    try:
        parse_config(_set(DEFAULT_RAW, path, value))
    except ConfigError as error:
        _check(error)


yamlish = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from([*WORDS, ":", ": ", "- ", "\n", "  ", "[", "]", "{", "}", ",", "&a ", "*a",
                              "!!python/object:os.system", "'", '"', "#", "|", ">", "---", "...", "\t",
                              "%YAML 1.2", "? "]),
             max_size=60).map("".join),
)


def _write(data: bytes | str) -> Path:
    handle = tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False)
    with handle:
        handle.write(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return Path(handle.name)


@FAST
@given(st.one_of(yamlish, st.binary(max_size=100)))
@example("[" * 3000)
@example("a: &a [*a]\nseeds: *a\n")
@example(b"name: \xff\xfe\n")
@example("modes: [sft\n")
@example("\tmodes: x")
@example("extends: .")
@example("extends: [1]")
@example("extends: {a: 1}")
@example("extends: not-there.yaml")
def test_yaml_files_fail_cleanly_naming_the_file(text):
    path = _write(text)
    try:
        for load in (read_yaml, load_config):
            try:
                load(path)
            except ConfigError as error:
                _check(error, path)
    finally:
        path.unlink()


@FAST
@given(structures)
def test_layered_config_files_fail_cleanly(raw):
    path = _write(yaml.safe_dump(raw))
    try:
        load_config(path)
    except ConfigError as error:
        _check(error, path)
    finally:
        path.unlink()


def test_unreadable_paths_name_the_file(tmp_path):
    for path in (tmp_path / "missing.yaml", tmp_path):
        try:
            load_config(path)
        except ConfigError as error:
            _check(error, path)
        else:  # pragma: no cover
            raise AssertionError(f"{path} loaded")
