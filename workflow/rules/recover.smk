# LoRA recovery of an experiment's final model (masked, merged) and its loss curve.


rule recovery_windows:
    input:
        model="results/{model}/dense/model",
    output:
        "results/{model}/data/recovery.safetensors",
    log:
        "logs/{model}/recovery_windows.log",
    benchmark:
        "benchmarks/{model}/recovery_windows.tsv"
    conda:
        "../../envs/surgeon.yaml"
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
    output:
        model=directory("results/{model}/{experiment}/recovered/model"),
        loss="results/{model}/{experiment}/recovered/loss.tsv",
    log:
        "logs/{model}/{experiment}/recover.log",
    benchmark:
        "benchmarks/{model}/{experiment}/recover.tsv"
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    params:
        # outside `output`: Snakemake keeps it when the job fails, so a rerun resumes from it
        checkpoint="results/{model}/{experiment}/recovered/checkpoint.pt",
        targets=recovery_targets(),
        r=config["recovery"],
        device=config["device"],
    shell:
        "surgeon --threads {threads} recover --model {input.model} --windows {input.windows}"
        " --rank {params.r[rank]} --alpha {params.r[alpha]} --targets {params.targets}"
        " --steps {params.r[steps]} --lr {params.r[lr]} --batch-size {params.r[batch_size]}"
        " --grad-accum {params.r[grad_accum]} --seed {params.r[seed]}"
        " --checkpoint {params.checkpoint} --checkpoint-every {params.r[checkpoint_every]}"
        " --device {params.device} --loss-out {output.loss} --out {output.model}"
        " 2>&1 | tee {log}"


rule plot_recovery:
    input:
        recovery_losses(),
    output:
        "results/report/recovery_loss.png",
    log:
        "logs/plot_recovery.log",
    conda:
        "../../envs/surgeon.yaml"
    shell:
        "surgeon plot-losses --losses {input} --out {output} 2>&1 | tee {log}"
