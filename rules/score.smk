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
    params:
        job=job_words("score"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min)"
    script:
        "../workflow/scripts/score.py"
