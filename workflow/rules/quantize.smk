# Quantization (RTN, GPTQ) of an experiment's final model; GPTQ reads the A factor of that model.


rule quantize:
    input:
        model=final_or_recovered_model,
        curvature=quantization_curvature,
    output:
        directory("results/{model}/{experiment}/quantized/{quant}/model"),
    log:
        "logs/{model}/{experiment}/quantize.{quant}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/quantize.{quant}.tsv"
    wildcard_constraints:
        quant=PTQ_NAMES,
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=memory("quantize"),
    params:
        curvature=curvature_option,
        method=quantization_setting("method"),
        bits=quantization_setting("bits"),
        group_size=quantization_setting("group_size"),
        asymmetric=lambda wildcards: (
            ""
            if config["quantization"][wildcards.quant]["symmetric"]
            else "--asymmetric"
        ),
        damp=quantization_setting("damp"),
        shrink=quantization_setting("shrink"),
        scale_search=scale_search_option,
        gguf_type=lambda wildcards: (
            f"--gguf-type {config['quantization'][wildcards.quant]['gguf_type']}"
            if "gguf_type" in config["quantization"][wildcards.quant]
            else ""
        ),
        device=config["device"],
    shell:
        "surgeon --threads {threads} quantize --model {input.model} --method {params.method}"
        " {params.curvature} --bits {params.bits} --group-size {params.group_size}"
        " {params.asymmetric} {params.gguf_type} --damp {params.damp} --shrink {params.shrink}"
        " {params.scale_search}"
        " --device {params.device}"
        " --out {output} 2>&1 | tee {log}"


# Quantization-aware LoRA on a quantized model (entries with qat_from), re-quantized on its grid.
rule qat:
    input:
        model=qat_source,
        windows="results/{model}/data/recovery.safetensors",
        teacher=qat_teacher,
    output:
        model=directory("results/{model}/{experiment}/quantized/{quant}/model"),
        loss="results/{model}/{experiment}/quantized/{quant}/loss.tsv",
    log:
        "logs/{model}/{experiment}/qat.{quant}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/qat.{quant}.tsv"
    wildcard_constraints:
        quant=QAT_NAMES,
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/surgeon.yaml"
    threads: workflow.cores
    resources:
        mem_mb=memory("recover"),
    params:
        checkpoint="results/{model}/{experiment}/quantized/{quant}/checkpoint.pt",
        lora=lambda wildcards: lora_options(
            config["quantization"][wildcards.quant]["objective"]
        ),
        teacher=teacher_option,
        device=config["device"],
    shell:
        "surgeon --threads {threads} qat --model {input.model} --windows {input.windows}"
        " {params.lora} {params.teacher} --checkpoint {params.checkpoint}"
        " --device {params.device} --loss-out {output.loss} --out {output.model}"
        " 2>&1 | tee {log}"


# The curvature of the model being quantized (GPTQ's H is its A factor): the curvature rule,
# pointed at the final (or recovered) model.
use rule estimate_curvature as estimate_quantization_curvature with:
    input:
        model=final_or_recovered_model,
        calibration="results/{model}/data/calibration.safetensors",
    output:
        h5="results/{model}/{experiment}/quantized/curvature.h5",
        manifest="results/{model}/{experiment}/quantized/curvature.h5.manifest.json",
    log:
        "logs/{model}/{experiment}/estimate_quantization_curvature.log",
    benchmark:
        "benchmarks/{model}/{experiment}/estimate_quantization_curvature.tsv"


# llama.cpp file of a quantization on llama.cpp's blocks (gguf_type, or the Q4_0/Q5_0/Q8_0 grid).
rule export_gguf:
    input:
        "results/{model}/{experiment}/quantized/{quant}/model",
    output:
        gguf="results/{model}/{experiment}/quantized/{quant}/model.gguf",
        manifest="results/{model}/{experiment}/quantized/{quant}/model.gguf.manifest.json",
    log:
        "logs/{model}/{experiment}/export_gguf.{quant}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/export_gguf.{quant}.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("export"),
    shell:
        "surgeon export-gguf --model {input} --out {output.gguf} 2>&1 | tee {log}"


# Hugging Face folder in compressed-tensors' pack-quantized format (what vLLM loads).
rule export_compressed_tensors:
    input:
        "results/{model}/{experiment}/quantized/{quant}/model",
    output:
        directory("results/{model}/{experiment}/quantized/{quant}/compressed-tensors"),
    log:
        "logs/{model}/{experiment}/export_compressed_tensors.{quant}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/export_compressed_tensors.{quant}.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("export"),
    params:
        structure=setting("structure"),
    shell:
        "surgeon export-compressed-tensors --model {input} --structure {params.structure:q}"
        " --out {output} 2>&1 | tee {log}"
