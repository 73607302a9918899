"""The Snakemake workflow end to end on tiny models of other families (import from a local
folder, windows, curvature, LLM Surgeon in 2 shots and Wanda, coupled units with compaction,
RTN Q4_0 with its .gguf where llama.cpp reads the family from us (all here but OPT), evaluation,
zero-shot, report): every rule runs on the family, not only the stage functions
(tests/test_families.py)."""

import csv
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from gguf import GGUFReader
from safetensors.torch import load_file

from helpers import family_model, job_counts, snakemake
from surgeon.models import decoder_linears

CONFIG = {
    "device": "cpu",
    "data": {"source": "embedded:pydoc-topics", "seqlen": 32, "calibration_windows": 4,
             "max_eval_windows": 4, "ood_windows": 2, "seed": 0},
    "speed": {"prompt_tokens": 8, "new_tokens": 4},
    "zeroshot": {"tasks": ["surgeon_python"], "stages": ["final"], "limit": 4},
    "quantization": {"rtn-q4_0": {"method": "rtn", "bits": 4, "group_size": 32}},
    "experiments": {
        "surgeon": {"method": "llm-surgeon", "structure": "unstructured", "target": 0.5,
                    "shots": 2, "quantize": ["rtn-q4_0"]},
        "wanda": {"method": "wanda", "structure": "unstructured", "target": 0.5,
                  "zeroshot": False},
        "coupled": {"method": "llm-surgeon", "structure": "structured", "units": "coupled",
                    "target": 0.2, "shots": 1, "compact": True, "zeroshot": False},
    },
}


# GPT-2 also recovers with LoRA and trains quantization-aware through the workflow (peft on
# the Conv1D layers load_model turns into Linears), exported to .gguf after each
GPT2_CONFIG = {
    **CONFIG,
    "recovery": {"windows": 4, "steps": 2},
    "quantization": {**CONFIG["quantization"], "qat-q4_0": {"qat_from": "rtn-q4_0"}},
    "experiments": {**CONFIG["experiments"],
                    "surgeon": {**CONFIG["experiments"]["surgeon"], "recover": True,
                                "quantize": ["rtn-q4_0", "qat-q4_0"]}},
}


# OPT: the coupled units without compaction, which has no OPT classes (refused at start)
OPT_CONFIG = {**CONFIG, "experiments": {
    **CONFIG["experiments"], "coupled": {**CONFIG["experiments"]["coupled"], "compact": False}}}


# the config a family's run uses unless a test gives its own: CONFIG for the others
FAMILY_CONFIGS = {"gpt2": GPT2_CONFIG, "opt": OPT_CONFIG}


def family_run(tmp_path, tokenizer, family, *args, config=None):
    """Snakemake on a saved tiny model of `family` (save_model: GPT-2's layers in Conv1D layout,
    as a GPT-2 checkpoint holds them) with `config` (default: the family's of FAMILY_CONFIGS)
    and `args`."""
    from surgeon.models import save_model

    source = tmp_path / f"tiny-{family}"
    save_model(family_model(family), tokenizer, source)
    config = config or FAMILY_CONFIGS.get(family, CONFIG)
    config = {**config, "run_name": family,
              "model": {"name": f"tiny-{family}", "source": str(source)}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # targets and options first: everything after --configfile would be read as config files
    return snakemake(tmp_path, *args, "--configfile", str(tmp_path / "config.yaml"))


# Families whose run stops at the artifacts below (the summary, figures and zero-shot jobs are
# the same code for every family; GPT-2's run and tests/test_workflow.py's Llama run them)
LEAN = ["qwen2", "phi3", "gemma3", "mistral", "qwen3", "gemma2"]


def lean_targets(family):
    return [f"results/tiny-{family}/surgeon/quantized/rtn-q4_0/model.gguf",
            f"results/tiny-{family}/wanda/shot-1/model",
            f"results/tiny-{family}/coupled/eval/shot-1.json",
            f"results/tiny-{family}/coupled/eval/compact.json"]


@pytest.fixture(scope="module")
def family_runs(request, tmp_path_factory, tokenizer):
    """(workdir, CompletedProcess) of the workflow run of every family the session's tests of
    this module ask for, two runs at a time: a run is a chain of short jobs, each mostly the
    ~6 s of torch and transformers imports on one core, so one run alone leaves the second
    core idle most of the time."""
    wanted = {item.callspec.params["family"] for item in request.session.items
              if item.module is request.module and "family_runs" in item.fixturenames}
    targets = {f: lean_targets(f) for f in LEAN if f in wanted}
    if "gpt2" in wanted:
        targets["gpt2"] = [*lean_targets("gpt2"), "results/report/gpt2/summary.csv",
                           "results/tiny-gpt2/surgeon/zeroshot/shot-2.json"]
    if "opt" in wanted:  # no .gguf (llama.cpp does not read OPT from us), no compaction
        targets["opt"] = ["results/tiny-opt/surgeon/quantized/rtn-q4_0/compressed-tensors",
                          "results/tiny-opt/wanda/shot-1/model",
                          "results/tiny-opt/coupled/eval/shot-1.json"]

    def run(family):
        workdir = tmp_path_factory.mktemp(f"workflow-{family}")
        return family, (workdir, family_run(workdir, tokenizer, family, *targets[family]))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, targets))


def check_pruned(results, family):
    """LLM Surgeon's 2 shots at 50% and Wanda's count per row."""
    surgeon = load_file(results / "surgeon/shot-2/model/mask.safetensors")
    assert sum(int(m.sum()) for m in surgeon.values()) == pytest.approx(
        0.5 * sum(m.numel() for m in surgeon.values()), rel=0.01)
    # Wanda: round(C / 2) of every row of [W | b] (C = its columns), not 50% of all decoder
    # parameters: a row of 33 loses 16 (tiny GPT-2's biases are 2% of its Linears)
    saved = load_file(results / "wanda/shot-1/model/mask.safetensors")
    per_row = {name: (layer.out_features, layer.in_features + (layer.bias is not None))
               for name, layer in decoder_linears(family_model(family)).items()}
    assert {name: int(mask.sum()) for name, mask in saved.items()} == {
        name: out * round(0.5 * columns) for name, (out, columns) in per_row.items()}


def check_pruned_compacted_exported(results, family, architecture):
    """check_pruned, the compacted coupled model (no zero left, the family's -compact type,
    the masked model's perplexity) and the .gguf's llama.cpp architecture."""
    check_pruned(results, family)
    compact = json.loads((results / "coupled/compact/model/manifest.json").read_text())
    assert compact["compaction"]["zero_weights_left"] == 0
    model_type = family_model(family).config.model_type
    assert json.loads((results / "coupled/compact/model/config.json").read_text())[
        "model_type"] == f"{model_type}-compact"
    masked, cut = (json.loads((results / f"coupled/eval/{s}.json").read_text())["ppl"]
                   for s in ("shot-1", "compact"))
    assert cut == pytest.approx(masked, rel=1e-4)
    assert gguf_architecture(results / "surgeon/quantized/rtn-q4_0/model.gguf") == architecture


def gguf_architecture(path) -> str:
    arch = GGUFReader(str(path)).fields["general.architecture"]
    return bytes(arch.parts[arch.data[0]]).decode()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("family", LEAN)
def test_workflow_prunes_compacts_and_exports(family, family_runs):
    """Qwen2 (q/k/v biases), Phi-3 (fused qkv_proj / gate_up_proj), Gemma 3 (head_dim not
    hidden / heads, tied, q/k norms, sliding layers), Mistral (exported as llama.cpp's llama),
    Qwen3 (q/k norms) and Gemma 2 (tied, soft-capping, norms written +1) through every rule
    from the source folder to LLM Surgeon's 2-shot .gguf, Wanda's masked model and the
    compacted coupled model with its perplexity."""
    workdir, r = family_runs[family]
    assert r.returncode == 0, r.stderr[-4000:]
    check_pruned_compacted_exported(workdir / "results" / f"tiny-{family}", family,
                                    "llama" if family == "mistral" else family)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("family", ["opt"])
def test_opt_workflow_prunes_quantizes_and_exports(family, family_runs):
    """OPT (biases, learned positions, its own decoder layout) from the source folder through
    LLM Surgeon's 2 shots, RTN Q4_0 and its compressed-tensors folder, Wanda and the coupled
    units with their perplexity (no .gguf, no compaction: both refused for OPT)."""
    workdir, r = family_runs[family]
    assert r.returncode == 0, r.stderr[-4000:]
    results = workdir / "results" / "tiny-opt"
    check_pruned(results, "opt")
    folder = results / "surgeon/quantized/rtn-q4_0/compressed-tensors"
    assert "quantization_config" in json.loads((folder / "config.json").read_text())
    coupled = json.loads((results / "coupled/eval/shot-1.json").read_text())
    assert 1 < coupled["ppl"] < 1e4 and 0.19 < coupled["sparsity"] < 0.3
    assert not (results / "surgeon/quantized/rtn-q4_0/model.gguf").exists()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2"])
def test_gpt2_workflow_end_to_end(family, family_runs):
    """GPT-2 (Conv1D, fused c_attn, biases, learned positions) through every rule up to the
    summary table and zero-shot (the figures and HTML report: tests/test_workflow.py), with
    LoRA recovery and quantization-aware LoRA on its Q4_0 model (peft on the Conv1D layers
    load_model turns into Linears), each exported to .gguf."""
    workdir, r = family_runs[family]
    assert r.returncode == 0, r.stderr[-4000:]
    results = workdir / "results" / "tiny-gpt2"
    check_pruned_compacted_exported(results, "gpt2", "gpt2")
    rows = {row["experiment"] + "/" + row["stage"]: row for row in
            csv.DictReader((workdir / "results/report/gpt2/summary.csv").open())}
    assert float(rows["surgeon/shot-2"]["sparsity"]) == pytest.approx(0.5, abs=0.01)
    assert float(rows["coupled/compact"]["ppl"]) == pytest.approx(
        float(rows["coupled/shot-1"]["ppl"]), rel=1e-4)
    assert json.loads((results / "surgeon/zeroshot/shot-2.json").read_text())[
        "tasks"]["surgeon_python"]["n"] == 4
    assert {"surgeon/recovered", "surgeon/quantized-qat-q4_0"} <= set(rows)
    assert gguf_architecture(results / "surgeon/quantized/qat-q4_0/model.gguf") == "gpt2"
    for stage in ("recovered", "quantized/qat-q4_0"):  # LoRA steps taken, loss finite
        losses = list(csv.DictReader((results / f"surgeon/{stage}/loss.tsv").open(),
                                     delimiter="\t"))
        assert len(losses) == 2 and all(0 < float(r["loss"]) < 100 for r in losses)
    pruned, recovered, qat = (
        load_file(results / f"surgeon/{stage}/model/model.safetensors")
        for stage in ("shot-2", "recovered", "quantized/qat-q4_0"))
    name = "transformer.h.0.attn.c_attn.weight"  # saved in GPT-2's Conv1D layout
    assert recovered[name].shape == qat[name].shape == (32, 96)
    assert not recovered[name].equal(pruned[name])  # the merged LoRA moved the weights
    # and kept the pruned zeros at zero, through recovery and QAT
    assert (recovered[name][pruned[name] == 0] == 0).all()
    assert (qat[name][pruned[name] == 0] == 0).all()


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "phi3"])
def test_gemma_and_phi3_plan_a_gguf(family, tmp_path, tokenizer):
    """Gemma 2, Gemma 3 and Phi-3 quantize, compact and evaluate like the others
    (tests/test_families.py), and their Q4_0 experiment exports a .gguf (llama.cpp's gemma2,
    gemma3, phi3: tests/test_gguf_families.py) besides its compressed-tensors folder."""
    r = family_run(tmp_path, tokenizer, family, "-n", "-p")
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = job_counts(r.stdout)
    assert jobs["quantize"] == 1 and jobs["compact"] == 1 and jobs["prune_shot"] == 4
    assert jobs["export_gguf"] == 1 and "surgeon/quantized/rtn-q4_0/model.gguf" in r.stdout
    assert jobs["export_compressed_tensors"] == 1


def test_opt_plans_no_gguf_and_refuses_compaction_at_start(tmp_path, tokenizer):
    """OPT quantizes and evaluates like the others (tests/test_families.py); the plan leaves
    out its .gguf, which the export would refuse, and `compact: true` is refused before any
    job runs (compaction has no OPT classes), in one line naming the key, not when the
    compact job is reached."""
    r = family_run(tmp_path, tokenizer, "opt", "-n", "-p", config=CONFIG)
    assert r.returncode != 0
    assert ("experiments.coupled.compact: compaction supports llama, mistral, qwen2, qwen3, "
            "gemma2, gemma3_text, phi3, gpt2 models, not opt") in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()
    r = family_run(tmp_path, tokenizer, "opt", "-n", "-p")
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = job_counts(r.stdout)
    assert jobs["quantize"] == 1 and jobs["prune_shot"] == 4 and "compact" not in jobs
    assert "export_gguf" not in jobs and "model.gguf" not in r.stdout
    assert jobs["export_compressed_tensors"] == 1


def test_gpt2_plans_a_gguf_and_no_compressed_tensors(tmp_path, tokenizer):
    """GPT-2 runs every stage (tests/test_families.py) and exports a .gguf of each quantized
    model (RTN Q4_0 and its quantization-aware LoRA, GPT2_CONFIG); the plan leaves out only
    their compressed-tensors folders, which the export would refuse (Conv1D layers)."""
    r = family_run(tmp_path, tokenizer, "gpt2", "-n", "-p")
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = job_counts(r.stdout)
    assert jobs["quantize"] == 1 and jobs["compact"] == 1 and jobs["prune_shot"] == 4
    assert jobs["recover"] == 1 and jobs["qat"] == 1
    assert jobs["export_gguf"] == 2 and "export_compressed_tensors" not in jobs
