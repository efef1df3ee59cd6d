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
    script:
        "../workflow/scripts/tokenize.py"
