rule tokenize:
    input:
        unpack(tokenize_inputs),
    output:
        manifest="results/tokenize/{key}/manifest.json",
    log:
        "logs/tokenize/{key}.log",
    benchmark:
        "benchmarks/tokenize/{key}.tsv"
    threads: RES.tokenize.threads
    resources:
        mem_mb=RES.tokenize.mem_mb,
        runtime=RES.tokenize.runtime,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/tokenize.py"
