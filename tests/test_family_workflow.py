"""The Snakemake workflow end to end on tiny models of other families (import from a local
folder, windows, curvature, LLM Surgeon in 2 shots and Wanda, coupled units with compaction,
RTN Q4_0 with its .gguf where llama.cpp reads the family from us (all here but OPT), evaluation,
zero-shot, report): every rule runs on the family, not only the stage functions
(tests/test_families.py)."""

import csv
import json

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


def family_run(tmp_path, tokenizer, family, *args):
    """Snakemake on a saved tiny model of `family` (save_model: GPT-2's layers in Conv1D layout,
    as a GPT-2 checkpoint holds them) with CONFIG and `args`."""
    from surgeon.models import save_model

    source = tmp_path / f"tiny-{family}"
    save_model(family_model(family), tokenizer, source)
    config = {**CONFIG, "run_name": family,
              "model": {"name": f"tiny-{family}", "source": str(source)}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # targets and options first: everything after --configfile would be read as config files
    return snakemake(tmp_path, *args, "--configfile", str(tmp_path / "config.yaml"))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "phi3", "gemma3", "gpt2"])
def test_workflow_end_to_end(family, tmp_path, tokenizer):
    """Qwen2 (q/k/v biases), Phi-3 (fused qkv_proj / gate_up_proj), Gemma 3 (head_dim not
    hidden / heads, tied, q/k norms, sliding layers) and GPT-2 (Conv1D, fused c_attn, learned
    positions) through every rule up to the summary table and the .gguf (the figures and HTML
    report are the same code for every family: tests/test_workflow.py). Mistral, Qwen3 and
    Gemma 2 are left to the stage tests (tests/test_families.py) and the plan test below: each
    whole run costs CI about 1.5 minutes."""
    results = tmp_path / "results" / f"tiny-{family}"
    targets = [f"results/report/{family}/summary.csv",
               f"results/tiny-{family}/surgeon/zeroshot/shot-2.json"]
    r = family_run(tmp_path, tokenizer, family, *targets)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = {row["experiment"] + "/" + row["stage"]: row for row in
            csv.DictReader((tmp_path / f"results/report/{family}/summary.csv").open())}
    assert float(rows["surgeon/shot-2"]["sparsity"]) == pytest.approx(0.5, abs=0.01)
    # Wanda: round(C / 2) of every row of [W | b] (C = its columns), not 50% of all decoder
    # parameters: a row of 33 loses 16 (tiny GPT-2's biases are 2% of its Linears)
    saved = load_file(results / "wanda/shot-1/model/mask.safetensors")
    per_row = {name: (layer.out_features, layer.in_features + (layer.bias is not None))
               for name, layer in decoder_linears(family_model(family)).items()}
    assert {name: int(mask.sum()) for name, mask in saved.items()} == {
        name: out * round(0.5 * columns) for name, (out, columns) in per_row.items()}
    compact = json.loads((results / "coupled/compact/model/manifest.json").read_text())
    assert compact["compaction"]["zero_weights_left"] == 0
    model_type = json.loads((tmp_path / f"tiny-{family}/config.json").read_text())["model_type"]
    assert json.loads((results / "coupled/compact/model/config.json").read_text())[
        "model_type"] == f"{model_type}-compact"
    assert float(rows["coupled/compact"]["ppl"]) == pytest.approx(
        float(rows["coupled/shot-1"]["ppl"]), rel=1e-4)
    assert json.loads((results / "surgeon/zeroshot/shot-2.json").read_text())[
        "tasks"]["surgeon_python"]["n"] == 4
    arch = GGUFReader(str(results / "surgeon/quantized/rtn-q4_0/model.gguf")).fields[
        "general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == family


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


def test_no_gguf_planned_for_a_family_llama_cpp_does_not_read_from_us(tmp_path, tokenizer):
    """OPT quantizes, compacts and evaluates like the others (tests/test_families.py); the
    plan leaves out only its .gguf, which the export would refuse."""
    r = family_run(tmp_path, tokenizer, "opt", "-n", "-p")
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = job_counts(r.stdout)
    assert jobs["quantize"] == 1 and jobs["compact"] == 1 and jobs["prune_shot"] == 4
    assert "export_gguf" not in jobs and "model.gguf" not in r.stdout
    assert jobs["export_compressed_tensors"] == 1


def test_gpt2_plans_a_gguf_and_no_compressed_tensors(tmp_path, tokenizer):
    """GPT-2 runs every stage (tests/test_families.py) and exports a .gguf; the plan leaves out
    only its compressed-tensors folder, which the export would refuse (Conv1D layers)."""
    r = family_run(tmp_path, tokenizer, "gpt2", "-n", "-p")
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = job_counts(r.stdout)
    assert jobs["quantize"] == 1 and jobs["compact"] == 1 and jobs["prune_shot"] == 4
    assert jobs["export_gguf"] == 1 and "export_compressed_tensors" not in jobs
