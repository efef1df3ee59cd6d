"""Anchored Supervised Fine-Tuning (ASFT): a content-addressed reference workflow.

The library behind the Snakemake workflow: configuration, content keys, data, losses,
trainer, LoRA merge, generation, grading and the results table.
"""

__version__ = "0.1.0"
