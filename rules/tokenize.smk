rule tokenize:
    input:
        unpack(tokenize_inputs),
    output:
        manifest=update("results/tokenize/{key}/manifest.json"),
    log:
        "logs/tokenize/{key}.log",
    benchmark:
        "benchmarks/tokenize/{key}.tsv"
    conda:
        "../envs/train.yaml"
    threads: RES.tokenize.threads
    resources:
        mem_mb=RES.tokenize.mem_mb,
        runtime=RES.tokenize.runtime,
    params:
        job=job_words("tokenize"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min)"
    script:
        "../workflow/scripts/tokenize.py"
