"""Checks of the report part of a finished tiny workflow run (called from test_workflow.py, whose
module fixture runs the workflow once for all its tests)."""

import csv
import json
import re
from pathlib import Path

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("perplexity_vs_sparsity", "layer_sparsity", "curvature_spectra", "recovery_loss",
           "benchmarks")


def report_results(html: str) -> tuple[dict, dict]:
    """The `results` and `categories` JSON a Snakemake HTML report embeds."""
    found = {}
    for name in ("results", "categories"):
        m = re.search(rf"var {name} = (\{{.*?\}});\s*</script>", html, re.S)
        assert m, f"no {name} in the report"
        found[name] = json.loads(m.group(1))
    return found["results"], found["categories"]


def check_report_run(run: Path, report_call) -> None:
    out = run / "results/report"
    for name in FIGURES:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000, name
    for name in FIGURES[:4]:  # the summary.md shows the figures made before it
        assert f"![{name}]({name}.png)" in (out / "summary.md").read_text()
    res = run / "results/tiny"
    # spectra of the dense curvature and of shots 2 (a temp file under scratch/, now deleted)
    # and 3: first and last block, q_proj and down_proj, every eigenvalue of A and G
    dense = json.loads((res / "dense/spectra.json").read_text())
    assert [(l["block"], l["kind"]) for l in dense["layers"]] == [
        (0, "attention"), (0, "MLP"), (1, "attention"), (1, "MLP")]
    down = dense["layers"][1]
    assert down["name"].endswith("mlp.down_proj") and (len(down["A"]), len(down["G"])) == (64, 32)
    assert down["A"] == sorted(down["A"], reverse=True)
    for shot in (2, 3):
        assert (res / f"surgeon/spectra/shot-{shot}.json").is_file()
    assert not (res / "surgeon/scratch/shot-2/curvature.h5").exists()
    assert not (res / "magnitude/spectra").exists()  # magnitude reads no curvature
    # zeros per Linear add up to the evaluation's count of the same model
    for name in ("surgeon", "magnitude", "wanda-24", "structured-lora"):
        rows = list(csv.DictReader(open(res / name / "layer_sparsity.tsv"), delimiter="\t"))
        final = "shot-3" if name == "surgeon" else "shot-1"
        e = json.loads((res / name / f"eval/{final}.json").read_text())
        assert sum(int(r["zeros"]) for r in rows) == e["decoder_zeros"], name
        assert sum(int(r["params"]) for r in rows) == e["decoder_params"], name
    # one benchmark row per job of the run, the gatherer itself and later rules excluded
    bench = list(csv.DictReader(open(out / "benchmarks.csv")))
    jobs = {(b["rule"], b["job"]) for b in bench}
    for shot in (1, 2, 3):
        assert ("prune_shot", f"tiny/surgeon/shot-{shot}") in jobs
    assert {("estimate_curvature", "tiny/dense"), ("report", "report"),
            ("layer_sparsity", "tiny/wanda-24"), ("plot_spectra", "report"),
            ("curvature_spectra", "tiny/surgeon/shot-2")} <= jobs
    assert not {b["rule"] for b in bench} & {"gather_benchmarks", "plot_benchmarks",
                                              "benchmarks_table"}
    assert all(float(b["wall_s"]) > 0 for b in bench)
    # the comparison page shows every column of summary.csv (zero-shot accuracy included when
    # it was measured) and every experiment
    table = (out / "summary.html").read_text()
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    for name in header + ["surgeon", "magnitude", "wanda-24", "structured-lora"]:
        assert f">{name}<" in table, name
    # the HTML report: every figure and table, with its caption and category
    assert report_call.returncode == 0, report_call.stderr[-3000:]
    html = (out / "report.html").read_text()
    results, categories = report_results(html)
    names = {Path(k).name for k in results}
    assert {f"{n}.png" for n in FIGURES} | {"summary.csv", "summary.html", "benchmarks.csv",
                                            "benchmarks.html"} <= names
    assert all(r["caption"].strip() for r in results.values())
    assert {"Comparison", "Where weights were removed", "Curvature", "Recovery",
            "Compute"} <= set(categories)
    assert "Compression of <tt" in html  # the workflow description (workflow.rst)
