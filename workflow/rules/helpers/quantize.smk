# Helpers of the rules in rules/quantize.smk (input functions and params).


def quantization_setting(key):
    return lambda wildcards: config["quantization"][wildcards.quant][key]


def scale_search(spec):
    """A quantization's scale search: as set, else on for GPTQ (which reads A anyway)."""
    return spec.get("scale_search", spec["method"] == "gptq")


def scale_search_option(wildcards):
    return (
        "--scale-search"
        if scale_search(config["quantization"][wildcards.quant])
        else ""
    )


def quantization_curvature(wildcards):
    """GPTQ and the scale search read the A factor of the model they quantize (estimated by
    the curvature rule)."""
    spec = config["quantization"][wildcards.quant]
    if spec["method"] != "gptq" and not scale_search(spec):
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
