# Figures and tables of the HTML report (`snakemake --report`): small data extracted from the
# artifacts (curvature spectra, zeros per layer, benchmarks), then one plot per question.


# Spectra of a few layers' A and G factors; a consumer of every curvature file, so a shot's
# temp() curvature under scratch/ is deleted only once its spectra are out.
rule curvature_spectra:
    input:
        "results/{model}/dense/curvature.h5",
    output:
        "results/{model}/dense/spectra.json",
    log:
        "logs/{model}/dense/curvature_spectra.log",
    benchmark:
        "benchmarks/{model}/dense/curvature_spectra.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("data"),
    shell:
        "surgeon spectra --curvature {input} --out {output} 2>&1 | tee {log}"


rule shot_curvature_spectra:
    input:
        curvature_of_shot,
    output:
        "results/{model}/{experiment}/spectra/shot-{shot}.json",
    log:
        "logs/{model}/{experiment}/curvature_spectra.shot-{shot}.log",
    benchmark:
        "benchmarks/{model}/{experiment}/curvature_spectra.shot-{shot}.tsv"
    wildcard_constraints:
        shot=r"[2-9]|[1-9]\d+",
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("data"),
    shell:
        "surgeon spectra --curvature {input} --out {output} 2>&1 | tee {log}"


# Zeros per decoder Linear of an experiment's final shot (recovery keeps the mask).
rule layer_sparsity:
    input:
        model=final_model,
    output:
        "results/{model}/{experiment}/layer_sparsity.tsv",
    log:
        "logs/{model}/{experiment}/layer_sparsity.log",
    benchmark:
        "benchmarks/{model}/{experiment}/layer_sparsity.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("evaluate"),
    shell:
        "surgeon layer-sparsity --model {input.model} --out {output} 2>&1 | tee {log}"


rule plot_perplexity:
    input:
        eval_files(),
    output:
        report(
            f"{REPORT}/perplexity_vs_sparsity.png",
            caption="../report/perplexity_vs_sparsity.rst",
            category="Comparison",
            subcategory="Perplexity",
        ),
    log:
        f"{REPORT_LOGS}/plot_perplexity.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/plot_perplexity.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    shell:
        "surgeon plot-perplexity --evals {input} --out {output} 2>&1 | tee {log}"


rule plot_shots:
    input:
        eval_files(),
    output:
        report(
            f"{REPORT}/perplexity_vs_shots.png",
            caption="../report/perplexity_vs_shots.rst",
            category="Comparison",
            subcategory="Perplexity",
        ),
    log:
        f"{REPORT_LOGS}/plot_shots.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/plot_shots.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    shell:
        "surgeon plot-shots --evals {input} --out {output} 2>&1 | tee {log}"


rule plot_layer_sparsity:
    input:
        layer_sparsity_files(),
    output:
        report(
            f"{REPORT}/layer_sparsity.png",
            caption="../report/layer_sparsity.rst",
            category="Where weights were removed",
        ),
    log:
        f"{REPORT_LOGS}/plot_layer_sparsity.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/plot_layer_sparsity.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    shell:
        "surgeon plot-layer-sparsity --tables {input} --out {output} 2>&1 | tee {log}"


rule plot_spectra:
    input:
        spectra_files(),
    output:
        report(
            f"{REPORT}/curvature_spectra.png",
            caption="../report/curvature_spectra.rst",
            category="Curvature",
        ),
    log:
        f"{REPORT_LOGS}/plot_spectra.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/plot_spectra.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    shell:
        "surgeon plot-spectra --spectra {input} --out {output} 2>&1 | tee {log}"


# The comparison table as a page the report shows inline (it offers a CSV only as a download).
rule summary_table:
    input:
        f"{REPORT}/summary.csv",
    output:
        report(
            f"{REPORT}/summary.html",
            caption="../report/summary_table.rst",
            category="Comparison",
            subcategory="Table",
        ),
    log:
        f"{REPORT_LOGS}/summary_table.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/summary_table.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    params:
        title="Every evaluated model",
    shell:
        "surgeon html-table --csv {input} --title {params.title:q} --out {output}"
        " 2>&1 | tee {log}"


# Benchmark files are written after their job ends: this rule takes every other target of the
# run as input, so all of them exist, then reads this model's and this config's folders.
# Its own benchmark and those of the two rules after it live one folder down (not read).
rule gather_benchmarks:
    input:
        benchmarked_outputs(),
    output:
        report(
            f"{REPORT}/benchmarks.csv",
            caption="../report/benchmarks_table.rst",
            category="Compute",
            subcategory="Table",
        ),
    log:
        f"{REPORT_LOGS}/gather_benchmarks.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/after/gather_benchmarks.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    params:
        dirs=benchmark_dirs(),
        files=rules.report.benchmark,
    shell:
        "surgeon gather-benchmarks --root benchmarks --dirs {params.dirs}"
        " --files {params.files} --out {output} 2>&1 | tee {log}"


use rule summary_table as benchmarks_table with:
    input:
        f"{REPORT}/benchmarks.csv",
    output:
        report(
            f"{REPORT}/benchmarks.html",
            caption="../report/benchmarks_table.rst",
            category="Compute",
            subcategory="Table",
        ),
    log:
        f"{REPORT_LOGS}/benchmarks_table.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/after/benchmarks_table.tsv"
    params:
        title="Wall time and peak memory of every job (Snakemake benchmarks)",


rule plot_benchmarks:
    input:
        f"{REPORT}/benchmarks.csv",
    output:
        report(
            f"{REPORT}/benchmarks.png",
            caption="../report/benchmarks.rst",
            category="Compute",
            subcategory="Per rule",
        ),
    log:
        f"{REPORT_LOGS}/plot_benchmarks.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/after/plot_benchmarks.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    shell:
        "surgeon plot-benchmarks --csv {input} --out {output} 2>&1 | tee {log}"


rule plot_recovery:
    input:
        recovery_losses(),
    output:
        report(
            f"{REPORT}/recovery_loss.png",
            caption="../report/recovery_loss.rst",
            category="Recovery",
        ),
    log:
        f"{REPORT_LOGS}/plot_recovery.log",
    benchmark:
        f"{REPORT_BENCHMARKS}/plot_recovery.tsv"
    conda:
        "../../envs/surgeon.yaml"
    resources:
        mem_mb=memory("report"),
    shell:
        "surgeon plot-losses --losses {input} --out {output} 2>&1 | tee {log}"
