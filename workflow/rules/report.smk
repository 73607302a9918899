# Comparison table of every evaluated model.


rule report:
    input:
        evals=eval_files(),
        figures=report_figures(),
    output:
        csv="results/report/summary.csv",
        md="results/report/summary.md",
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../../envs/surgeon.yaml"
    shell:
        "surgeon report --evals {input.evals} --figures {input.figures}"
        " --csv {output.csv} --md {output.md} 2>&1 | tee {log}"
