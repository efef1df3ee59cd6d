localrules:
    aggregate,
    publish,


# The table is content-keyed like every other artifact (results/tables/<key>/, the key covers which
# evaluations it aggregates and how), so a changed configuration always rebuilds it; the aggregate also
# `publish` refreshes the fixed-name copies (results/table.csv, ...) that users open.
rule aggregate:
    input:
        scores=score_manifests,
        train=train_manifests,
    output:
        html=report(f"results/tables/{TABLE_KEY}/table.html", caption="../report/table_html.rst", category="Results"),
        csv=report(f"results/tables/{TABLE_KEY}/table.csv", caption="../report/table_csv.rst", category="Results"),
        md=f"results/tables/{TABLE_KEY}/table.md",
        tex=f"results/tables/{TABLE_KEY}/table.tex",
        runs=f"results/tables/{TABLE_KEY}/runs.csv",
        png=report(f"results/tables/{TABLE_KEY}/table.png", caption="../report/table.rst", category="Results"),
        pdf=f"results/tables/{TABLE_KEY}/table.pdf",
        curves=report(f"results/tables/{TABLE_KEY}/curves.png", caption="../report/all_curves.rst", category="Results"),
        curves_pdf=f"results/tables/{TABLE_KEY}/curves.pdf",
        # the paper's figures, always written (a placeholder saying why where one does not apply)
        sweep=report(f"results/tables/{TABLE_KEY}/sweep.png", caption="../report/sweep.rst", category="Results"),
        sweep_pdf=f"results/tables/{TABLE_KEY}/sweep.pdf",
        dynamics=report(
            f"results/tables/{TABLE_KEY}/dynamics.png", caption="../report/dynamics.rst", category="Results"
        ),
        dynamics_pdf=f"results/tables/{TABLE_KEY}/dynamics.pdf",
        models=report(f"results/tables/{TABLE_KEY}/models.png", caption="../report/models.rst", category="Results"),
        models_pdf=f"results/tables/{TABLE_KEY}/models.pdf",
        config=report(
            f"results/tables/{TABLE_KEY}/config.yaml", caption="../report/config.rst", category="Configuration"
        ),
        cost=report(f"results/tables/{TABLE_KEY}/cost.csv", caption="../report/cost.rst", category="Results"),
        plan=f"results/tables/{TABLE_KEY}/plan.json",
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    conda:
        "../envs/light.yaml"
    params:
        rows=PLAN.eval_rows(),
        train_rows=PLAN.train_rows(),
        benchmarks=CFG.eval.benchmarks,
        target=CFG.table.target,
        retention=CFG.table.retention,
        modes=table_modes(CFG),
        title=f"ASFT results: {CFG.name}",
        config=CFG.model_dump(mode="json"),
        labels={"target": CFG.table.target_label, "retention": CFG.table.retention_label},
        published=CFG.table.published,
    message:
        f"build the results table of {CFG.name} ({len(PLAN.eval_rows())} scores, {len(PLAN.train_rows())} training runs)"
    script:
        "../workflow/scripts/aggregate.py"


rule publish:
    input:
        **{name: f"results/tables/{TABLE_KEY}/{name}" for name in PUBLISHED},
    output:
        **{name: f"results/{name}" for name in PUBLISHED},
    log:
        "logs/publish.log",
    benchmark:
        "benchmarks/publish.tsv"
    conda:
        "../envs/light.yaml"
    message:
        "publish the table to results/ and index its runs in results/runs/"
    script:
        "../workflow/scripts/publish.py"
