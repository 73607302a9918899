# K-FAC curvature of every decoder Linear, estimated on the model of the previous shot.


rule estimate_curvature:
    input:
        model=previous_model,
        calibration="results/{model}/data/calibration.safetensors",
    output:
        "results/{model}/{experiment}/shot-{shot}/curvature.h5",
    log:
        "logs/{model}/{experiment}/estimate_curvature.shot-{shot}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/estimate_curvature.shot-{shot}.tsv"
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    params:
        # running sums live outside `output` so a retried job resumes instead of restarting
        checkpoint="results/{model}/{experiment}/shot-{shot}/curvature.ckpt",
        fisher=config["curvature"]["fisher"],
        batch_size=config["curvature"]["batch_size"],
        every=config["curvature"]["checkpoint_every"],
        seed=config["data"]["seed"],
        device=config["device"],
    shell:
        "surgeon --threads {threads} curvature --model {input.model} --calibration {input.calibration}"
        " --out {output} --fisher {params.fisher} --batch-size {params.batch_size}"
        " --checkpoint {params.checkpoint} --checkpoint-every {params.every}"
        " --seed {params.seed} --device {params.device} 2>&1 | tee {log}"
