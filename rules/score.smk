rule score:
    input:
        unpack(score_inputs),
    output:
        manifest=update("results/score/{key}/manifest.json"),
    log:
        "logs/score/{key}.log",
    benchmark:
        "benchmarks/score/{key}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: RES.score.threads
    resources:
        mem_mb=RES.score.mem_mb,
        runtime=RES.score.runtime,
    script:
        "../workflow/scripts/score.py"
