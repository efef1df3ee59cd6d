"""Generation backends: `hf` (batched `generate`, left padding; CPU or GPU) and `vllm` (GPU).

Both take the same prompts and sampling settings and return, per prompt, a list of n
completions, cut at the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


#: The vLLM release this workflow is tested against. It pins torch 2.14.0 and transformers < 5.21, so it
#: cannot share the training environment: envs/eval.yaml is its environment (a test keeps them equal).
VLLM_REQUIREMENT = "vllm==0.33.0"


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    seed: int = 0


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Truncate at the earliest stop string (the harness drops the stop string itself)."""
    cut = len(text)
    for marker in stop:
        index = text.find(marker)
        if 0 <= index < cut:
            cut = index
    return text[:cut]


def generate_hf(
    model_dir: Path, prompts: Sequence[str], sampling: Sampling, *, batch_size: int = 64, progress: bool = True
) -> list[list[str]]:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    greedy = sampling.temperature == 0
    options = {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": not greedy,
        "num_return_sequences": sampling.n,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if not greedy:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    torch.manual_seed(sampling.seed)
    outputs: list[list[str]] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generate", disable=not progress):
        chunk = list(prompts[start : start + batch_size])
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            generated = model.generate(**encoded, **options)
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i in range(len(chunk)):
            outputs.append([cut_at_stop(t, sampling.stop) for t in texts[i * sampling.n : (i + 1) * sampling.n]])
    return outputs


def generate_vllm(
    model_dir: Path, prompts: Sequence[str], sampling: Sampling, *, tensor_parallel: int = 1
) -> list[list[str]]:
    """vLLM generation (GPU only); the harness's settings: n samples, temperature, top_p, stop."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise RuntimeError("eval.backend 'vllm' needs vLLM and a GPU: run with --software-deployment-method conda "
                           f"(envs/eval.yaml) or install {VLLM_REQUIREMENT} in its own environment") from error
    llm = LLM(model=str(model_dir), tensor_parallel_size=tensor_parallel, seed=sampling.seed, trust_remote_code=False)
    params = SamplingParams(
        n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
        max_tokens=sampling.max_new_tokens, stop=list(sampling.stop), seed=sampling.seed,
    )
    results = llm.generate(list(prompts), params)
    return [[cut_at_stop(o.text, sampling.stop) for o in r.outputs] for r in results]


def generate(model_dir: Path, prompts: Sequence[str], sampling: Sampling, *, backend: str = "hf",
             batch_size: int = 64, tensor_parallel: int = 1, progress: bool = True) -> list[list[str]]:
    if backend == "vllm":
        return generate_vllm(model_dir, prompts, sampling, tensor_parallel=tensor_parallel)
    if backend == "hf":
        return generate_hf(model_dir, prompts, sampling, batch_size=batch_size, progress=progress)
    raise ValueError(f"unknown eval backend '{backend}'; known: hf, vllm")
