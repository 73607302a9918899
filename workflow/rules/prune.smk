# One pruning shot; shots chain through previous_model().


rule prune_shot:
    input:
        unpack(prune_inputs),
    output:
        directory("results/{model}/{experiment}/shot-{shot}/model"),
    log:
        "logs/{model}/{experiment}/prune_shot.shot-{shot}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/prune_shot.shot-{shot}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=memory("prune"),
    params:
        method=setting("method"),
        structure=setting("structure"),
        target=setting("target"),
        shots=setting("shots"),
        damping_g=setting("damping_g"),
        damping_a=setting("damping_a"),
        device=config["device"],
        optional=optional_inputs,
        sequential=sequential_flag,
        nm_schedule=setting("nm_schedule"),
        units=setting("units"),
        coupled_cost=setting("coupled_cost"),
        lora_steps=setting("lora_steps"),
        lora_rank=setting("lora_rank"),
        lora_lr=setting("lora_lr"),
        lora_windows=setting("lora_windows"),
        seed=config["data"]["seed"],
    shell:
        "surgeon --threads {threads} prune --model {input.model} --method {params.method}"
        " --structure {params.structure} --target {params.target}"
        " --shots {params.shots} --shot {wildcards.shot} {params.optional} {params.sequential}"
        " --damping-g {params.damping_g} --damping-a {params.damping_a}"
        " --nm-schedule {params.nm_schedule} --units {params.units}"
        " --coupled-cost {params.coupled_cost} --device {params.device}"
        " --lora-steps {params.lora_steps} --lora-rank {params.lora_rank}"
        " --lora-lr {params.lora_lr} --lora-windows {params.lora_windows} --seed {params.seed}"
        " --out {output} 2>&1 | tee {log}"


# A shot that is not in keep_shots: same job, written under scratch/ and deleted by Snakemake
# once the next shot (and its evaluation, if any) have read it.
use rule prune_shot as prune_scratch_shot with:
    output:
        temp(directory("results/{model}/{experiment}/scratch/shot-{shot}/model")),
