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
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    params:
        method=setting("method"),
        structure=setting("structure"),
        target=setting("target"),
        shots=setting("shots"),
        damping_g=setting("damping_g"),
        damping_a=setting("damping_a"),
        group_elements=setting("group_elements"),
        device=config["device"],
        curvature=lambda wildcards, input: (
            f"--curvature {input.curvature}" if "curvature" in input.keys() else ""
        ),
    shell:
        "surgeon --threads {threads} prune --model {input.model} --method {params.method}"
        " --structure {params.structure} --target {params.target}"
        " --shots {params.shots} --shot {wildcards.shot} {params.curvature}"
        " --damping-g {params.damping_g} --damping-a {params.damping_a}"
        " --group-elements {params.group_elements} --device {params.device}"
        " --out {output} 2>&1 | tee {log}"
