"""Surviving a kill, corrupted artifacts and config changes, on the tiny model (CPU, seed 0).

- `snakemake` SIGKILLed in the middle of the curvature stage and of a pruning shot: the lock it
  leaves stops a plain rerun; the README's resume command (`snakemake --unlock`, then
  `snakemake --cores 2 --rerun-incomplete`) redoes only the interrupted job (and the jobs that
  had not started), the curvature job continues from its checkpoint (windows counted), and the
  artifacts are identical to those of an uninterrupted run.
- A truncated curvature.h5 or model.safetensors is caught by its manifest's sha256 before use;
  the error names the file and the command that rebuilds it, and that command works.
- Changing a config value re-runs exactly the jobs it affects (dry run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import REPO, snakemake, tiny_config, workflow_env

WINDOWS, EVERY = 100, 10  # a checkpoint every 10 windows: the kill lands mid-curvature
TARGETS = ["results/tiny/dense/eval/dense.json", "results/tiny/two-shot/eval/shot-2.json",
           "results/tiny/magnitude/eval/shot-1.json"]


def resume_config(model_dir, **changes) -> dict:
    cfg = tiny_config(model_dir)
    del cfg["quantization"], cfg["recovery"]
    cfg["data"]["calibration_windows"] = WINDOWS
    cfg["curvature"]["checkpoint_every"] = EVERY
    cfg["experiments"] = {
        # shot 1 is not kept: a temp model under scratch/ that shot 2 reads
        "two-shot": {"method": "llm-surgeon", "structure": "unstructured", "target": 0.5,
                     "shots": 2, "keep_shots": "final"},
        "magnitude": {"method": "magnitude", "structure": "unstructured", "target": 0.5},
    }
    for key, value in changes.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


def workflow(work: Path, *args):
    # targets first: --configfile takes every word after it
    return snakemake(work, *TARGETS, *args, "--configfile", str(work / "config.yaml"))


def prepare(work: Path, model_dir, **changes) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(resume_config(model_dir, **changes)))
    return work


def jobs_run(output: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Snakemake's job blocks: jobid -> (rule, outputs)."""
    jobs = {}
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", output, re.M):
        outputs = re.search(r"^    output: (.*)$", body, re.M)
        jobid = re.search(r"^    jobid: (\d+)$", body, re.M)
        if outputs and jobid:
            jobs[jobid.group(1)] = (rule, tuple(outputs.group(1).split(", ")))
    return jobs


def finished_outputs(output: str) -> set[str]:
    """Outputs of the jobs a run finished."""
    jobs = jobs_run(output)
    done = re.findall(r"Finished jobid: (\d+)", output)
    return {o for j in done if j in jobs for o in jobs[j][1]}


def all_outputs(output: str) -> set[str]:
    return {o for _, outs in jobs_run(output).values() for o in outs}


def artifact_state(work: Path) -> dict[str, str]:
    """What must not depend on a kill: every file under results/ by name, the sha256 of the
    weights, masks, windows and curvature, the perplexity of every evaluation (eval JSONs
    and manifests also hold wall times and dates)."""
    state = {}
    for f in sorted((work / "results").rglob("*")):
        if not f.is_file():
            continue
        name = str(f.relative_to(work))
        if f.suffix in (".safetensors", ".h5"):
            state[name] = hashlib.sha256(f.read_bytes()).hexdigest()
        elif "/eval/" in name:
            state[name] = repr(json.loads(f.read_text())["ppl"])
        else:
            state[name] = "present"
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory, llama_dir):
    """The uninterrupted run: its output and its artifacts."""
    work = prepare(tmp_path_factory.mktemp("reference"), llama_dir)
    r = workflow(work)
    assert r.returncode == 0, r.stderr[-4000:]
    out = r.stdout + r.stderr
    assert f"{WINDOWS} of {WINDOWS} windows processed in this run" in out
    return {"work": work, "outputs": all_outputs(out), "state": artifact_state(work)}


def start_killable(work: Path, log: Path) -> subprocess.Popen:
    """The same run in its own process group, one job at a time, output to `log`."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--cores", "1", *TARGETS, "--configfile",
           str(work / "config.yaml")]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=workflow_env(), start_new_session=True)


def sigkill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    """SIGKILL snakemake and every job it started (its process group) once `ready()`."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def resume(work: Path):
    """The README's resume command after checking that the lock stops a plain rerun."""
    blocked = workflow(work)
    assert blocked.returncode != 0
    assert "Directory cannot be locked" in blocked.stdout + blocked.stderr
    unlock = workflow(work, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    resumed = workflow(work, "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return resumed.stdout + resumed.stderr


def check_only_unfinished_jobs_redone(reference, killed_log, resumed_log, interrupted):
    finished = finished_outputs(killed_log)
    redone = all_outputs(resumed_log)
    assert interrupted in redone and interrupted not in finished
    assert not redone & finished, redone & finished  # nothing that had finished ran again
    assert redone | finished == reference["outputs"]


def test_sigkill_in_curvature_resumes_from_its_checkpoint(reference, tmp_path, llama_dir):
    work = prepare(tmp_path / "run", llama_dir)
    ckpt = work / "results/tiny/dense/curvature.ckpt"
    proc = start_killable(work, tmp_path / "killed.log")
    sigkill_when(proc, ckpt.exists, "the curvature checkpoint")
    done = torch.load(ckpt, weights_only=False)["windows_done"]
    assert 0 < done < WINDOWS
    assert not (work / "results/tiny/dense/curvature.h5").exists()

    killed_log = (tmp_path / "killed.log").read_text()
    resumed_log = resume(work)
    # the curvature job went on from its checkpoint: only the windows after it were processed
    assert f"curvature: resuming from window {done} of {WINDOWS}" in resumed_log
    assert f"curvature: {WINDOWS - done} of {WINDOWS} windows processed in this run" \
        in resumed_log
    assert not ckpt.exists()
    check_only_unfinished_jobs_redone(reference, killed_log, resumed_log,
                                      "results/tiny/dense/curvature.h5")
    assert artifact_state(work) == reference["state"]


def test_sigkill_in_a_pruning_shot_redoes_only_that_shot(reference, tmp_path, llama_dir):
    work = prepare(tmp_path / "run", llama_dir)
    shot2 = work / "results/tiny/two-shot/shot-2/model"
    log = work / "logs/tiny/two-shot/prune_shot.shot-2.log"
    proc = start_killable(work, tmp_path / "killed.log")
    # the shot has loaded its model: it is computing (the output is written at its end)
    sigkill_when(proc, lambda: log.exists() and "Loading weights" in log.read_text(),
                 "pruning shot 2 to load its model")
    assert not shot2.exists()
    scratch = work / "results/tiny/two-shot/scratch/shot-1/model"
    assert (scratch / "model.safetensors").is_file()  # still there for the shot to read

    killed_log = (tmp_path / "killed.log").read_text()
    resumed_log = resume(work)
    check_only_unfinished_jobs_redone(reference, killed_log, resumed_log,
                                      "results/tiny/two-shot/shot-2/model")
    assert str(scratch.relative_to(work)) not in all_outputs(resumed_log)
    assert not scratch.exists()  # deleted once shot 2 had read it
    assert artifact_state(work) == reference["state"]


def corrupted_copy(reference, tmp_path, artifact: str) -> Path:
    """A copy of the finished reference run with `artifact` cut to half its size."""
    work = tmp_path / "run"
    shutil.copytree(reference["work"], work, symlinks=True)
    f = work / artifact
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return work


def check_detected_and_rebuilt(reference, work, artifact, rebuilt, first_run_args):
    r = workflow(work, *first_run_args)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    error = next(line for line in out.splitlines() if ": error: " in line)
    assert f"{artifact} does not match the sha256 recorded in" in error, error
    hint = f"snakemake --forcerun {rebuilt}"
    assert hint in error, error
    fixed = workflow(work, "--forcerun", rebuilt)
    assert fixed.returncode == 0, fixed.stderr[-4000:]
    assert artifact_state(work) == reference["state"]


def test_truncated_curvature_is_caught_before_use(reference, tmp_path):
    # a newer curvature.h5 makes Snakemake rerun the shot that reads it
    artifact = "results/tiny/dense/curvature.h5"
    work = corrupted_copy(reference, tmp_path, artifact)
    check_detected_and_rebuilt(reference, work, artifact, artifact, [])


def test_truncated_model_weights_are_caught_before_use(reference, tmp_path):
    # weights inside a model folder: the evaluation that reads them is asked for again
    folder = "results/tiny/magnitude/shot-1/model"
    work = corrupted_copy(reference, tmp_path, f"{folder}/model.safetensors")
    check_detected_and_rebuilt(reference, work, f"{folder}/model.safetensors", folder,
                               ["--forcerun", "results/tiny/magnitude/eval/shot-1.json"])


def planned_jobs(work: Path, model_dir, **changes) -> set[tuple[str, str]]:
    """(rule, first output) of every job a dry run plans after changing the config."""
    (work / "changed.yaml").write_text(yaml.safe_dump(resume_config(model_dir, **changes)))
    r = snakemake(work, *TARGETS, "-n", "--configfile", str(work / "changed.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    return {(rule, outs[0]) for rule, outs in jobs_run(r.stdout + r.stderr).values()}


def test_config_change_reruns_exactly_the_stages_it_affects(reference, llama_dir):
    work = reference["work"]
    assert planned_jobs(work, llama_dir) == set()
    # one experiment's target: its shot and its evaluation, not the other experiment's
    assert planned_jobs(work, llama_dir, **{"experiments.magnitude.target": 0.4}) == {
        ("prune_shot", "results/tiny/magnitude/shot-1/model"),
        ("evaluate", "results/tiny/magnitude/eval/shot-1.json"),
    }
    # the number of calibration windows: the windows and everything estimated from them
    # (curvature, the shots pruned with it, every evaluation, which reads the windows file);
    # not the import, not the magnitude shot, which reads neither
    assert planned_jobs(work, llama_dir, **{"data.calibration_windows": WINDOWS - 8}) == {
        ("calibrate", "results/tiny/data/calibration.safetensors"),
        ("estimate_dense_curvature", "results/tiny/dense/curvature.h5"),
        ("prune_scratch_shot", "results/tiny/two-shot/scratch/shot-1/model"),
        ("estimate_curvature", "results/tiny/two-shot/shot-2/curvature.h5"),
        ("prune_shot", "results/tiny/two-shot/shot-2/model"),
        ("evaluate", "results/tiny/dense/eval/dense.json"),
        ("evaluate", "results/tiny/two-shot/eval/shot-2.json"),
        ("evaluate", "results/tiny/magnitude/eval/shot-1.json"),
    }
    # damping of the second shot's curvature use: the LLM Surgeon shots and their evaluation
    assert planned_jobs(work, llama_dir, **{"experiments.two-shot.damping_g": 0.2}) == {
        ("prune_scratch_shot", "results/tiny/two-shot/scratch/shot-1/model"),
        ("estimate_curvature", "results/tiny/two-shot/shot-2/curvature.h5"),
        ("prune_shot", "results/tiny/two-shot/shot-2/model"),
        ("evaluate", "results/tiny/two-shot/eval/shot-2.json"),
    }
