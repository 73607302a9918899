# LoRA recovery of an experiment's final model (masked, merged) and its loss curve.


rule recovery_windows:
    input:
        model="results/{model}/dense/model",
        source=source_files(recovery_source()),
    output:
        "results/{model}/data/recovery.safetensors",
    log:
        "logs/{model}/recovery_windows.log",
    benchmark:
        "benchmarks/{model}/recovery_windows.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("data"),
    params:
        source=recovery_source(),
        seqlen=config["data"]["seqlen"],
        windows=config["recovery"]["windows"],
        fraction=config["data"]["evaluation_fraction"],
        seed=config["recovery"]["seed"],
    shell:
        "surgeon windows --model {input.model} --source {params.source:q}"
        " --seqlen {params.seqlen} --windows {params.windows}"
        " --evaluation-fraction {params.fraction} --seed {params.seed}"
        " --setting recovery.windows --out {output} 2>&1 | tee {log}"


rule recover:
    input:
        model=final_model,
        windows="results/{model}/data/recovery.safetensors",
        teacher=recovery_teacher,
    output:
        model=directory("results/{model}/{experiment}/recovered/model"),
        loss="results/{model}/{experiment}/recovered/loss.tsv",
    log:
        "logs/{model}/{experiment}/recover.log",
    benchmark:
        "benchmarks/{model}/{experiment}/recover.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=memory("recover"),
    params:
        # outside `output`: Snakemake keeps it when the job fails, so a rerun resumes from it
        checkpoint="results/{model}/{experiment}/recovered/checkpoint.pt",
        lora=lambda wildcards: lora_options(
            experiment(wildcards.experiment)["recover_objective"]
        ),
        teacher=teacher_option,
        device=config["device"],
    shell:
        "surgeon --threads {threads} recover --model {input.model} --windows {input.windows}"
        " {params.lora} {params.teacher} --checkpoint {params.checkpoint}"
        " --device {params.device} --loss-out {output.loss} --out {output.model}"
        " 2>&1 | tee {log}"


# The dense model's top-k next-token logits on the recovery windows, computed once for every
# experiment (and quantization-aware run) that distils from it.
rule teacher_logits:
    input:
        model="results/{model}/dense/model",
        windows="results/{model}/data/recovery.safetensors",
    output:
        TEACHER,
    log:
        "logs/{model}/teacher_logits.log",
    benchmark:
        "benchmarks/{model}/teacher_logits.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=memory("evaluate"),
    params:
        top_k=config["recovery"]["kd_top_k"],
        device=config["device"],
    shell:
        "surgeon --threads {threads} teacher-logits --model {input.model}"
        " --windows {input.windows} --top-k {params.top_k} --device {params.device}"
        " --out {output} 2>&1 | tee {log}"
