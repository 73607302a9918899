"""Report figures and tables: plots from small synthetic inputs, curvature spectra against
brute-force eigenvalues, zeros per layer against direct counts, real Snakemake benchmark TSVs."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from surgeon import benchmarks, plots
from surgeon.cli import main
from surgeon.stages.figures import spectra_source
from surgeon.curvature_store import write_curvature
from surgeon.html_table import csv_to_html
from surgeon.layer_sparsity import fraction_by, layer_zeros, read_tsv
from surgeon.models import decoder_linears
from surgeon.spectra import chosen_layers, curvature_spectra

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def evals() -> list[dict]:
    rows = [{"experiment": "dense", "method": "none", "structure": "none", "shot": 0,
             "stage": "dense", "sparsity": 0.0, "ppl": 10.0}]
    for name, method, structure, ppls in [("surgeon", "llm-surgeon", "unstructured", [12, 15]),
                                          ("mag", "magnitude", "unstructured", [300]),
                                          ("mag-24", "magnitude", "2:4", [900]),
                                          ("kobd", "k-obd", "structured", [40, 80])]:
        for k, ppl in enumerate(ppls, 1):
            rows.append({"experiment": name, "method": method, "structure": structure,
                         "shot": k, "stage": f"shot-{k}", "sparsity": 0.5 * k / len(ppls),
                         "ppl": ppl})
    rows.append({**rows[-1], "stage": "compact", "ppl": 81.0})  # not a shot: left out
    return rows


def test_shot_curves_keep_dense_and_shots_only():
    dense, curves = plots.shot_curves(evals())
    assert dense["ppl"] == 10.0
    assert set(curves) == {"surgeon", "mag", "mag-24", "kobd"}
    assert curves["kobd"]["points"] == [(1, 0.25, 40.0), (2, 0.5, 80.0)]


def test_plots_write_png_files(tmp_path):
    dense, curves = plots.shot_curves(evals())
    plots.plot_perplexity(dense, curves, tmp_path / "ppl.png")
    rows = [{"block": b, "kind": k, "params": 100, "zeros": 10 * b + (k == "MLP") * 20}
            for b in range(4) for k in ("attention", "MLP")]
    plots.plot_layer_sparsity({"a": rows, "b": rows, "c": rows, "d": rows}, tmp_path / "ls.png")
    layer = {"name": "model.layers.0.mlp.down_proj", "block": 0, "kind": "MLP",
             "A": [4.0, 2.0, 0.0], "G": [1.0, 0.5]}
    sources = [{"experiment": "dense", "shot": 1, "layers": [layer]},
               {"experiment": "x", "shot": 2, "layers": [{**layer, "A": [3.0, 1.0, 1e-3]}]}]
    plots.plot_spectra(sources, tmp_path / "spectra.png")
    bench = [{"rule": "prune_shot", "wall_s": "12.5", "max_rss_mb": "900"},
             {"rule": "evaluate", "wall_s": "3", "max_rss_mb": ""}]
    plots.plot_benchmarks(bench, tmp_path / "bench.png")
    for name in ("ppl", "ls", "spectra", "bench"):
        assert is_png(tmp_path / f"{name}.png"), name


def test_shot_count_series_takes_each_experiments_final_model(tmp_path):
    rows = [{"experiment": "dense", "method": "none", "structure": "none", "target": 0,
             "shot": 0, "shots": 0, "stage": "dense", "ppl": 10.0, "ppl_ood": 20.0}]
    for shots, ppl in [(1, 14.0), (4, 13.0), (2, 13.5)]:
        for k in range(1, shots + 1):  # intermediate shots are not final models
            rows.append({"experiment": f"s{shots}", "method": "llm-surgeon",
                         "structure": "unstructured", "target": 0.5, "shot": k, "shots": shots,
                         "stage": f"shot-{k}", "ppl": ppl + (shots - k), "ppl_ood": 2 * ppl})
    rows.append({**rows[-1], "stage": "recovered", "ppl": 11.0})  # not a pruned shot
    series = plots.shot_count_series(rows)
    assert series == {("llm-surgeon", "unstructured", 0.5): [(1, 14.0, 28.0), (2, 13.5, 27.0),
                                                             (4, 13.0, 26.0)]}
    plots.plot_shots(series, tmp_path / "shots.png")
    plots.plot_shots({}, tmp_path / "empty.png")
    assert is_png(tmp_path / "shots.png") and is_png(tmp_path / "empty.png")


def test_plots_accept_empty_inputs(tmp_path):
    plots.plot_perplexity(None, {}, tmp_path / "a.png")
    plots.plot_layer_sparsity({}, tmp_path / "b.png")
    plots.plot_benchmarks([], tmp_path / "c.png")
    assert all(is_png(tmp_path / f"{n}.png") for n in "abc")


def test_chosen_layers_first_middle_last_attention_and_mlp():
    names = [f"model.layers.{b}.{m}" for b in range(30)
             for m in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj")]
    chosen = chosen_layers(sorted(names))  # h5py lists groups by name: 10 before 2
    assert [(b, k) for b, k, _ in chosen] == [(0, "attention"), (0, "MLP"), (15, "attention"),
                                               (15, "MLP"), (29, "attention"), (29, "MLP")]
    assert {n.rsplit(".", 1)[1] for _, _, n in chosen} == {"q_proj", "down_proj"}
    opt = ["model.decoder.layers.0.self_attn.v_proj", "model.decoder.layers.0.fc2",
           "model.decoder.layers.0.fc1"]
    assert [n for _, _, n in chosen_layers(opt)] == [opt[0], opt[1]]
    gpt2 = [f"transformer.h.0.{m}" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                             "mlp.c_proj")]
    assert [n for _, _, n in chosen_layers(gpt2)] == [gpt2[0], gpt2[3]]


def spd(n: int, eig: torch.Tensor, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return (q * eig) @ q.T


def test_spectra_equal_brute_force_eigenvalues(tmp_path):
    """A curvature file made from factors with known eigenvalues: the extracted spectra are those
    eigenvalues (largest first) and numpy's eigenvalues of the stored float32 matrices."""
    known = {}
    factors, layer_meta = {}, {}
    for b in range(3):
        for module, (c, r) in {"self_attn.q_proj": (6, 6), "mlp.down_proj": (9, 6)}.items():
            name = f"model.layers.{b}.{module}"
            eig_a = torch.linspace(0.1, 5.0, c, dtype=torch.float64) * (b + 1)
            eig_g = torch.logspace(-6, 0, r, dtype=torch.float64)
            known[name] = (eig_a, eig_g)
            factors[name] = (spd(c, eig_a, b).float(), spd(r, eig_g, b + 10).float())
            layer_meta[name] = {"weight_shape": [r, c], "tokens": 7}
    path = tmp_path / "curvature.h5"
    write_curvature(path, factors, {"fisher": "empirical"}, layer_meta)
    out = curvature_spectra(path)
    assert [l["block"] for l in out["layers"]] == [0, 0, 1, 1, 2, 2]
    for layer in out["layers"]:
        eig_a, eig_g = known[layer["name"]]
        A, G = factors[layer["name"]]
        for got, want, stored in ((layer["A"], eig_a, A), (layer["G"], eig_g, G)):
            brute = np.sort(np.linalg.eigvalsh(stored.double().numpy()))[::-1]
            np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(got, want.flip(0).numpy(), rtol=1e-4, atol=1e-6)
    # the CLI writes the same numbers as JSON
    assert main(["spectra", "--curvature", str(path), "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["layers"] == out["layers"]


def test_spectra_source_from_path():
    assert spectra_source("results/m/dense/spectra.json") == ("dense", 1)
    assert spectra_source("results/m/exp-1/spectra/shot-12.json") == ("exp-1", 12)


def test_layer_zeros_equal_direct_counts(tiny_model_dir, tmp_path):
    """Zero some weights and a bias, save, run the CLI: every count is the number of zeros of
    that Linear's weight (and bias) counted directly, and the fractions weigh them by size."""
    from surgeon.models import load_model

    model = load_model(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, layer in enumerate(decoder_linears(model).values()):
            layer.weight[torch.rand(layer.weight.shape, generator=gen) < 0.1 * (i % 7)] = 0
            if layer.bias is not None:
                layer.bias[: i % 3] = 0
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "zeros.tsv"
    assert main(["layer-sparsity", "--model", str(tmp_path / "m"), "--out", str(out)]) == 0
    rows = read_tsv(out)
    assert [r["layer"] for r in rows] == list(decoder_linears(model))
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))  # the tensors on disk
    for r in rows:
        tensors = [stored[k] for k in (r["layer"] + ".weight", r["layer"] + ".bias") if k in stored]
        assert r["zeros"] == sum(int(np.count_nonzero(x.numpy() == 0)) for x in tensors)
        assert r["params"] == sum(x.numel() for x in tensors)
    assert {r["block"] for r in rows} == {0, 1}
    assert {r["kind"] for r in rows} == {"attention", "MLP"}
    frac = fraction_by(rows, "block")
    for b in (0, 1):
        mine = [r for r in rows if r["block"] == b]
        assert frac[(b,)] == sum(r["zeros"] for r in mine) / sum(r["params"] for r in mine)
    assert layer_zeros(model) == rows  # the same counts from the model in memory


def snakemake_benchmarks(tmp_path: Path) -> Path:
    """Run a two-rule Snakefile with benchmark directives: the TSVs Snakemake itself writes."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "out/x.txt", "out/y.txt"\n\n'
        'rule make:\n    output: "out/{name}.txt"\n'
        '    benchmark: "benchmarks/tiny/exp/make.{name}.tsv"\n'
        '    shell: "sleep 0.2 && echo {wildcards.name} > {output}"\n')
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--directory",
                        str(tmp_path), "--snakefile", str(tmp_path / "Snakefile")],
                       capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp_path / "benchmarks"


def test_gather_reads_real_snakemake_benchmarks(tmp_path):
    root = snakemake_benchmarks(tmp_path)
    (root / "tiny" / "stale").mkdir()
    (root / "tiny" / "stale" / "make.z.tsv").write_text((root / "tiny/exp/make.x.tsv").read_text())
    out = tmp_path / "benchmarks.csv"
    assert main(["gather-benchmarks", "--root", str(root), "--dirs", str(root / "tiny" / "exp"),
                 str(root / "missing"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(r["rule"], r["job"]) for r in rows] == [("make", "tiny/exp/x"), ("make", "tiny/exp/y")]
    for r in rows:
        assert float(r["wall_s"]) > 0
        assert r["max_rss_mb"] == "" or float(r["max_rss_mb"]) > 0
    stats = benchmarks.per_rule(rows)
    assert stats["make"]["jobs"] == 2
    assert abs(stats["make"]["wall_s"] - sum(float(r["wall_s"]) for r in rows)) < 1e-9
    assert main(["plot-benchmarks", "--csv", str(out), "--out", str(tmp_path / "b.png")]) == 0
    assert is_png(tmp_path / "b.png")


def test_benchmark_na_values_and_job_names(tmp_path):
    path = tmp_path / "b" / "m" / "dense" / "estimate_curvature.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load"
                    "\tcpu_time\n0.5\t0:00:00\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    row = benchmarks.gather([path], tmp_path / "b")[0]
    assert (row["rule"], row["job"], row["wall_s"], row["max_rss_mb"]) == \
        ("estimate_curvature", "m/dense", 0.5, "")
    # Snakemake's sampler missed a job this short: 0.00 MB is "not measured", not a peak
    path.write_text("s\th:m:s\tmax_rss\tcpu_time\n0.2\t0:00:00\t0.00\t0.1\n")
    assert benchmarks.gather([path], tmp_path / "b")[0]["max_rss_mb"] == ""
    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(Exception, match="not a Snakemake benchmark"):
        benchmarks.read_benchmark(tmp_path / "bad.tsv")


def test_html_table_escapes_and_keeps_every_cell():
    page = csv_to_html("experiment,ppl,zeroshot_avg\n<dense>,10.5,0.41\nx,12,\n", "T & t")
    assert "<title>T &amp; t</title>" in page and "&lt;dense&gt;" in page
    assert page.count("<tr>") == 3 and '<td class="num">10.5</td>' in page
    assert "<th>zeroshot_avg</th>" in page
