"""A many-shot structured run keeps only its kept shots on disk (the others are temp() files
under scratch/), on the tiny model: the structured-schedule preset in small."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml

from test_workflow import job_counts, snakemake, tiny_config

SHOTS, KEPT = 5, [2]  # and the final shot, always kept


def disk_use(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_many_shot_structured_run_leaves_only_kept_shots(tmp_path, llama_dir):
    cfg = tiny_config(llama_dir)
    del cfg["quantization"], cfg["recovery"]
    cfg["experiments"] = {"schedule": {
        "method": "llm-surgeon", "structure": "structured", "target": 0.5, "shots": SHOTS,
        "keep_shots": KEPT, "evaluate_shots": "kept"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    exp = tmp_path / "results" / "tiny" / "schedule"
    scratch = exp / "scratch"
    seen = {"models": 0, "curvature": 0}
    done = threading.Event()

    def watch():  # how many scratch shots exist at once while the run goes on
        while not done.is_set():
            if scratch.exists():
                seen["models"] = max(seen["models"], len(list(scratch.glob("shot-*/model"))))
                seen["curvature"] = max(seen["curvature"],
                                        len(list(scratch.glob("shot-*/curvature.h5"))))
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    targets = [f"results/tiny/schedule/eval/shot-{k}.json" for k in KEPT + [SHOTS]]
    try:
        r = snakemake(tmp_path, *targets, "--configfile", str(tmp_path / "config.yaml"))
    finally:
        done.set()
        watcher.join()
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = job_counts(r.stdout + r.stderr)
    assert jobs["prune_scratch_shot"] == SHOTS - 1 - len(KEPT)
    assert jobs["estimate_scratch_curvature"] == SHOTS - 2 - len(KEPT)  # shot 1: dense's

    # what is left: the kept shots' models and curvature, their evaluations, no scratch
    kept_dirs = [f"shot-{k}" for k in KEPT + [SHOTS]]
    assert sorted(p.name for p in exp.iterdir()) == ["eval", *kept_dirs]
    for k in KEPT + [SHOTS]:
        assert (exp / f"shot-{k}" / "model" / "model.safetensors").is_file()
        assert (exp / f"shot-{k}" / "curvature.h5").is_file()
    assert sorted(p.name for p in (exp / "eval").iterdir()) == \
        sorted(f"shot-{k}.json" for k in KEPT + [SHOTS])
    # while running, a scratch model lived until the shot after it had read it
    assert 1 <= seen["models"] <= 2 and seen["curvature"] <= 1, seen
    # disk: dense model and curvature, windows, and the kept shots; nothing of the others
    shot = disk_use(exp / f"shot-{SHOTS}")
    kept = disk_use(exp) - disk_use(exp / "eval")
    assert kept <= (len(KEPT) + 1) * shot * 1.01
