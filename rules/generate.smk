rule generate:
    input:
        unpack(generate_inputs),
    output:
        manifest=update("results/generate/{key}/manifest.json"),
    log:
        "logs/generate/{key}.log",
    benchmark:
        "benchmarks/generate/{key}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: RES.eval.threads
    resources:
        mem_mb=RES.eval.mem_mb,
        runtime=RES.eval.runtime,
        gpu=RES.eval.gpus,
    params:
        job=job_words("generate"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min, {resources.gpu} GPU)"
    script:
        "../workflow/scripts/generate.py"
