# Structured models made physically smaller: zeroed units removed, same function.


rule compact:
    input:
        model=final_or_recovered_model,
        evaluation="results/{model}/data/evaluation.safetensors",
    output:
        directory("results/{model}/{experiment}/compact/model"),
    log:
        "logs/{model}/{experiment}/compact.log",
    benchmark:
        "benchmarks/{model}/{experiment}/compact.tsv"
    conda:
        "../../envs/surgeon.yaml"
    threads: half_cores
    resources:
        mem_mb=memory("compact"),
    shell:
        "surgeon --threads {threads} compact --model {input.model}"
        " --check-windows {input.evaluation} --out {output} 2>&1 | tee {log}"
