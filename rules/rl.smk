rule rl:
    input:
        unpack(rl_inputs),
    output:
        manifest=update("results/rl/{key}/manifest.json"),
        curves=report(
            update("results/rl/{key}/curves.png"),
            caption="../report/rl_curves.rst",
            category="RL rewards",
            labels=rl_labels,
        ),
    log:
        "logs/rl/{key}.log",
    benchmark:
        "benchmarks/rl/{key}.tsv"
    conda:
        "../envs/train.yaml"
    threads: RES.rl.threads
    resources:
        mem_mb=RES.rl.mem_mb,
        runtime=RES.rl.runtime,
        gpu=RES.rl.gpus,
    params:
        job=job_words("rl"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min, {resources.gpu} GPU)"
    script:
        "../workflow/scripts/rl.py"
