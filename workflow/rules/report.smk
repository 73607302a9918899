# Comparison table of every evaluated model.


rule report:
    input:
        evals=eval_files(),
        zeroshot=zeroshot_files(),
        figures=report_figures(),
    output:
        csv=report(
            f"{REPORT}/summary.csv",
            caption="../report/summary_csv.rst",
            category="Comparison",
            subcategory="Table",
        ),
        md=f"{REPORT}/summary.md",
    log:
        f"{REPORT_LOGS}/report.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/report.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    shell:
        "surgeon report --evals {input.evals} --figures {input.figures}"
        " --zeroshot {input.zeroshot} --csv {output.csv} --md {output.md} 2>&1 | tee {log}"
