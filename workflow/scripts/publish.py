"""Snakemake entry point of the `publish` rule: copy the keyed table to results/ under fixed names."""

from asft.workflow.jobs import publish_from_snakemake

publish_from_snakemake(snakemake)  # noqa: F821  (injected by Snakemake)
