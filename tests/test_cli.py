"""Bad input ends with a one-line error, a non-zero exit, and no artifact left behind."""

import os
import subprocess
import sys


from helpers import random_windows, tiny_model
from surgeon.curvature import estimate_kfac
from surgeon.curvature_store import write_curvature


def surgeon(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "surgeon", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


def assert_clean_failure(result, *fragments):
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("surgeon ") and ": error: " in last
    for fragment in fragments:
        assert fragment in last, last


def leftovers(folder):
    return [p.name for p in folder.iterdir()]


def test_import_missing_folder_and_offline_hub(tmp_path):
    r = surgeon("import-model", "--source", tmp_path / "nope", "--out", tmp_path / "m")
    assert_clean_failure(r, "not found")
    r = surgeon("import-model", "--source", "someorg/not-cached-model", "--out", tmp_path / "m")
    assert_clean_failure(r, "local folder")
    assert leftovers(tmp_path) == []


def test_calibrate_bad_inputs(tmp_path, llama_dir):
    common = ["calibrate", "--model", llama_dir, "--windows", 2,
              "--calibration-out", tmp_path / "c.safetensors",
              "--evaluation-out", tmp_path / "e.safetensors"]
    assert_clean_failure(surgeon(*common, "--source", tmp_path / "missing.txt", "--seqlen", 16),
                         "not found")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert_clean_failure(surgeon(*common, "--source", tmp_path / "empty.txt", "--seqlen", 16),
                         "empty")
    r = surgeon(*common, "--source", "embedded:pydoc-topics", "--seqlen", 4096)
    assert_clean_failure(r, "exceeds the model's context length 128")
    assert sorted(leftovers(tmp_path)) == ["empty.txt"]


def test_prune_bad_target_and_corrupt_curvature(tmp_path, llama_dir):
    out = tmp_path / "pruned"
    r = surgeon("prune", "--model", llama_dir, "--method", "magnitude", "--target", 1.5,
                "--out", out)
    assert_clean_failure(r, "outside [0, 1)")
    model = tiny_model("llama")
    factors, acc = estimate_kfac(model, random_windows(1, 8), progress=False)
    meta = {n: {"tokens": acc.tokens[n]} for n in factors}
    h5 = tmp_path / "curvature.h5"
    write_curvature(h5, factors, {}, meta)
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])  # truncated by a crash
    r = surgeon("prune", "--model", llama_dir, "--method", "llm-surgeon", "--target", 0.5,
                "--curvature", h5, "--out", out)
    assert_clean_failure(r, "corrupt", "curvature")
    assert not out.exists()
    assert sorted(leftovers(tmp_path)) == ["curvature.h5"]


def test_unknown_method_and_missing_windows(tmp_path, llama_dir):
    r = surgeon("prune", "--model", llama_dir, "--method", "nonsense", "--target", 0.5,
                "--out", tmp_path / "o")
    assert_clean_failure(r, "unknown method")
    r = surgeon("evaluate", "--model", llama_dir, "--evaluation", tmp_path / "none.safetensors",
                "--out", tmp_path / "e.json")
    assert_clean_failure(r, "not found")
    assert leftovers(tmp_path) == []
