rule train:
    input:
        unpack(train_inputs),
    output:
        manifest=update("results/train/{key}/manifest.json"),
        curves=report(
            update("results/train/{key}/curves.png"),
            caption="../report/curves.rst",
            category="Training curves",
            labels=train_labels,
        ),
    log:
        "logs/train/{key}.log",
    benchmark:
        "benchmarks/train/{key}.tsv"
    conda:
        "../envs/train.yaml"
    threads: RES.train.threads
    resources:
        mem_mb=RES.train.mem_mb,
        runtime=RES.train.runtime,
        gpu=RES.train.gpus,
    params:
        job=job_words("train"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min, {resources.gpu} GPU)"
    script:
        "../workflow/scripts/train.py"
