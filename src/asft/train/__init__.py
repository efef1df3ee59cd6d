"""The training side: base model, data, tokenisation, loss modes, the shared trainer and the LoRA merge."""
