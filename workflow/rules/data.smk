# Model import and calibration/evaluation windows.


rule import_model:
    input:
        source=source_files(config["model"]["source"]),
    output:
        directory("results/{model}/dense/model"),
    log:
        "logs/{model}/import_model.log",
    benchmark:
        "benchmarks/{model}/import_model.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=import_memory,
    params:
        source=config["model"]["source"],
    shell:
        "surgeon --threads {threads} import-model --source {params.source:q} --out {output} 2>&1 | tee {log}"


rule calibrate:
    input:
        model="results/{model}/dense/model",
        source=source_files(config["data"]["source"]),
    output:
        calibration="results/{model}/data/calibration.safetensors",
        evaluation="results/{model}/data/evaluation.safetensors",
    log:
        "logs/{model}/calibrate.log",
    benchmark:
        "benchmarks/{model}/calibrate.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=memory("data"),
    params:
        source=config["data"]["source"],
        seqlen=config["data"]["seqlen"],
        windows=config["data"]["calibration_windows"],
        fraction=config["data"]["evaluation_fraction"],
        max_eval=config["data"]["max_eval_windows"],
        seed=config["data"]["seed"],
    shell:
        "surgeon --threads {threads} calibrate --model {input.model} --source {params.source:q}"
        " --seqlen {params.seqlen} --windows {params.windows}"
        " --evaluation-fraction {params.fraction} --max-eval-windows {params.max_eval}"
        " --seed {params.seed} --calibration-out {output.calibration}"
        " --evaluation-out {output.evaluation} 2>&1 | tee {log}"


# Windows of a text of another kind (data.ood_source), scored as ppl_ood by every evaluation.
rule ood_windows:
    input:
        model="results/{model}/dense/model",
        source=source_files(config["data"]["ood_source"]),
    output:
        "results/{model}/data/ood.safetensors",
    log:
        "logs/{model}/ood_windows.log",
    benchmark:
        "benchmarks/{model}/ood_windows.tsv"
    conda:
        "../../envs/surgeon.yaml"
    threads: 1
    resources:
        mem_mb=memory("data"),
    params:
        source=config["data"]["ood_source"],
        seqlen=config["data"]["seqlen"],
        windows=config["data"]["ood_windows"],
        seed=config["data"]["seed"],
    shell:
        "surgeon ood-windows --model {input.model} --source {params.source:q}"
        " --seqlen {params.seqlen} --windows {params.windows} --seed {params.seed}"
        " --out {output} 2>&1 | tee {log}"
