# Zero-shot accuracy (lm-eval) of the dense model and of each experiment's final, recovered,
# compacted or quantized model, on the project's task files and the cloze task built from the
# evaluation text; lm-eval's standard tasks where their data sets can be reached.


rule build_cloze_task:
    input:
        source=source_files(config["data"]["source"]),
    output:
        directory("results/{model}/data/cloze"),
    log:
        "logs/{model}/build_cloze_task.log",
    benchmark:
        "benchmarks/{model}/build_cloze_task.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("data"),
    params:
        source=config["data"]["source"],
        fraction=config["data"]["evaluation_fraction"],
        seed=config["data"]["seed"],
        passages=config["zeroshot"]["cloze"]["items"],
        min_word=config["zeroshot"]["cloze"]["min_word_length"],
        min_context=config["zeroshot"]["cloze"]["min_context_words"],
        max_context=config["zeroshot"]["cloze"]["max_context_words"],
    shell:
        "surgeon cloze-task --source {params.source:q} --evaluation-fraction {params.fraction}"
        " --seed {params.seed} --items {params.passages} --min-word-length {params.min_word}"
        " --min-context-words {params.min_context} --max-context-words {params.max_context}"
        " --out {output} 2>&1 | tee {log}"


rule zeroshot:
    input:
        model=evaluated_model,
        tasks=zeroshot_task_inputs,
    output:
        "results/{model}/{experiment}/zeroshot/{stage}.json",
    log:
        "logs/{model}/{experiment}/zeroshot.{stage}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/zeroshot.{stage}.tsv"
    wildcard_constraints:
        stage=r"dense|shot-\d+|recovered|compact|quantized-[A-Za-z0-9._-]+",
    conda:
        "../../envs/surgeon.yaml"
    threads: half_cores
    resources:
        mem_mb=memory("zeroshot"),
    params:
        tasks=",".join(config["zeroshot"]["tasks"]),
        include=zeroshot_include,
        limit=config["zeroshot"]["limit"],
        batch_size=config["zeroshot"]["batch_size"],
        device=config["device"],
    shell:
        "surgeon --threads {threads} zeroshot --model {input.model} --tasks {params.tasks:q}"
        " --include {params.include} --limit {params.limit} --batch-size {params.batch_size}"
        " --device {params.device} --out {output} --model-name {wildcards.model}"
        " --experiment {wildcards.experiment} --stage {wildcards.stage} 2>&1 | tee {log}"
