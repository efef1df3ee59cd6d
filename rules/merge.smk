rule merge:
    input:
        unpack(merge_inputs),
    output:
        manifest="results/merge/{key}/manifest.json",
    log:
        "logs/merge/{key}.log",
    benchmark:
        "benchmarks/merge/{key}.tsv"
    threads: RES.merge.threads
    resources:
        mem_mb=RES.merge.mem_mb,
        runtime=RES.merge.runtime,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/merge.py"
