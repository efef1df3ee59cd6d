"""Generation backends: `hf` (batched `generate`, left padding; CPU or GPU) and `vllm` (GPU).

Both take the same prompts and sampling settings and return, per prompt, a list of n
completions, cut at the first stop string. For multiple-choice scoring (`choice_logprobs`) both
also give the top log-probabilities of the first generated token (`next_token_top`): hf from one
batched forward pass, vLLM from `SamplingParams(max_tokens=1, logprobs=10)` as upstream's medeval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    torch.manual_seed(sampling.seed)
    return generate_with(model, tokenizer, prompts, sampling, batch_size=batch_size, progress=progress,
                         what=f"generation with {model_dir}")


def generate_with(model: Any, tokenizer: Any, prompts: Sequence[str], sampling: Sampling, *, batch_size: int = 64,
                  progress: bool = True, what: str = "generation") -> list[list[str]]:
    """`generate_hf` on a model already in memory (in eval mode, on its device): batched, left padding.
    Sampling draws from torch's global generator as it stands (generate_hf seeds it first)."""
    from tqdm.auto import tqdm

    from asft.train.models import require_pad_token_id

    device = next(model.parameters()).device
    pad_id = require_pad_token_id(tokenizer, what)
    greedy = sampling.temperature == 0
    options = {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": not greedy,
        "num_return_sequences": sampling.n,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if not greedy:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs: list[list[str]] = []
    try:
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
    finally:
        tokenizer.padding_side = side
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


# --- the first generated token's top log-probabilities (multiple-choice scoring) ----------------

#: Upstream medeval asks vLLM for the 10 most likely first tokens (SamplingParams(logprobs=10)).
TOP_LOGPROBS = 10


@dataclass(frozen=True)
class NextToken:
    """The first generated position of one prompt: its top tokens (id, decoded text, log-probability),
    most likely first, and the greedy token as generated text (special tokens skipped, as vLLM does)."""

    top: tuple[tuple[int, str, float], ...]
    completion: str


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token ids into a batch: input_ids and attention mask."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


@torch.no_grad()
def last_token_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits [batch, vocab] after each row's last real token, with left or right padding.

    Position ids count real tokens only (as `generate` does), so a padded row sees the positions it
    would see alone. Left padding puts every row's last token in the last column, and only that
    column's logits are computed (`logits_to_keep=1`: no [batch, length, vocab] tensor).
    """
    if not bool(attention_mask.sum(-1).gt(0).all()):
        raise ValueError("a prompt of the batch has no tokens")
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions}
    if bool(attention_mask[:, -1].all()):
        return model(**inputs, logits_to_keep=1).logits[:, -1]
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask * columns).argmax(-1)  # the last real token of each (right-padded) row
    return model(**inputs).logits[torch.arange(len(last), device=last.device), last]


def next_token_top_hf(model_dir: Path, prompts: Sequence[str], *, top_k: int = TOP_LOGPROBS, batch_size: int = 64,
                      progress: bool = True) -> list[NextToken]:
    """Top-k next-token log-probabilities after each prompt: one forward pass per batch, no generation.

    Prompts are tokenized with special tokens (a Llama tokenizer adds BOS), as vLLM tokenizes them;
    prompts of similar length share a batch.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    return next_token_top_with(model, tokenizer, prompts, top_k=top_k, batch_size=batch_size, progress=progress,
                               what=f"multiple-choice scoring with {model_dir}")


def next_token_top_with(model: Any, tokenizer: Any, prompts: Sequence[str], *, top_k: int = TOP_LOGPROBS,
                        batch_size: int = 64, progress: bool = True,
                        what: str = "multiple-choice scoring") -> list[NextToken]:
    """`next_token_top_hf` on a model already in memory (in eval mode, on its device)."""
    from tqdm.auto import tqdm

    from asft.train.models import require_pad_token_id

    device = next(model.parameters()).device
    pad_id = require_pad_token_id(tokenizer, what)
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: dict[int, NextToken] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="score", disable=not progress):
        rows = order[start : start + batch_size]
        ids, mask = pad_left([encoded[i] for i in rows], pad_id)
        logits = last_token_logits(model, ids.to(device), mask.to(device)).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
        greedy = logits.argmax(dim=-1)
        for row, index in enumerate(rows):
            token_ids = top.indices[row].tolist()
            values = top.values[row].tolist()
            results[index] = NextToken(
                top=tuple((t, tokenizer.decode([t]), v) for t, v in zip(token_ids, values)),
                completion=tokenizer.decode([int(greedy[row])], skip_special_tokens=True),
            )
    return [results[i] for i in range(len(prompts))]


def next_token_top_vllm(model_dir: Path, prompts: Sequence[str], *, top_k: int = TOP_LOGPROBS,
                        tensor_parallel: int = 1, seed: int = 0) -> list[NextToken]:
    """Upstream medeval's call: greedy, one new token, its top-k log-probabilities (vLLM adds BOS itself).

    Token ids are decoded with the model's tokenizer, as upstream decodes them.
    """
    from transformers import AutoTokenizer

    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise RuntimeError("eval.backend 'vllm' needs vLLM and a GPU: run with --software-deployment-method conda "
                           f"(envs/eval.yaml) or install {VLLM_REQUIREMENT} in its own environment") from error
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = LLM(model=str(model_dir), tensor_parallel_size=tensor_parallel, seed=seed, trust_remote_code=False)
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=top_k)
    tokens = []
    for result in llm.generate(list(prompts), params):
        output = result.outputs[0]
        first = output.logprobs[0] if output.logprobs else {}
        ranked = sorted(first.items(), key=lambda item: -_logprob(item[1]))
        tokens.append(NextToken(
            top=tuple((int(t), tokenizer.decode([int(t)]), _logprob(lp)) for t, lp in ranked),
            completion=output.text,
        ))
    return tokens


def _logprob(entry: Any) -> float:
    """vLLM gives Logprob objects (`.logprob`); a plain number is accepted too."""
    return float(getattr(entry, "logprob", entry))


def next_token_top(model_dir: Path, prompts: Sequence[str], *, backend: str = "hf", batch_size: int = 64,
                   tensor_parallel: int = 1, seed: int = 0, progress: bool = True) -> list[NextToken]:
    if backend == "vllm":
        return next_token_top_vllm(model_dir, prompts, tensor_parallel=tensor_parallel, seed=seed)
    if backend == "hf":
        return next_token_top_hf(model_dir, prompts, batch_size=batch_size, progress=progress)
    raise ValueError(f"unknown eval backend '{backend}'; known: hf, vllm")
