"""End to end: the Snakemake workflow on a tiny model (2 shots) in a temporary directory."""

import csv
import json
import subprocess
import sys

import h5py
import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import REPO, job_counts, snakemake, tiny_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, llama_dir):
    work = tmp_path_factory.mktemp("workflow")
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config(llama_dir)))
    result = snakemake(work, "--configfile", str(work / "config.yaml"))
    assert result.returncode == 0, result.stderr[-4000:]
    return work


def test_artifacts_of_every_stage(finished_run):
    res = finished_run / "results" / "tiny"
    assert (res / "dense" / "model" / "model.safetensors").is_file()
    assert (res / "dense" / "model" / "manifest.json").is_file()
    for part in ("calibration", "evaluation"):
        assert (res / "data" / f"{part}.safetensors").is_file()
    # shot 1 of every experiment reads the dense model's curvature, estimated once
    assert not (res / "surgeon" / "shot-1" / "curvature.h5").exists()
    for shot in (1, 3):
        h5 = res / "dense/curvature.h5" if shot == 1 else res / "surgeon/shot-3/curvature.h5"
        with h5py.File(h5, "r") as f:
            assert len(f) == 14 and "data_sha256" in f.attrs and "model_sha256" in f.attrs
            grp = f["model.layers.0.mlp.down_proj"]
            assert grp["A"].shape == (64, 64) and grp["G"].shape == (32, 32)
            assert grp.attrs["tokens"] == 4 * 32 and grp.attrs["fisher"] == "empirical"
        assert not h5.with_suffix(".ckpt").exists()
        model = res / "surgeon" / f"shot-{shot}" / "model"
        assert (model / "mask.safetensors").is_file()
        manifest = json.loads((model / "manifest.json").read_text())
        assert manifest["inputs"]["curvature"]["sha256"]
    # the shot that is not kept was read by the next shot and its evaluation, then deleted
    m3 = json.loads((res / "surgeon" / "shot-3" / "model" / "manifest.json").read_text())
    assert m3["inputs"]["model"]["path"].endswith("surgeon/scratch/shot-2/model")
    assert m3["inputs"]["curvature"]["path"].endswith("surgeon/shot-3/curvature.h5")
    assert (res / "surgeon" / "eval" / "shot-2.json").is_file()
    assert not [p for p in (res / "surgeon").rglob("*") if p.is_file() and "scratch" in p.parts]
    assert not (res / "surgeon" / "shot-2").exists()
    assert not list(finished_run.rglob(".*.tmp-*"))  # no half-written artifact


def test_summary_table(finished_run):
    rows = list(csv.DictReader(open(finished_run / "results" / "report" / "summary.csv")))
    required = {"model", "experiment", "method", "structure", "target", "shot", "sparsity",
                "params", "ppl"}
    assert required <= set(rows[0])
    by_key = {(r["experiment"], int(r["shot"])): r for r in rows
              if r["stage"].startswith(("shot-", "dense"))}
    assert set(by_key) == {("dense", 0), ("surgeon", 1), ("surgeon", 2), ("surgeon", 3),
                           ("magnitude", 1), ("wanda-24", 1), ("structured-lora", 1)}
    compacted = [r for r in rows if r["stage"] == "compact"]
    assert [r["experiment"] for r in compacted] == ["structured-lora"]
    masked = by_key[("structured-lora", 1)]
    assert int(compacted[0]["params"]) < int(masked["params"])
    assert abs(float(compacted[0]["ppl"]) / float(masked["ppl"]) - 1) < 1e-3
    assert float(compacted[0]["tokens_per_s"]) > 0 and float(by_key[("dense", 0)]["tokens_per_s"]) > 0
    assert masked["tokens_per_s"] == ""
    assert "| structured-lora |" in (finished_run / "results/report/summary.md").read_text()
    quantized = {r["experiment"]: r for r in rows if r["stage"] in ("quantized-gptq4",
                                                                     "quantized-rtn3")}
    assert float(quantized["surgeon"]["bits_per_weight"]) == 4 + 16 / 32
    assert float(quantized["magnitude"]["bits_per_weight"]) == 3 + 24 / 32
    # pruned weights stay zero (rounding to code 0 may add a few zeros)
    assert float(quantized["surgeon"]["sparsity"]) >= float(by_key[("surgeon", 3)]["sparsity"])
    res = finished_run / "results/tiny/surgeon"
    pruned = load_file(str(res / "shot-3/model/model.safetensors"))
    quant = load_file(str(res / "quantized/gptq4/model/model.safetensors"))
    for key, w in pruned.items():
        if key.endswith("proj.weight"):
            assert torch.all(quant[key][w == 0] == 0), key
    m = json.loads((finished_run / "results/tiny/surgeon/quantized/gptq4/model/manifest.json")
                   .read_text())
    assert m["inputs"]["curvature"]["path"].endswith("surgeon/quantized/curvature.h5")
    assert m["inputs"]["model"]["path"].endswith("surgeon/shot-3/model")
    m = json.loads((finished_run / "results/tiny/magnitude/quantized/rtn3/model/manifest.json")
                   .read_text())
    assert "curvature" not in m["inputs"]
    gguf = json.loads((res / "quantized/gptq4/model.gguf.manifest.json").read_text())["gguf"]
    assert gguf["file_type"] == "Q4_0" and gguf["bits_per_weight_file"] < 32
    assert not (finished_run / "results/tiny/magnitude/quantized/rtn3/model.gguf").exists()
    ct = json.loads((res / "quantized/gptq4/compressed-tensors/config.json").read_text())
    assert ct["quantization_config"]["quant_method"] == "compressed-tensors"
    assert not (finished_run / "results/tiny/magnitude/quantized/rtn3/compressed-tensors").exists()
    # a quantized row counts at its smallest export, not at its dequantized float32 folder
    sizes = {"gguf": (res / "quantized/gptq4/model.gguf").stat().st_size,
             "compressed-tensors": sum(f.stat().st_size for f in
                                       (res / "quantized/gptq4/compressed-tensors").rglob("*"))}
    fmt = min(sizes, key=sizes.get)
    assert quantized["surgeon"]["stored_as"] == fmt
    assert float(quantized["surgeon"]["size_mb"]) == round(sizes[fmt] / 2**20, 1)
    assert quantized["magnitude"]["stored_as"] == "safetensors (dequantized)"
    assert by_key[("dense", 0)]["stored_as"] == "safetensors"
    assert m["inputs"]["model"]["path"].endswith("magnitude/recovered/model")
    recovered = [r for r in rows if r["stage"] == "recovered"]
    assert [r["experiment"] for r in recovered] == ["magnitude"]
    assert recovered[0]["sparsity"] == by_key[("magnitude", 1)]["sparsity"]
    assert float(recovered[0]["compress_wall_s"]) > float(by_key[("magnitude", 1)]["compress_wall_s"])
    m = json.loads((finished_run / "results/tiny/structured-lora/shot-1/model/manifest.json")
                   .read_text())
    assert m["config"]["damping_g"] == 0.01 and m["low_rank_correction"]["steps"] == 2
    assert m["inputs"]["calibration"]["path"].endswith("calibration.safetensors")
    assert float(by_key[("structured-lora", 1)]["sparsity"]) >= 0.2
    m = json.loads((finished_run / "results/tiny/wanda-24/shot-1/model/manifest.json").read_text())
    # Wanda runs layer by layer (sequential, its paper's mode): windows, not the dense A
    assert m["config"]["sequential"] and "curvature" not in m["inputs"]
    assert m["inputs"]["calibration"]["path"].endswith("calibration.safetensors")
    assert by_key[("wanda-24", 1)]["structure"] == "2:4"
    for shot in (1, 2):
        assert abs(float(by_key[("surgeon", shot)]["sparsity"]) - shot / 6) < 1e-3
    for key in [("surgeon", 3), ("magnitude", 1), ("wanda-24", 1)]:
        assert abs(float(by_key[key]["sparsity"]) - 0.5) < 1e-3
    assert all(float(r["ppl"]) > 1 and float(r["ppl_ood"]) > 1 for r in rows)
    # compression time adds up over shots; the pruning mask is not counted as model size
    walls = [float(by_key[("surgeon", k)]["compress_wall_s"]) for k in (1, 2, 3)]
    assert 0 < walls[0] < walls[1] < walls[2]
    assert by_key[("surgeon", 3)]["size_mb"] == by_key[("dense", 0)]["size_mb"]
    assert (finished_run / "results" / "report" / "summary.md").read_text().startswith("| model")


def test_distillation_and_quantization_aware_lora(finished_run):
    data = finished_run / "results/tiny/data"
    teacher = json.loads((data / "teacher_logits.safetensors.manifest.json").read_text())
    assert teacher["inputs"]["model"]["path"].endswith("tiny/dense/model")
    assert 0 < teacher["teacher"]["kept_mass_mean"] < 1 and teacher["config"]["top_k"] == 64
    m = json.loads((finished_run / "results/tiny/magnitude/recovered/model/manifest.json")
                   .read_text())
    assert m["config"]["objective"] == "kd" and m["config"]["kd_weight"] == 1.0
    assert m["inputs"]["teacher"]["path"].endswith("data/teacher_logits.safetensors")
    res = finished_run / "results/tiny/surgeon/quantized"
    qat = json.loads((res / "gptq4-qat/model/manifest.json").read_text())
    assert qat["stage"] == "qat" and qat["inputs"]["model"]["path"].endswith("gptq4/model")
    assert qat["config"]["objective"] == "mix" and qat["quantization"]["bits"] == 4
    ptq = load_file(str(res / "gptq4/model/quantization.safetensors"))
    tuned = load_file(str(res / "gptq4-qat/model/quantization.safetensors"))
    scales = [k for k in ptq if k.endswith(".scales")]
    assert scales and all(torch.equal(ptq[k], tuned[k]) for k in scales)  # the same grid
    codes = [k for k in ptq if k.endswith(".codes")]
    assert any(not torch.equal(ptq[k], tuned[k]) for k in codes)  # training moved codes
    pruned = load_file(str(finished_run / "results/tiny/surgeon/shot-3/model/model.safetensors"))
    weights = load_file(str(res / "gptq4-qat/model/model.safetensors"))
    for key, w in pruned.items():
        if key.endswith("proj.weight"):
            assert torch.all(weights[key][w == 0] == 0), key
    assert (res / "gptq4-qat/model.gguf").is_file()
    rows = list(csv.DictReader(open(finished_run / "results" / "report" / "summary.csv")))
    stages = {r["stage"] for r in rows if r["experiment"] == "surgeon"}
    assert {"quantized-gptq4", "quantized-gptq4-qat"} <= stages


def test_zeroshot_results_and_report_columns(finished_run):
    """Dense and final shots scored on the project's tasks; an experiment that opts out is not."""
    res = finished_run / "results" / "tiny"
    cloze = [json.loads(line) for line in (res / "data/cloze/surgeon_cloze.jsonl").open()]
    assert len(cloze) == 8
    for exp, stage in (("dense", "dense"), ("surgeon", "shot-3"), ("magnitude", "shot-1")):
        z = json.loads((res / exp / "zeroshot" / f"{stage}.json").read_text())
        assert (z["experiment"], z["stage"]) == (exp, stage)
        assert {t: v["n"] for t, v in z["tasks"].items()} == {"surgeon_python": 4,
                                                              "surgeon_cloze": 4}
        assert z["skipped"] == []
    assert not (res / "wanda-24" / "zeroshot").exists()
    assert not (res / "magnitude" / "zeroshot" / "recovered.json").exists()
    rows = {(r["experiment"], r["stage"]): r
            for r in csv.DictReader(open(finished_run / "results/report/summary.csv"))}
    for key in (("dense", "dense"), ("magnitude", "shot-1")):
        assert 0 <= float(rows[key]["zeroshot_acc"]) <= 1
        assert 0 <= float(rows[key]["acc_surgeon_python"]) <= 1
    assert rows[("wanda-24", "shot-1")]["zeroshot_acc"] == ""
    assert "zeroshot_acc" in (finished_run / "results/report/summary.md").read_text()


def test_recovery_artifacts(finished_run):
    res = finished_run / "results" / "tiny" / "magnitude" / "recovered"
    m = json.loads((res / "model" / "manifest.json").read_text())
    assert m["config"]["steps"] == 4 and m["config"]["targets"] == "q_proj,down_proj"
    assert m["inputs"]["windows"]["path"].endswith("data/recovery.safetensors")
    assert len((res / "loss.tsv").read_text().splitlines()) == 1 + 4
    assert not (res / "checkpoint.pt").exists()
    png = finished_run / "results" / "report" / "recovery_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![recovery_loss](recovery_loss.png)" in (png.parent / "summary.md").read_text()
    compact = json.loads((finished_run / "results/tiny/structured-lora/compact/model/manifest.json")
                         .read_text())["compaction"]
    assert compact["max_abs_logit_diff"] < 1e-4 and compact["logit_check_tokens"] == 32


def test_report_figures_and_html(finished_run):
    """The run draws every figure; `snakemake --report` embeds them with the tables."""
    from report_checks import check_report_run

    check_report_run(finished_run, snakemake(finished_run, "--configfile",
                                             str(finished_run / "config.yaml"),
                                             "--report", "results/report/report.html"))


def test_nothing_left_to_do_and_inspect(finished_run):
    dry = snakemake(finished_run, "--configfile", str(finished_run / "config.yaml"), "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    h5 = finished_run / "results/tiny/dense/curvature.h5"
    out = subprocess.run([sys.executable, "-m", "surgeon", "inspect", str(h5)],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].split()[:3] == ["layer", "shape", "tokens"]
    assert len(out.splitlines()) == 1 + 14 and "model.layers.1.mlp.up_proj" in out


def test_config_errors_name_the_key(tmp_path, llama_dir):
    cfg = tiny_config(llama_dir)
    cfg["data"]["windowz"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    assert r.returncode != 0 and "windowz" in r.stdout + r.stderr
    cfg = tiny_config(llama_dir)
    cfg["experiments"]["surgeon"]["target"] = 1.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    assert r.returncode != 0 and "target" in r.stdout + r.stderr
    cfg = tiny_config(llama_dir)
    cfg["experiments"]["surgeon"]["keep_shots"] = [2, 5]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    assert r.returncode != 0 and "surgeon.keep_shots: [5] beyond" in r.stdout + r.stderr
    cfg = tiny_config(llama_dir)
    cfg["experiments"]["surgeon"]["quantize"] = ["gptq9"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    assert r.returncode != 0 and "['gptq9'] not defined under quantization" in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()


def test_lint_and_format():
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-n"], cwd=REPO,
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    files = [str(REPO / "Snakefile")] + [str(p) for p in (REPO / "workflow/rules").rglob("*.smk")]
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files],
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_paper_schedule_keeps_only_the_size_curve(tmp_path):
    """The 40-shot structured preset: 5 kept shots (10..50%), 35 shot models and 34 curvature
    files as temp scratch, and none of the default experiments (a preset replaces the default)."""
    preset = REPO / "config/presets/structured-schedule.yaml"
    r = snakemake(tmp_path, "--configfile", str(preset), "-n", "--nolock")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = job_counts(r.stdout)
    assert jobs["prune_shot"] == 5 and jobs["prune_scratch_shot"] == 35
    assert jobs["estimate_curvature"] == 5 and jobs["estimate_scratch_curvature"] == 34
    assert jobs["evaluate"] == 6  # the dense model and the 5 kept shots
    for shot in (8, 16, 24, 32, 40):
        assert f"llm-surgeon-structured-schedule/shot-{shot}/model" in r.stdout
    assert "llm-surgeon-structured-schedule/shot-7/" not in r.stdout
    assert "sparsegpt" not in r.stdout


def test_structured_preset_shares_the_default_runs_artifacts(tmp_path):
    """config/presets/structured.yaml stands alone, yet its 20% experiments run exactly the
    default config's commands (data, curvature, prune, LoRA, compaction), so it reuses their
    artifacts; its 30% ones are the structured-30 preset's, and it scores nothing zero-shot."""
    def commands(*configs):
        r = snakemake(tmp_path, "--configfile", *map(str, configs), "-n", "--nolock", "-p")
        assert r.returncode == 0, r.stderr[-3000:]
        shell = (line.removeprefix("Shell command: ") for line in r.stdout.splitlines())
        return {line for line in shell if line.startswith("surgeon ")}, r.stdout

    preset, out = commands(REPO / "config/presets/structured.yaml")
    default, _ = commands(REPO / "config/config.yaml", REPO / "config/presets/structured-30.yaml")
    shared = {c for c in preset if "results/report" not in c and " zeroshot " not in c}
    assert shared and shared <= default
    for name in ("llm-surgeon", "llm-pruner", "slimgpt"):
        for size in (20, 30):
            assert f"{name}-structured-{size}/recovered/model" in out
            assert f"{name}-structured-{size}/compact/model" in out
    assert "results/report/structured/summary.md" in out
    assert job_counts(out).get("zeroshot", 0) == 0 and "unstructured" not in out


def test_quantization_preset_plans_llama_cpp_file_types(tmp_path):
    """A `gguf_type` entry quantizes with --gguf-type and exports a .gguf only (K-quant scales
    have no compressed-tensors layout); the Q4_0 entry keeps both exports."""
    r = snakemake(tmp_path, "--configfile", str(REPO / "config/config.yaml"),
                  str(REPO / "config/presets/quantization.yaml"), "-n", "--nolock", "-p")
    assert r.returncode == 0, r.stderr[-3000:]
    folder = "results/smollm2-135m/llm-surgeon-unstructured-50/quantized"
    assert "--gguf-type Q4_K_M --damp" in r.stdout
    assert f"{folder}/gptq-q4_k_m/model.gguf" in r.stdout
    assert f"{folder}/gptq-q4_k_m/compressed-tensors" not in r.stdout
    assert f"{folder}/gptq-q4_0/compressed-tensors" in r.stdout


def test_scale_search_is_on_for_gptq_and_brings_the_curvature_to_rtn(tmp_path, llama_dir):
    """GPTQ searches its scales unless told not to; RTN only when asked, and then it is
    given the final model's curvature."""
    cfg = tiny_config(llama_dir)
    cfg["quantization"] = {"g": {"method": "gptq"}, "g-plain": {"method": "gptq",
                                                                "scale_search": False},
                           "r": {"method": "rtn"}, "r-searched": {"method": "rtn",
                                                                  "scale_search": True}}
    cfg["experiments"] = {"surgeon": {**cfg["experiments"]["surgeon"], "recover": False,
                                      "quantize": list(cfg["quantization"])}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "--configfile", str(tmp_path / "c.yaml"), "-n", "--nolock", "-p")
    assert r.returncode == 0, r.stderr[-3000:]
    quantize = {line.split(" --out ")[1].split()[0].split("/")[-2]: line
                for line in r.stdout.splitlines()
                if " quantize --model " in line}
    assert set(quantize) == set(cfg["quantization"])
    for name, searched in (("g", True), ("g-plain", False), ("r", False), ("r-searched", True)):
        assert ("--scale-search" in quantize[name]) == searched, name
        assert ("--curvature" in quantize[name]) == (name != "r"), name


def test_smoke_preset_plans_every_stage(tmp_path):
    """`make smoke` (config/presets/smoke.yaml) validates and plans the whole chain under its
    own model name and report folder, apart from the default run's results."""
    preset = REPO / "config/presets/smoke.yaml"
    r = snakemake(tmp_path, "--configfile", str(preset), "-n", "--nolock")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = job_counts(r.stdout)
    for rule in ("import_model", "calibrate", "ood_windows", "estimate_dense_curvature",
                 "prune_shot", "recovery_windows", "recover", "quantize", "export_gguf",
                 "evaluate", "zeroshot", "report"):
        assert jobs.get(rule, 0) >= 1, rule
    # one LLM Surgeon shot and one peer, so no shot-2 curvature (test_artifacts_of_every_stage
    # runs the multi-shot rules)
    assert jobs["prune_shot"] == 2 and "estimate_curvature" not in jobs
    assert "results/smollm2-135m-smoke/llm-surgeon-unstructured-50/shot-1/model" in r.stdout
    assert "results/report/smoke/summary.md" in r.stdout
    assert "results/smollm2-135m/" not in r.stdout and "results/report/summary" not in r.stdout


def test_cores_per_job(tmp_path):
    """On 4 cores the compression chain and every tokens/s measurement (dense, compact) take
    all 4; evaluations of other models, zero-shot scoring and compaction take 2, so two share
    the machine."""
    r = snakemake(tmp_path, "--configfile", str(REPO / "config/config.yaml"), "-n", "--nolock",
                  "--cores", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    threads = {}
    for block in r.stdout.split("\n\n"):
        rule = next((line.split()[-1].rstrip(":") for line in block.splitlines()
                     if line.startswith(("rule ", "localrule "))), None)
        stage = next((line.split("stage=")[-1] for line in block.splitlines()
                      if "stage=" in line), "")
        count = next((int(line.split()[-1]) for line in block.splitlines()
                      if line.strip().startswith("threads:")), 1)
        if rule:
            threads.setdefault((rule, stage.split("-")[0]), set()).add(count)
    assert threads[("evaluate", "dense")] == threads[("evaluate", "compact")] == {4}
    assert threads[("evaluate", "shot")] == threads[("evaluate", "recovered")] == {2}
    assert threads[("zeroshot", "dense")] == threads[("compact", "")] == {2}
    for rule in ("import_model", "calibrate", "estimate_dense_curvature", "estimate_curvature",
                 "prune_shot", "recover", "quantize"):
        assert threads[(rule, "")] == {4}, rule
