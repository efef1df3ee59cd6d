"""The `merge` stage: fold LoRA adapters into the base weights (peft `merge_and_unload`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from asft.core.job import StageJob

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def merge_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path, *, dtype: str = "fp32") -> dict[str, Any]:
    """Load base + adapter, merge, and save safetensors with the tokenizer into out_dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=DTYPES[dtype])
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base_dir
                                  ).save_pretrained(out_dir)
    return {"parameters": sum(p.numel() for p in merged.parameters()), "dtype": dtype}


def run_merge_stage(job: StageJob) -> dict[str, Any]:
    """The `merge` stage's runner (asft.workflow.stages): the run's adapter onto its base model."""
    torch.set_num_threads(job.threads)
    return merge_adapter(job.weights("train"), job.parents["model"], job.out, dtype=job.settings.dtype)
