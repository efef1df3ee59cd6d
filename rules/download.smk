rule download_model:
    output:
        manifest=update("results/model/{key}/manifest.json"),
    log:
        "logs/model/{key}.log",
    benchmark:
        "benchmarks/model/{key}.tsv"
    conda:
        "../envs/train.yaml"
    threads: RES.download.threads
    resources:
        mem_mb=RES.download.mem_mb,
        runtime=RES.download.runtime,
        gpu=RES.download.gpus,
    params:
        job=job_words("model"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min, {resources.gpu} GPU)"
    script:
        "../workflow/scripts/download_model.py"


rule download_data:
    output:
        manifest=update("results/data/{key}/manifest.json"),
    log:
        "logs/data/{key}.log",
    benchmark:
        "benchmarks/data/{key}.tsv"
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=RES.download.mem_mb,
        runtime=RES.download.runtime,
    params:
        job=job_words("data"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min)"
    script:
        "../workflow/scripts/download_data.py"
