"""Training step time and peak memory per loss mode, through the real trainer (asft.train.trainer.train_run).

Each mode trains the same model on the same data in a fresh subprocess (1 torch thread), so peak
resident memory (ru_maxrss) is per mode; the printed ratios (mode / sft) are measured in this one run.
Default: the embedded default's model and fine-tuning setting (hidden 128, LoRA r=8 on all linear
modules, batch 32); `--hidden 512 --layers 4 --vocab 151936` gives a head-dominated, Qwen-vocabulary
variant. The goal of the trainer: asft/sft step time <= 1.45 (one extra no-grad forward is ~1.33) and
asft/sft peak memory <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from asft.train.settings import LoraSettings, TrainRuntime, TrainSettings
from asft.train.trainer import train_run
args = json.loads(sys.argv[1])
settings = TrainSettings.for_mode(
    args["mode"], kl_weight=0.05, kl_direction="ref_policy", hparams={}, seed=0, method="lora",
    lora=LoraSettings(r=8, alpha=16, dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    max_steps=args["steps"], global_batch_size=args["batch"], per_device_batch_size=args["batch"], lr=4e-3,
    lr_scheduler="cosine", warmup_steps=0, precision="fp32",
)
runtime = TrainRuntime(implementation=args["impl"], chunk_size=256, save_steps=10**6, logging_steps=10**6)
out = Path(args["out"])
stats = train_run(settings, runtime, model_dir=Path(args["model"]), dataset_dir=Path(args["dataset"]),
                  out_dir=out, checkpoint_dir=out / "ckpt", progress=False)
print(json.dumps({"seconds": stats["train_runtime_s"], "steps": stats["steps"],
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_inputs(tmp: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    import torch

    from asft.train.data import build_dataset, tokenize_dataset
    from asft.train.settings import EmbeddedData, TokenizeSettings
    from asft.embedded.pretrain import init_model
    from asft.embedded.spec import EmbeddedBaseSpec
    from asft.embedded.tokenizer import build_tokenizer

    model_dir, data_dir, tok_dir = tmp / "model", tmp / "data", tmp / "tok"
    for folder in (model_dir, data_dir, tok_dir):
        folder.mkdir()
    tokenizer = build_tokenizer()
    spec = EmbeddedBaseSpec(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=4 * args.hidden)
    model = init_model(spec, tokenizer)
    if args.vocab != len(tokenizer):
        model.resize_token_embeddings(args.vocab)  # Qwen-size head, same tokens
    torch.manual_seed(0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    build_dataset(EmbeddedData(task="mul", split_seed=0), data_dir)
    tokenize_dataset(TokenizeSettings(template="plain", max_length=64), data_dir, model_dir, tok_dir)
    return model_dir, tok_dir / "dataset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=260)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--modes", default="sft,dft,sft+kl,asft")
    parser.add_argument("--impl", default="chunked", choices=["chunked", "full"])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, dataset = build_inputs(Path(tmp), args)
        for mode in args.modes.split(","):
            out = Path(tmp) / f"out-{mode}"
            out.mkdir()
            payload = json.dumps({"mode": mode, "impl": args.impl, "steps": args.steps, "batch": args.batch,
                                  "model": str(model_dir), "dataset": str(dataset), "out": str(out)})
            done = subprocess.run([sys.executable, "-c", WORKER, payload], capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}, batch {args.batch}, "
          f"{args.steps} steps, LoRA r=8 on all linear modules, {args.impl} loss, 1 thread")
    print(f"{'mode':<8} {'s/step':>8} {'peak MiB':>9}")
    for mode, r in results.items():
        print(f"{mode:<8} {r['seconds'] / r['steps']:>8.4f} {r['peak_mib']:>9.0f}")
    base = results.get("sft")
    if base:
        for mode, r in results.items():
            if mode != "sft":
                print(f"{mode}/sft: step time {r['seconds'] / base['seconds']:.2f}, "
                      f"peak memory {r['peak_mib'] / base['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
