"""What a rerun redoes after a local source is edited, and where each config's report goes:
Snakemake dry runs over placeholder outputs (no stage runs, a few seconds each)."""

import json
import os
import re

import pytest
import yaml

from helpers import job_counts, snakemake, tiny_config

pytestmark = pytest.mark.slow  # runs Snakemake in a subprocess

# the outputs of every job that reads model.source, data.source or data.ood_source
READERS = {
    "import_model": "results/tiny/dense/model",
    "calibrate": "results/tiny/data/calibration.safetensors",
    "build_cloze_task": "results/tiny/data/cloze",
    "ood_windows": "results/tiny/data/ood.safetensors",
    "recovery_windows": "results/tiny/data/recovery.safetensors",
}
PLACEHOLDERS = ["results/tiny/dense/model/model.safetensors",
                "results/tiny/data/calibration.safetensors",
                "results/tiny/data/evaluation.safetensors",
                "results/tiny/data/cloze/surgeon_cloze.yaml",
                "results/tiny/data/ood.safetensors",
                "results/tiny/data/recovery.safetensors"]
T0 = 1_700_000_000  # a fixed clock: each step below is 100 s later than the one before


def set_mtime(path, t):
    os.utime(path, (t, t))


def outputs_written_at(work, t):
    """Pretend every reader ran at time t: placeholder outputs with that mtime."""
    for name in PLACEHOLDERS:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).touch()
    for path in (work / "results").rglob("*"):
        set_mtime(path, t)


def edit(path, t):
    path.write_text(path.read_text() + "\nedited\n")
    set_mtime(path, t)


def planned(work):
    """The rules a dry run would run to bring every reader's output up to date."""
    r = snakemake(work, *READERS.values(), "-n", "--configfile", str(work / "config.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    return set(job_counts(r.stdout)) - {"total"}


@pytest.fixture
def local_sources(tmp_path):
    """A workdir whose config reads a local model folder, a glob of .txt files (data.source,
    also recovery's) and a .jsonl file (data.ood_source)."""
    model, texts = tmp_path / "model", tmp_path / "texts"
    (model / ".cache").mkdir(parents=True)
    texts.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_text("weights")
    (model / ".cache" / "download.lock").write_text("")  # a download cache, not the model
    (texts / "a.txt").write_text("first document\n")
    (texts / "b.txt").write_text("second document\n")
    (tmp_path / "ood.jsonl").write_text(json.dumps({"text": "another kind"}) + "\n")
    for path in [*model.rglob("*"), *texts.iterdir(), tmp_path / "ood.jsonl"]:
        set_mtime(path, T0)
    cfg = tiny_config(model)
    cfg["data"].update(source="texts/*.txt", ood_source=str(tmp_path / "ood.jsonl"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_edited_sources_rerun_exactly_the_jobs_that_read_them(local_sources):
    work = local_sources
    outputs_written_at(work, T0 + 100)
    assert planned(work) == set()
    # one file of the data.source glob: the windows, the cloze task and recovery's windows
    edit(work / "texts/b.txt", T0 + 200)
    assert planned(work) == {"calibrate", "build_cloze_task", "recovery_windows"}
    outputs_written_at(work, T0 + 300)
    edit(work / "ood.jsonl", T0 + 400)
    assert planned(work) == {"ood_windows"}
    outputs_written_at(work, T0 + 500)
    edit(work / "model/.cache/download.lock", T0 + 600)  # hidden files are not the model
    assert planned(work) == set()
    # the model's weights: the import and every job reading the imported model
    edit(work / "model/model.safetensors", T0 + 700)
    assert planned(work) == {"import_model", "calibrate", "ood_windows", "recovery_windows"}


def report_paths(work, run_name):
    """Outputs, logs and benchmarks a dry run of the whole tiny config puts in report folders."""
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    (work / f"{run_name or 'default'}.yaml").write_text(yaml.safe_dump({**cfg,
                                                                         "run_name": run_name}))
    r = snakemake(work, "-n", "--configfile", str(work / f"{run_name or 'default'}.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    listed = re.findall(r"^    (?:output|log|benchmark): (.*)$", r.stdout, re.M)
    paths = {p for line in listed for p in line.split(", ")}
    return {p for p in paths if re.match(r"(results|logs|benchmarks)/report", p)}


def test_each_run_name_writes_its_own_report_folder(local_sources):
    default, a, b = (report_paths(local_sources, name) for name in ("", "a", "b"))
    # the default run writes where the README says
    assert {"results/report/summary.csv", "results/report/summary.md"} <= default
    assert not any(p.startswith(("results/report/a/", "results/report/b/")) for p in default)
    for name, paths in (("a", a), ("b", b)):
        assert {f"results/report/{name}/summary.csv", f"results/report/{name}/summary.md",
                f"results/report/{name}/benchmarks.csv"} <= paths
        assert all(re.match(rf"(results|logs|benchmarks)/report/{name}/", p) for p in paths)
    assert len(a) == len(default) and not a & b and not a & default
