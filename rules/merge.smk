rule merge:
    input:
        unpack(merge_inputs),
    output:
        manifest=update("results/merge/{key}/manifest.json"),
    log:
        "logs/merge/{key}.log",
    benchmark:
        "benchmarks/merge/{key}.tsv"
    conda:
        "../envs/train.yaml"
    threads: RES.merge.threads
    resources:
        mem_mb=RES.merge.mem_mb,
        runtime=RES.merge.runtime,
    params:
        job=job_words("merge"),
    message:
        "{params.job} ({threads} threads, {resources.mem_mb} MB, {resources.runtime} min)"
    script:
        "../workflow/scripts/merge.py"
