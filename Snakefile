# Reproducible LLM compression: import -> calibrate -> curvature -> prune (shots) -> recover -> compact / quantize -> evaluate -> report.
# Run:  snakemake --cores 2 --configfile config/config.yaml   (see README.md)


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/curvature.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/recover.smk"
include: "workflow/rules/compact.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"


# `snakemake --report report.html`: captions in workflow/report/
report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        final_outputs(),
