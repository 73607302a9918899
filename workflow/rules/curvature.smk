# K-FAC curvature of every decoder Linear, estimated on the model of the previous shot.
# Shot 1 of every experiment reads the dense model's curvature, estimated once.


rule estimate_curvature:
    input:
        model=previous_model,
        calibration="results/{model}/data/calibration.safetensors",
    output:
        h5="results/{model}/{experiment}/shot-{shot}/curvature.h5",
        manifest="results/{model}/{experiment}/shot-{shot}/curvature.h5.manifest.json",
    log:
        "logs/{model}/{experiment}/estimate_curvature.shot-{shot}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/estimate_curvature.shot-{shot}.tsv"
    wildcard_constraints:
        shot=r"[2-9]|[1-9]\d+",
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=memory("curvature"),
    params:
        # running sums live outside `output` so a retried job resumes instead of restarting
        checkpoint=lambda wildcards, output: output[0].removesuffix(".h5") + ".ckpt",
        fisher=config["curvature"]["fisher"],
        batch_size=config["curvature"]["batch_size"],
        every=config["curvature"]["checkpoint_every"],
        factor_memory=config["curvature"]["factor_memory_gb"],
        seed=config["data"]["seed"],
        device=config["device"],
    shell:
        "surgeon --threads {threads} curvature --model {input.model} --calibration {input.calibration}"
        " --out {output.h5} --fisher {params.fisher} --batch-size {params.batch_size}"
        " --checkpoint {params.checkpoint} --checkpoint-every {params.every}"
        " --factor-memory {params.factor_memory}"
        " --seed {params.seed} --device {params.device} 2>&1 | tee {log}"


use rule estimate_curvature as estimate_dense_curvature with:
    input:
        model="results/{model}/dense/model",
        calibration="results/{model}/data/calibration.safetensors",
    output:
        h5="results/{model}/dense/curvature.h5",
        manifest="results/{model}/dense/curvature.h5.manifest.json",
    log:
        "logs/{model}/dense/estimate_curvature.log",
    benchmark:
        "benchmarks/{model}/dense/estimate_curvature.tsv"


# Curvature of a shot that is not kept: deleted once its prune has read it.
use rule estimate_curvature as estimate_scratch_curvature with:
    output:
        h5=temp("results/{model}/{experiment}/scratch/shot-{shot}/curvature.h5"),
        manifest=temp(
            "results/{model}/{experiment}/scratch/shot-{shot}/curvature.h5.manifest.json"
        ),
