rule eval:
    input:
        unpack(eval_inputs),
    output:
        manifest=update("results/eval/{key}/manifest.json"),
    log:
        "logs/eval/{key}.log",
    benchmark:
        "benchmarks/eval/{key}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: RES.eval.threads
    resources:
        mem_mb=RES.eval.mem_mb,
        runtime=RES.eval.runtime,
        gpu=RES.eval.gpus,
    script:
        "../workflow/scripts/eval.py"
