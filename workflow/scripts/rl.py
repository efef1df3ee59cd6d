"""Snakemake entry point of the `rl` stage: resolve the job's node, run it, log to the rule's log."""

from asft.workflow.jobs import run_from_snakemake

run_from_snakemake(snakemake)  # noqa: F821  (injected by Snakemake)
