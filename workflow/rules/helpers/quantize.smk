# Helpers of the rules in rules/quantize.smk (input functions and params).


def quantization_setting(key):
    return lambda wildcards: config["quantization"][wildcards.quant][key]


def quantization_curvature(wildcards):
    """GPTQ reads the A factor of the model it quantizes (estimated by the curvature rule)."""
    if config["quantization"][wildcards.quant]["method"] != "gptq":
        return []
    return f"results/{wildcards.model}/{wildcards.experiment}/quantized/curvature.h5"


def curvature_option(wildcards, input):
    return f"--curvature {input.curvature}" if input.curvature else ""


def qat_teacher(wildcards):
    if config["quantization"][wildcards.quant]["objective"] == "lm":
        return []
    return TEACHER.format(model=wildcards.model)


def qat_source(wildcards):
    base = config["quantization"][wildcards.quant]["qat_from"]
    return f"results/{wildcards.model}/{wildcards.experiment}/quantized/{base}/model"
