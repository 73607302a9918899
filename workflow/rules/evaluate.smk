# Perplexity, sparsity and size of the dense model and of every evaluated shot.


rule evaluate:
    input:
        model=evaluated_model,
        evaluation="results/{model}/data/evaluation.safetensors",
        ood=ood_windows_file,
        exports=evaluated_exports,
    output:
        "results/{model}/{experiment}/eval/{stage}.json",
    log:
        "logs/{model}/{experiment}/evaluate.{stage}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/evaluate.{stage}.tsv"
    wildcard_constraints:
        stage=r"dense|shot-\d+|recovered|compact|quantized-[A-Za-z0-9._-]+",
    conda:
        "../../envs/surgeon.yaml"
    threads: evaluate_threads
    resources:
        mem_mb=memory("evaluate"),
    params:
        labels=eval_labels,
        ood=lambda wildcards, input: f"--ood {input.ood}" if input.ood else "",
        speed=speed_options,
        llama_cpp=llama_cpp_option,
        device=config["device"],
    shell:
        "surgeon --threads {threads} evaluate --model {input.model} --evaluation {input.evaluation}"
        " {params.ood} --out {output} --model-name {wildcards.model} {params.labels} {params.speed}"
        " --exports {input.exports} {params.llama_cpp} --device {params.device} 2>&1 | tee {log}"
