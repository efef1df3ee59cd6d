"""Snakemake entry point of the `aggregate` stage: the results table, chart and per-run rows."""

from asft.workflow.jobs import run_aggregate_from_snakemake

run_aggregate_from_snakemake(snakemake)  # noqa: F821  (injected by Snakemake)
