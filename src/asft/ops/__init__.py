"""What a user runs beside Snakemake: `asft plan`, `asft status`, `asft verify`, `asft schema`."""
