localrules:
    aggregate,


rule aggregate:
    input:
        eval_manifests,
    output:
        csv="results/table.csv",
        md="results/table.md",
        tex="results/table.tex",
        runs="results/runs.csv",
        png=report("results/table.png", caption="../report/table.rst", category="Results"),
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    params:
        rows=PLAN.eval_rows(),
        benchmarks=CFG.eval.benchmarks,
        target=CFG.table.target,
        retention=CFG.table.retention,
        modes=CFG.modes,
        title=f"ASFT results: {CFG.name}",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/aggregate.py"
