"""alpaca-eval's annotator, as the package ships it, pointed at an OpenAI-compatible endpoint.

The prompt, the decoding settings and the parser of the answer are the annotator config's own
(`alpaca_eval/evaluators_configs/<annotator>/configs.yaml`); only where requests go changes: the
judge model's name, a client config naming the endpoint (`base_url`), the OpenAI client's retries and
timeout, and the number of requests in flight. The API key is read from the environment by the
client and written nowhere (not in the client config, not in the logged decoding arguments).

The identity functions read the config files without importing alpaca-eval (the plan calls them).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from asft.core.names import did_you_mean

PACKAGE = "alpaca-eval"
DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
OPENAI_API = "https://api.openai.com/v1"
#: The key a local server gets when none is set (a vLLM server started without --api-key accepts any).
LOCAL_KEY = "EMPTY"


class JudgeConfigError(ValueError):
    """The judge cannot be set up as configured; the message names the setting."""


@lru_cache(maxsize=1)
def configs_dir() -> Path:
    spec = importlib.util.find_spec("alpaca_eval")  # the package is located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise JudgeConfigError(f"eval.judge: the {PACKAGE} package is not installed (pyproject.toml pins it)")
    return Path(next(iter(spec.submodule_search_locations))) / "evaluators_configs"


def package_version() -> str:
    return f"{PACKAGE} {importlib.metadata.version(PACKAGE)}"


def available_annotators() -> list[str]:
    return sorted(p.parent.name for p in configs_dir().glob("*/configs.yaml"))


@lru_cache(maxsize=None)
def annotator_config(name: str) -> dict[str, Any]:
    """The annotator's own settings (its configs.yaml entry); an unknown one is an error naming the field."""
    path = configs_dir() / name / "configs.yaml"
    if not path.is_file():
        hint = did_you_mean(name, available_annotators())
        raise JudgeConfigError(f"eval.judge.annotator: unknown annotator '{name}'{hint}; see {configs_dir()}")
    configs = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(configs, dict) or len(configs) != 1:
        raise JudgeConfigError(f"eval.judge.annotator: {path} holds {len(configs or {})} annotators; "
                               "one is judged by (a pool of annotators is not supported)")
    config = next(iter(configs.values()))
    if config.get("fn_completions") != "openai_completions":
        raise JudgeConfigError(f"eval.judge.annotator: '{name}' calls {config.get('fn_completions')}, not an "
                               "OpenAI-compatible endpoint; choose an annotator whose fn_completions is "
                               "openai_completions (e.g. weighted_alpaca_eval_gpt4_turbo)")
    return config


def annotator_model(name: str) -> str:
    """The judge model the annotator was made for (e.g. gpt-4-1106-preview)."""
    return str(annotator_config(name)["completions_kwargs"]["model_name"])


@lru_cache(maxsize=None)
def annotator_sha256(name: str) -> str:
    """sha256 of the annotator's configs.yaml and prompt template, as installed: what it asks and how."""
    config = annotator_config(name)
    digest = hashlib.sha256()
    for path in (configs_dir() / name / "configs.yaml", configs_dir() / config["prompt_template"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def api_key(key_env: str, base_url: str | None) -> str:
    """The key from `key_env`; a local endpoint needs none. A missing key for the OpenAI API is an error
    before any request."""
    key = os.environ.get(key_env)
    if key:
        return key
    if base_url is None:
        raise JudgeConfigError(f"eval.judge.api_key_env: the environment variable {key_env} is not set; the judge "
                               f"calls the OpenAI API (set it, or eval.judge.base_url to another endpoint)")
    return LOCAL_KEY


@contextlib.contextmanager
def pointed_annotator(annotator: str, model: str, *, base_url: str | None, key: str, concurrency: int,
                      max_retries: int, timeout_s: float, caching_path: Path, seed: int = 0) -> Iterator[Any]:
    """alpaca-eval's PairwiseAnnotator for `annotator`, its requests sent to `base_url` as `model`.

    The client config file (base_url only) lives in a temporary folder for the duration; the key is
    handed to the OpenAI client through OPENAI_API_KEY in this process only, and restored after."""
    from alpaca_eval.annotators import PairwiseAnnotator

    with tempfile.TemporaryDirectory(prefix="asft-judge-") as tmp:
        client_config = Path(tmp) / "client_config.yaml"
        client_config.write_text(yaml.safe_dump({"default": [{"base_url": base_url or OPENAI_API}]}))
        # a pair left without a verdict is not cached, so the next run asks it again
        judge = PairwiseAnnotator(annotators_config=annotator, caching_path=caching_path, seed=seed,
                                  is_store_missing_annotations=False)
        if judge.df_annotations is None:  # no cache yet: the package filters the cache it expects to exist
            import pandas as pd

            judge.df_annotations = pd.DataFrame(columns=[*judge.all_keys, judge.annotation_key])
        for single in judge.annotators.values():
            single.completions_kwargs.update(
                model_name=model, num_procs=concurrency, client_config_path=str(client_config),
                client_kwargs={"max_retries": max_retries, "timeout": timeout_s},
            )
        saved = os.environ.get("OPENAI_API_KEY")
        os.environ["OPENAI_API_KEY"] = key
        try:
            yield judge
        finally:
            if saved is None:
                os.environ.pop("OPENAI_API_KEY", None)
            else:
                os.environ["OPENAI_API_KEY"] = saved
