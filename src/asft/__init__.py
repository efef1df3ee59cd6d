"""Anchored Supervised Fine-Tuning (ASFT): a content-addressed reference workflow.

The packages show the architecture; imports go one way, top to bottom:

- `asft.ops`: what a user runs beside Snakemake (`asft plan | status | verify | schema`);
- `asft.workflow`: configuration, the stage table, content keys, the plan and artifact folders. It
  never imports torch, so parsing the Snakefile stays fast;
- `asft.train` and `asft.eval`: the stages' runners (model, data, tokenize, train, merge; eval and
  the results table), each handed its typed settings; eval uses train's prompt formats and loss;
- `asft.embedded`: the tiny model and tasks of the default run.

Stable names: `asft.losses.compute_loss`, `asft.chunked_loss.chunked_loss`, `asft.grading.is_correct`.
"""

__version__ = "0.1.0"
