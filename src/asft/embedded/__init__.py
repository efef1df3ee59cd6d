"""The embedded default: a tiny Qwen2 base model and three arithmetic tasks, built in code.

A CPU-sized stand-in for the paper's setup: a ~526K parameter Qwen2 pre-trained on add/sub (and a
little mul) with single-operation chain of thought and ``\\boxed{}`` answers; fine-tuning on mul then
shows forgetting of add/sub, which ASFT's KL anchor reduces. Nothing here downloads anything.

- `spec`: what determines the base model (no torch);
- `tasks`: the generated problems and their fixed train/test splits (no torch);
- `tokenizer`: the Qwen2-style byte-level tokenizer, built in code;
- `pretrain`: the pre-training run of the model stage.
"""
