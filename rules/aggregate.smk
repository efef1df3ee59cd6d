localrules:
    aggregate,


rule aggregate:
    input:
        eval_manifests,
    output:
        csv=report("results/table.csv", caption="../report/table.rst", category="Results"),
        md="results/table.md",
        tex="results/table.tex",
        runs="results/runs.csv",
        png=report("results/table.png", caption="../report/table.rst", category="Results"),
        config=report("results/config.yaml", caption="../report/config.rst", category="Configuration"),
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
        config=CFG.model_dump(mode="json"),
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/aggregate.py"
