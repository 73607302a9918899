# Helpers of the rules in rules/prune.smk (input functions and params).


def is_sequential(exp):
    return exp["method"] in SEQUENTIAL_METHODS and exp["sequential"]


def sequential_flag(wildcards):
    return "--sequential" if is_sequential(experiment(wildcards.experiment)) else ""


def prune_inputs(wildcards):
    exp = experiment(wildcards.experiment)
    inputs = {"model": previous_model(wildcards)}
    if exp["method"] in CURVATURE_METHODS and not is_sequential(exp):
        inputs["curvature"] = curvature_of_shot(wildcards)
        # its wall time is added to the compression time recorded by prune
        inputs["curvature_manifest"] = inputs["curvature"] + ".manifest.json"
    # structured shots probe which coupled structures their removals kill (one window)
    if (
        exp["method"] in CALIBRATION_METHODS
        or exp["lora_steps"] > 0
        or is_sequential(exp)
        or exp["structure"] == "structured"
    ):
        inputs["calibration"] = (
            f"results/{wildcards.model}/data/calibration.safetensors"
        )
    return inputs


def optional_inputs(wildcards, input):
    """--curvature / --calibration for the inputs this shot has."""
    return " ".join(
        f"--{k} {input[k]}" for k in ("curvature", "calibration") if k in input.keys()
    )
