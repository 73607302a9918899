"""Zero-shot accuracy: the project's task files, lm-eval's scoring against a direct computation,
the cloze task built from the evaluation text, skipped and unknown tasks, the report columns,
and a small workflow run."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import direct_loglikelihoods
from surgeon.cloze import cloze_items, normalize
from surgeon.data import load_split
from surgeon.report import with_zeroshot
from surgeon.zeroshot import hub_reachable, resolve_data_files

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "resources" / "tasks"
PROJECT_TASKS = ["surgeon_physical", "surgeon_facts", "surgeon_python"]


def task_rows(name):
    return [json.loads(line) for line in (TASKS / name / f"{name}.jsonl").read_text().splitlines()]


def surgeon(*args, env=None):
    """`python -m surgeon ...` offline, as the rules run it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "surgeon", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_task_files_are_well_formed_and_reproducible():
    """Each item: a question, 2-4 distinct choices, one gold index in range; no duplicate ids
    or questions; the files are what scripts/make_zeroshot_tasks.py writes."""
    total = 0
    for name in PROJECT_TASKS:
        config = yaml.safe_load((TASKS / name / f"{name}.yaml").read_text())
        assert config["task"] == name and config["output_type"] == "multiple_choice"
        rows = task_rows(name)
        total += len(rows)
        assert 100 <= len(rows) <= 150, name
        assert len({r["id"] for r in rows}) == len(rows)
        assert len({r["question"].lower() for r in rows}) == len(rows), name
        for r in rows:
            assert set(r) == {"id", "question", "choices", "label"}, r
            assert isinstance(r["question"], str) and r["question"].strip(), r
            choices = r["choices"]
            assert 2 <= len(choices) <= 4 and len(set(choices)) == len(choices), r
            assert all(isinstance(c, str) and c.strip() for c in choices), r
            assert isinstance(r["label"], int) and 0 <= r["label"] < len(choices), r
    assert total >= 300
    spec = importlib.util.spec_from_file_location("make_tasks", REPO / "scripts/make_zeroshot_tasks.py")
    make_tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tasks)
    assert make_tasks.main(["--check"]) == 0


def test_config_block_defaults_and_presets():
    """Defaults reach nested keys (Snakemake's validate), presets validate, bad stages do not."""
    from snakemake.utils import validate

    schema = str(REPO / "workflow/schemas/config.schema.yaml")
    cfg = {"model": {"name": "m", "source": "s"}, "data": {"source": "d"},
           "experiments": {"e": {"method": "magnitude", "structure": "2:4", "target": 0.5}}}
    validate(cfg, schema, set_default=True)
    assert cfg["zeroshot"]["tasks"] == PROJECT_TASKS + ["surgeon_cloze"]
    assert cfg["zeroshot"]["stages"] == ["dense", "final", "recovered"]
    assert cfg["zeroshot"]["cloze"] == {"items": 100, "min_word_length": 4,
                                        "min_context_words": 15, "max_context_words": 60}
    assert cfg["experiments"]["e"]["zeroshot"] is True
    for name in ("config/config.yaml", "config/presets/llama-2-7b.yaml"):
        validate(yaml.safe_load((REPO / name).read_text()), schema, set_default=True)
    paper = yaml.safe_load((REPO / "config/presets/llama-2-7b.yaml").read_text())["zeroshot"]
    assert {"boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
            "openbookqa"} <= set(paper["tasks"])
    with pytest.raises(Exception, match="middle"):
        validate({**cfg, "zeroshot": {"stages": ["middle"]}}, schema)


def test_resolve_data_files():
    cfg = {"task": "t", "dataset_kwargs": {"data_files": {"test": "t.jsonl", "dev": ["/abs/d.jsonl", "e.jsonl"]}}}
    out = resolve_data_files(cfg, Path("/base"))
    assert out["dataset_kwargs"]["data_files"] == {"test": "/base/t.jsonl",
                                                   "dev": ["/abs/d.jsonl", "/base/e.jsonl"]}
    assert cfg["dataset_kwargs"]["data_files"]["test"] == "t.jsonl"  # input untouched
    assert resolve_data_files({"dataset_kwargs": {"data_files": "x.jsonl"}}, Path("/b")) == \
        {"dataset_kwargs": {"data_files": "/b/x.jsonl"}}
    assert resolve_data_files({"task": "hub"}, Path("/b")) == {"task": "hub"}


@pytest.fixture(scope="module")
def llama(llama_dir):
    from surgeon.models import load_model, load_tokenizer

    return load_model(llama_dir), load_tokenizer(llama_dir)


@pytest.fixture(scope="module")
def project_run(llama):
    """All items of the project's tasks through lm-eval, with per-item samples."""
    from surgeon.zeroshot import evaluate

    model, tokenizer = llama
    return evaluate(model, tokenizer, PROJECT_TASKS, [str(TASKS)], limit=0, batch_size=8,
                    log_samples=True)


def test_project_tasks_run_through_lm_eval(project_run):
    summary, raw = project_run
    assert summary["skipped"] == [] and summary["hub"] == "not needed"
    assert set(summary["tasks"]) == set(PROJECT_TASKS)
    for name, t in summary["tasks"].items():
        rows = task_rows(name)
        assert t["n"] == len(rows) == len(raw["samples"][name])
        for metric in ("acc", "acc_norm"):
            assert 0 <= t[metric] <= 1 and t[f"{metric}_stderr"] >= 0
        assert t["random_chance"] == pytest.approx(sum(1 / len(r["choices"]) for r in rows) / len(rows))
    assert summary["average_acc"] == pytest.approx(
        sum(t["acc"] for t in summary["tasks"].values()) / 3)


def test_accuracy_equals_argmax_loglikelihood(project_run, llama):
    """The maths: per item, lm-eval's decision is the argmax over choices of the summed
    log-likelihood (acc) and of it divided by the choice's length in characters (acc_norm)."""
    model, tokenizer = llama
    _, raw = project_run
    for name in PROJECT_TASKS:
        rows = task_rows(name)
        samples = sorted(raw["samples"][name], key=lambda s: s["doc_id"])[:12]
        for s in samples:
            row = rows[s["doc_id"]]
            assert s["doc"]["question"] == row["question"]
            lls = direct_loglikelihoods(model, tokenizer, row["question"], row["choices"])
            theirs = [float(r[0]) for r in s["filtered_resps"]]
            assert theirs == pytest.approx(lls, abs=1e-3)
            pred = max(range(len(lls)), key=lls.__getitem__)
            norm = max(range(len(lls)), key=lambda i: lls[i] / len(row["choices"][i]))
            assert s["acc"] == float(pred == row["label"]), (name, s["doc_id"])
            assert s["acc_norm"] == float(norm == row["label"]), (name, s["doc_id"])
        accs = [s["acc"] for s in raw["samples"][name]]
        assert raw["results"][name]["acc,none"] == pytest.approx(sum(accs) / len(accs))


@pytest.fixture(scope="module")
def evaluation_text():
    return load_split("embedded:pydoc-topics", 0.2)


def test_cloze_items_are_deterministic_last_words_of_evaluation_text(evaluation_text):
    text = evaluation_text.evaluation
    items = cloze_items(text, 40, seed=0)
    assert items == cloze_items(text, 40, seed=0)
    assert items != cloze_items(text, 40, seed=1)
    assert len(items) == 40 and len({i["context"] for i in items}) == 40
    flat_eval, flat_cal = normalize(text), normalize(evaluation_text.calibration)
    for item in items:
        target, words = item["target"], item["context"].split(" ")
        assert target.isalpha() and target.isascii() and len(target) >= 4, item
        assert 15 <= len(words) <= 60, item
        # the target is the last word of a real sentence of the evaluation split
        assert f"{item['context']} {target}." in flat_eval, item
        assert f"{item['context']} {target}" not in flat_cal, item
    assert len(cloze_items(text, 10_000, seed=0)) < 10_000  # at most one item a paragraph


def test_cloze_task_command(tmp_path):
    out = tmp_path / "cloze"
    r = surgeon("cloze-task", "--source", "embedded:pydoc-topics", "--items", "12",
                "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "surgeon_cloze.jsonl").read_text().splitlines()]
    expected = cloze_items(load_split("embedded:pydoc-topics", 0.2).evaluation, 12, seed=3)
    assert rows == expected
    config = yaml.safe_load((out / "surgeon_cloze.yaml").read_text())
    assert config["task"] == "surgeon_cloze" and config["output_type"] == "loglikelihood"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 3 and manifest["items"] == 12
    assert not list(tmp_path.glob(".*tmp-*"))
    bad = surgeon("cloze-task", "--source", "embedded:pydoc-topics", "--items", "0",
                  "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "cloze items must be at least 1" in bad.stderr and not (tmp_path / "bad").exists()


def test_unreachable_task_is_skipped_and_unknown_task_is_an_error(tmp_path, llama_dir):
    """Offline, boolq (an lm-eval task whose data set is on the hub) is skipped with its reason
    and the command succeeds; a name registered nowhere stops it with a one-line error."""
    out = tmp_path / "z.json"
    r = surgeon("zeroshot", "--model", str(llama_dir), "--tasks", "surgeon_python,boolq",
                "--include", str(TASKS), "--limit", "5", "--device", "cpu", "--out", str(out),
                "--model-name", "tiny", "--experiment", "dense", "--stage", "dense")
    assert r.returncode == 0, r.stderr[-3000:]
    z = json.loads(out.read_text())
    assert list(z["tasks"]) == ["surgeon_python"] and z["tasks"]["surgeon_python"]["n"] == 5
    assert [s["task"] for s in z["skipped"]] == ["boolq"]
    assert "offline" in z["skipped"][0]["reason"].lower() or "reach" in z["skipped"][0]["reason"]
    assert "zeroshot: skipped boolq: " in r.stdout + r.stderr
    assert z["hub"].startswith("unreachable") and z["lm_eval_version"]
    sidecar = json.loads(Path(f"{out}.manifest.json").read_text())
    assert sidecar["stage"] == "zeroshot"
    assert sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()  # verify checks it

    bad = surgeon("zeroshot", "--model", str(llama_dir), "--tasks", "surgeon_python,no_such_task",
                  "--include", str(TASKS), "--device", "cpu", "--out", str(tmp_path / "bad.json"))
    assert bad.returncode == 2, bad.stderr[-3000:]
    error = [line for line in bad.stderr.splitlines() if line.startswith("surgeon zeroshot: error")]
    assert len(error) == 1 and "unknown zero-shot task(s) no_such_task" in error[0]
    assert not (tmp_path / "bad.json").exists()


def test_hub_check_gives_up_fast(monkeypatch):
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    start = time.time()
    assert not hub_reachable(timeout=2)
    assert time.time() - start < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()


def test_report_gains_zeroshot_columns(tmp_path):
    rows = [{"model": "m", "experiment": "dense", "stage": "dense"},
            {"model": "m", "experiment": "e", "stage": "shot-1"},
            {"model": "m", "experiment": "e", "stage": "shot-2"}]
    files = []
    for exp, stage, accs in (("dense", "dense", {"a": 0.5, "b": 0.25}), ("e", "shot-2", {"a": 0.75})):
        files.append(tmp_path / f"{exp}.json")
        files[-1].write_text(json.dumps({
            "model": "m", "experiment": exp, "stage": stage,
            "average_acc": sum(accs.values()) / len(accs),
            "tasks": {t: {"acc": v} for t, v in accs.items()}}))
    out, columns = with_zeroshot(rows, files)
    assert columns == ["zeroshot_acc", "acc_a", "acc_b"]
    assert out[0] == {**rows[0], "zeroshot_acc": 0.375, "acc_a": 0.5, "acc_b": 0.25}
    assert out[1] == {**rows[1], "zeroshot_acc": "", "acc_a": "", "acc_b": ""}
    assert out[2]["zeroshot_acc"] == 0.75 and out[2]["acc_b"] == ""
    assert with_zeroshot(rows, []) == (rows, [])
