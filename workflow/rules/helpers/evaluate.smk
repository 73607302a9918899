# Helpers of the rules in rules/evaluate.smk (input functions and params).


def ood_windows_file(wildcards):
    """Out-of-domain windows every evaluation also scores (none when data.ood_source is "")."""
    if not config["data"]["ood_source"]:
        return []
    return f"results/{wildcards.model}/data/ood.safetensors"


def evaluated_model(wildcards):
    if wildcards.stage == "dense":
        return f"results/{wildcards.model}/dense/model"
    if wildcards.stage in ("recovered", "compact"):
        return (
            f"results/{wildcards.model}/{wildcards.experiment}/{wildcards.stage}/model"
        )
    if wildcards.stage.startswith("quantized-"):
        quant = wildcards.stage.removeprefix("quantized-")
        return (
            f"results/{wildcards.model}/{wildcards.experiment}/quantized/{quant}/model"
        )
    return shot_path(wildcards, wildcards.stage.removeprefix("shot-"), "model")


def eval_labels(wildcards):
    """The experiment and stage names recorded beside the measurements (what was done to the
    model, evaluate reads from the manifests of the model folder)."""
    return f"--experiment {wildcards.experiment} --stage {wildcards.stage}"


def measures_speed(wildcards):
    return wildcards.stage in ("dense", "compact")


def evaluate_threads(wildcards):
    """Every core where tokens/s is measured (alone, on the same cores), half elsewhere."""
    return workflow.cores if measures_speed(wildcards) else half_cores()


def speed_options(wildcards):
    """Generation speed is measured for the dense model and the compacted ones."""
    if not measures_speed(wildcards):
        return ""
    speed = config["speed"]
    return (
        f"--speed-prompt-tokens {speed['prompt_tokens']} "
        f"--speed-new-tokens {speed['new_tokens']}"
    )


def evaluated_exports(wildcards):
    """A quantized model's exported files, whose sizes its evaluation records."""
    if not wildcards.stage.startswith("quantized-"):
        return []
    quant = wildcards.stage.removeprefix("quantized-")
    return quantization_exports(wildcards.experiment, quant, wildcards.model)


def llama_cpp_option(wildcards, input):
    """Score the .gguf export in llama.cpp too (config llama_cpp_scoring)."""
    gguf = [f for f in input.exports if f.endswith(".gguf")]
    return "--llama-cpp" if config["llama_cpp_scoring"] and gguf else ""
