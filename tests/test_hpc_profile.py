"""profiles/slurm and workflow/rules/resources.smk without a cluster: what each job would ask
SLURM for (dry runs), and memory that follows the model's size."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from helpers import REPO, job_counts, snakemake

PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
GPU_STAGES = {"estimate_dense_curvature", "estimate_curvature", "estimate_scratch_curvature",
              "estimate_quantization_curvature", "prune_shot", "prune_scratch_shot", "recover",
              "quantize", "evaluate"}
DATA_AND_REPORT = {"import_model", "calibrate", "recovery_windows", "report", "plot_recovery"}
# peak RSS measured on SmolLM2-135M (benchmarks/smollm2-135m/**.tsv), MB
MEASURED_135M = {"estimate_dense_curvature": 2711, "prune_shot": 5418, "evaluate": 1241}


def workflow_rules() -> set[str]:
    r = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return set(r.stdout.split()) - {"all"}


def test_profile_covers_every_rule_gpus_only_for_gpu_stages():
    rules = workflow_rules()
    resources = PROFILE["set-resources"]
    assert set(resources) == rules, "rules without SLURM resources: "\
        f"{sorted(rules - set(resources))}; unknown: {sorted(set(resources) - rules)}"
    assert set(PROFILE["set-threads"]) == rules
    for rule, res in resources.items():
        assert res["cpus_per_task"] == PROFILE["set-threads"][rule], rule
        assert "runtime" in res and "mem_mb" not in res, rule  # memory: resources.smk
    assert {r for r in GPU_STAGES if resources[r].get("gpu") == 1} == GPU_STAGES
    assert not {r for r in DATA_AND_REPORT if resources[r].get("gpu")}
    assert set(PROFILE["preemptible-rules"]) <= rules  # the retried long GPU stages
    assert {"estimate_curvature", "prune_shot", "recover"} <= set(PROFILE["preemptible-rules"])
    assert PROFILE["preemptible-retries"] >= 1 and PROFILE["latency-wait"] >= 30
    assert PROFILE["executor"] == "slurm" and "default-resources" not in PROFILE


LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "torch_dtype": "float32"}
SMOLLM_135M = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
               "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
               "num_key_value_heads": 3, "vocab_size": 49152, "torch_dtype": "float32"}


def planned_memory(work, name: str, config: dict, weight_bytes: int) -> dict[str, int]:
    """mem_mb per rule that a dry run with profiles/slurm plans for a model folder holding
    `weight_bytes` of fp32 weights (a sparse file: no disk used) and `config`."""
    model = work / "results" / name / "dense" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(config))
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(weight_bytes)
    cfg = {"model": {"name": name, "source": "some-org/some-model"}, "device": "cuda",
           "data": {"source": "embedded:pydoc-topics"},
           "experiments": {"surgeon": {"method": "llm-surgeon", "structure": "unstructured",
                                       "target": 0.5}}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"results/{name}/dense/eval/dense.json",
               f"results/{name}/surgeon/eval/shot-1.json"]
    r = snakemake(work, *targets, "-n", "--workflow-profile", str(REPO / "profiles/slurm"),
                  "--configfile", str(work / "config.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    memory = {}
    for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n)+)", r.stdout, re.M):
        res = re.search(r"resources: .*\bmem_mb=(\d+)", body)
        if res:
            memory[rule] = max(memory.get(rule, 0), int(res.group(1)))
    return memory


def test_memory_follows_the_model_size(tmp_path):
    big = planned_memory(tmp_path / "7b", "llama-2-7b", LLAMA_7B, 6_738_415_616 * 4)
    small = planned_memory(tmp_path / "135m", "smollm2-135m", SMOLLM_135M, 538_090_408)
    for rule in MEASURED_135M:
        assert rule in big and rule in small, (big, small)
    # 135M: at least what was measured there, and nothing near a GPU node's 80 GB
    for rule, measured in MEASURED_135M.items():
        assert measured <= small[rule] <= 2 * measured, (rule, small[rule])
    assert max(small.values()) < 8000
    # 7B: 27 GB of fp32 weights, 64 GB of K-FAC factors
    weights, factors = 26_954, 63_711
    assert weights + factors <= big["estimate_dense_curvature"] <= 2 * (weights + factors)
    assert 2 * weights <= big["prune_shot"] <= 6 * weights
    assert weights <= big["evaluate"] <= 2 * weights
    assert big["calibrate"] == small["calibrate"]  # tokenizer work: not the model's size


class Inputs(dict):
    """What Snakemake hands a resource function as `input` (named, attribute access)."""
    __getattr__ = dict.__getitem__


def test_a_retry_asks_for_more_and_a_missing_model_waits(tmp_path):
    ns = {"config": {"model": {"source": "embedded:smollm2-135m"}}}
    exec((REPO / "workflow/rules/resources.smk").read_text(), ns)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMOLLM_135M))
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(538_090_408)
    mem = ns["memory"]("evaluate")
    first = mem(None, Inputs(model=str(model)), attempt=1)
    assert mem(None, Inputs(model=str(model)), attempt=2) == 2 * first
    assert ns["import_memory"](None, attempt=3) == 3 * 2000
    # a model not built yet: FileNotFoundError named after the input, which Snakemake takes
    # as "evaluate again once the job's inputs exist"
    with pytest.raises(FileNotFoundError) as err:
        mem(None, Inputs(model=str(tmp_path / "later")), attempt=1)
    assert err.value.filename == str(tmp_path / "later")


LLAMA_3_8B = {**LLAMA_7B, "intermediate_size": 14336, "num_key_value_heads": 8,
              "vocab_size": 128256}


def test_llama_3_8b_asks_for_its_weights_and_its_90_gb_of_factors(tmp_path):
    big = planned_memory(tmp_path / "8b", "llama-3-8b", LLAMA_3_8B, 8_030_261_248 * 4)
    weights, factors = 32_121, 96_100  # fp32 MB; factors as benchmarks/scale.py counts them
    assert weights + factors <= big["estimate_dense_curvature"] <= 2 * (weights + factors)
    assert 2 * weights <= big["prune_shot"] <= 6 * weights


@pytest.mark.parametrize("preset", ["llama-2-7b", "llama-3-8b"])
def test_paper_scale_presets_dry_run_on_the_slurm_profile(tmp_path, preset):
    r = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "profiles/slurm"),
                  "--configfile", str(REPO / f"config/presets/{preset}.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    assert counts["estimate_curvature"] == 4 and counts["prune_shot"] == 6, counts
