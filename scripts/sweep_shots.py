"""Measure multi-shot pruning in one process: shots x damping x windows x structure grids.

Runs the same functions as the workflow's stages (curvature.estimate_kfac, prune.prune_shot,
lora.lora_correct, evaluate.perplexity), keeping the model in memory between shots and the
curvature files in a scratch folder, so a grid of dozens of runs fits where a Snakemake run
per setting would reload and rehash everything. Every finished run is appended to --out as one
JSON line (settings, perplexity in-domain and out-of-domain, seconds); runs already in --out
are skipped, so an interrupted sweep continues; `--worker k/n` splits the plan over n parallel
processes (each with its own --out). `sweep_shots.py table OUT.jsonl...` prints the results as
a markdown table (ppl / ppl_ood by setting and shot count). Usage:

  python scripts/sweep_shots.py --model results/smollm2-135m/dense/model \
      --calibration results/smollm2-135m/data/calibration.safetensors \
      --evaluation results/smollm2-135m/data/evaluation.safetensors \
      --ood results/smollm2-135m/data/ood.safetensors --plan issue15 --out sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from safetensors import safe_open

import torch

from surgeon import prune as prune_module
from surgeon import unit_greedy
from surgeon.linalg import spd_solve
from surgeon.curvature import estimate_kfac, layer_metadata
from surgeon.curvature_store import write_curvature
from surgeon.evaluate import perplexity, sparsity_stats
from surgeon.lora import lora_correct
from surgeon.models import load_model, resolve_device
from surgeon.masks import weight_columns
from surgeon.methods import METHODS
from surgeon.prune import decoder_weights, prune_shot
from surgeon.threshold import linear_schedule


def read_windows(path):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("windows")


def run_key(run: dict) -> str:
    return json.dumps(run, sort_keys=True)


def plan_issue15() -> list[dict]:
    """The whole grid of the multi-shot issue, the runs that answer the most first.

    Element grid: {50% unstructured, 2:4 (element schedule)} x shots {1, 2, 4, 8} x damping_g
    {0.01, 0.1, 1.0} x windows {16, 32} x low-rank correction between shots {off, 16 steps};
    structured: LLM Surgeon shots {1, 4, 8, 16} (and the undamped cost numerators), K-OBD
    shots {1, 2, 4}.
    """
    base = {"method": "llm-surgeon", "windows": 16, "lora_steps": 0, "damping_a": 0.01}

    def elem(structure, shots, dg, **kw):
        extra = {"nm_schedule": "elements"} if structure == "2:4" else {}
        return {**base, "structure": structure, "target": 0.5, "shots": shots,
                "damping_g": dg, **extra, **kw}

    def struct(shots, method="llm-surgeon", **kw):
        return {**base, "method": method, "structure": "structured", "target": 0.2,
                "shots": shots, "damping_g": 0.1 if method == "llm-surgeon" else 0.01, **kw}

    both = ("unstructured", "2:4")
    first = [elem(s, t, 1.0) for t in (2, 8) for s in both]
    first += [struct(t) for t in (1, 4, 8)] + [struct(t, "k-obd") for t in (1, 2, 4)]
    first += [elem(s, t, 0.1) for t in (1, 4) for s in both]
    first += [elem(s, 4, 1.0, lora_steps=16) for s in both]
    first += [elem(s, t, 1.0, windows=32) for t in (1, 4) for s in both]
    first += [elem(s, t, 0.01) for t in (1, 4) for s in both]
    first += [struct(16), struct(4, undamped_numerators=True)]
    grid = [elem(s, t, dg, windows=w, lora_steps=lo) for lo in (0, 16) for w in (16, 32)
            for dg in (1.0, 0.1, 0.01) for t in (1, 2, 4, 8) for s in both]
    keys = {run_key(r) for r in first}
    return first + [r for r in grid if run_key(r) not in keys]


def plan_issue16() -> list[dict]:
    """Coupled structured units (MLP channels, attention groups) at 20% and 30%: LLM Surgeon
    with the output-layer costs and global greedy (`coupled_cost: output`) over damping_g and
    shots, the summed costs of every touched layer (`summed`) for comparison, and the peers."""
    base = {"method": "llm-surgeon", "structure": "structured", "units": "coupled",
            "windows": 16, "lora_steps": 0, "damping_a": 0.01}

    def unit(target, shots, dg, cost="output"):
        return {**base, "target": target, "shots": shots, "damping_g": dg, "coupled_cost": cost}

    peers = [{**base, "method": m, "target": t, "shots": 1, "damping_g": 0.0}
             for t in (0.2, 0.3) for m in ("slimgpt", "llm-pruner")]
    first = [unit(0.2, 1, dg) for dg in (1.0, 10.0, 0.1, 100.0)]
    first += [unit(0.2, 4, 10.0), unit(0.3, 1, 10.0), unit(0.3, 4, 10.0), unit(0.2, 4, 0.1),
              unit(0.2, 8, 10.0), unit(0.3, 8, 10.0)]
    first += peers + [unit(0.2, 1, 10.0, "summed"), unit(0.3, 1, 10.0, "summed")]
    first += [unit(0.2, 1, 10.0, "output-ranked"), unit(0.3, 1, 10.0, "output-ranked")]
    first += [{**unit(0.2, 1, 10.0), "damping_a": 0.1}, {**unit(0.2, 1, 10.0), "windows": 32}]
    # damping of A: the update fits the calibration text's input covariance less
    first += [{**unit(0.3, 1, 10.0), "damping_a": 0.1}, {**unit(0.2, 1, 10.0), "damping_a": 0.3},
              {**unit(0.2, 1, 10.0), "damping_a": 1.0}, {**unit(0.3, 4, 10.0), "damping_a": 0.1}]
    first += [{**p, "damping_a": 0.1} for p in peers if p["method"] == "slimgpt"]
    return first + [{**unit(0.2, 4, 10.0), "damping_a": 0.1}, {**unit(0.2, 1, 1.0), "damping_a": 0.1}]


def plan_issue15_rest() -> list[dict]:
    """The cells of the multi-shot grid the H200 sessions left (docs/comparison.md), one axis
    at a time from the measured 4-shot default: damping_g 0.01 (1, 4 shots) and 0.1 (2, 8),
    the low-rank correction after every shot, 32 windows at 4 shots, and for the paper's
    rows-and-columns units 16 shots, undamped cost numerators and K-OBD in 4 shots; the
    correction at lr 1e-4 (the key `lora_lr`; runs without it use 1e-3)."""
    base = {"method": "llm-surgeon", "windows": 16, "lora_steps": 0, "damping_a": 0.01}

    def elem(structure, shots, dg, **kw):
        extra = {"nm_schedule": "elements"} if structure == "2:4" else {}
        return {**base, "structure": structure, "target": 0.5, "shots": shots,
                "damping_g": dg, **extra, **kw}

    def rows_columns(shots, method="llm-surgeon", dg=0.1, **kw):
        return {**base, "method": method, "structure": "structured", "units": "rows-columns",
                "target": 0.2, "shots": shots, "damping_g": dg, **kw}

    both = ("unstructured", "2:4")
    runs = [elem(s, t, 0.01) for t in (1, 4) for s in both]
    runs += [elem(s, 4, 1.0, lora_steps=16) for s in both]
    runs += [elem(s, t, 0.1) for t in (2, 8) for s in both]
    runs += [elem(s, 4, 1.0, windows=32) for s in both]
    runs += [rows_columns(4, "k-obd", 0.01), rows_columns(4, undamped_numerators=True),
             rows_columns(16)]
    # one shot, undamped and damped numerators, on this code
    runs += [rows_columns(1, undamped_numerators=True), rows_columns(1)]
    # the correction at the workflow's lora_lr default (1e-4) instead of 1e-3
    return runs + [elem(s, t, 1.0, lora_steps=16, lora_lr=1e-4) for t in (4, 1) for s in both]


PLANS = {"issue15": plan_issue15, "issue16": plan_issue16, "issue15-rest": plan_issue15_rest}


class RankedOutputLayer(unit_greedy.OutputLayer):
    """Ablation of the greedy (`coupled_cost: output-ranked`, this script only): a removal
    marks the unit and leaves W and Ai as they are, so every unit keeps its single-unit cost
    (one ranking by cost per parameter); weights() then makes the joint column removal of
    every marked unit at once, the same optimal update for that set."""

    def remove(self, j):
        self.alive[j] = False

    def weights(self):
        gone = [j for j in range(len(self.spans)) if not self.alive[j]]
        if not gone:
            return self.W.clone()
        T = torch.cat([self.spans[j] for j in gone])
        W = self.W.double()
        Ai = self.Ai.double()
        W = W - spd_solve(Ai[T][:, T], W[:, T].T).T @ Ai[T]
        W[:, T] = 0.0
        return W.to(self.W.dtype)


def write_factors(model, windows, path):
    factors, acc = estimate_kfac(model, windows, progress=False)
    write_curvature(path, factors, {"fisher": "empirical"}, layer_metadata(acc))
    for p in model.parameters():
        p.requires_grad_(False)


def run_one(run, args, windows, evaluation, ood, scratch, device):
    start = time.time()
    model = load_model(args.model, device)
    removed = {n: W == 0 for n, W in decoder_weights(model).items()}
    cal = windows[run["windows"]]
    prune_module.DAMPED_COST_NUMERATORS = not run.get("undamped_numerators", False)
    ranked = run.get("coupled_cost") == "output-ranked"
    prune_module.OutputLayer = RankedOutputLayer if ranked else unit_greedy.OutputLayer
    timings = []
    for shot in range(1, run["shots"] + 1):
        t0 = time.time()
        curvature = None
        method = METHODS[run["method"]]
        if method.curvature and not (method.sequential and run.get("sequential", True)):
            curvature = scratch / "curvature.h5"
            write_factors(model, cal, curvature)
        t1 = time.time()
        masks = prune_shot(model, run["method"], linear_schedule(run["target"], run["shots"], shot),
                           removed, curvature, run.get("damping_g", 0.1),
                           run.get("damping_a", 0.01), progress=False, device=str(device),
                           structure=run["structure"], calibration=cal,
                           sequential=run.get("sequential", False),
                           nm_schedule=run.get("nm_schedule", "blocks"),
                           units=run.get("units"),
                           coupled_cost="output" if ranked else run.get("coupled_cost", "output"))
        model.to(device)  # some methods hand the model back on the CPU
        t2 = time.time()
        if run.get("lora_steps", 0):  # after every shot, as lora_steps does in the workflow
            lora_correct(model, cal[:8], weight_columns(masks, model), rank=8, alpha=16,
                         steps=run["lora_steps"], lr=run.get("lora_lr", 1e-3), seed=0,
                         progress=False)
        removed = {n: m | (W == 0) for (n, m), W in zip(masks.items(),
                                                         decoder_weights(model).values())}
        timings.append({"curvature_s": round(t1 - t0, 2), "prune_s": round(t2 - t1, 2),
                        "total_s": round(time.time() - t0, 2)})
    prune_module.DAMPED_COST_NUMERATORS = True
    ppl = perplexity(model, evaluation, progress=False)
    ppl_ood = perplexity(model, ood, progress=False)
    return {**run, "ppl": round(ppl, 4), "ppl_ood": round(ppl_ood, 4),
            "sparsity": round(sparsity_stats(model)["sparsity"], 5), "shots_timing": timings,
            "wall_s": round(time.time() - start, 1), "device": str(device)}


def label(run: dict) -> str:
    """The settings of a run other than its shot count, as a table row label."""
    size = "" if run["structure"] == "2:4" else f" {run['target']:.0%}"
    parts = [run["method"], run["structure"] + size, f"damping_g {run['damping_g']}",
             f"{run['windows']} windows"]
    if run.get("lora_steps"):
        parts.append(f"low-rank correction {run['lora_steps']} steps after every shot"
                     + (f" at lr {run['lora_lr']:g}" if 'lora_lr' in run else ''))
    if run.get("units") == "coupled" and run["method"] == "llm-surgeon":
        parts.append(f"coupled units, {run.get('coupled_cost', 'output')} costs")
    elif run.get("units") and run["structure"] == "structured":
        parts.append(f"{run['units']} units")
    if run.get("undamped_numerators"):
        parts.append("undamped cost numerators")
    return ", ".join(parts)


def markdown_table(records: list[dict]) -> str:
    """ppl / ppl_ood per setting (rows) and shot count (columns), best of a row in bold."""
    rows: dict[str, dict[int, dict]] = {}
    for r in records:
        if r["key"] != "dense" and "error" not in r:
            rows.setdefault(label(r), {})[r["shots"]] = r
    shots = sorted({t for row in rows.values() for t in row})
    lines = ["| setting | " + " | ".join(f"{t} shot{'s' * (t > 1)}" for t in shots) + " |",
             "|---" * (len(shots) + 1) + "|"]
    for name, row in rows.items():
        best = min(row.values(), key=lambda r: r["ppl"])["shots"]
        cells = []
        for t in shots:
            cell = f"{row[t]['ppl']:.3f} / {row[t]['ppl_ood']:.3f}" if t in row else "-"
            cells.append(f"**{cell}**" if t == best and len(row) > 1 else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_records(paths) -> list[dict]:
    """Records of one or more output files, the last one of a key winning."""
    records = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            records[rec["key"]] = rec
    return list(records.values())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "table":  # sweep_shots.py table OUT.jsonl...
        print(markdown_table(read_records(sys.argv[2:])))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--calibration", required=True, help="windows file (16 windows)")
    p.add_argument("--calibration32", default="", help="windows file with 32 windows")
    p.add_argument("--evaluation", required=True)
    p.add_argument("--ood", required=True)
    p.add_argument("--plan", default="issue15", choices=list(PLANS))
    p.add_argument("--only", default="", help="comma-separated run indices of the plan")
    p.add_argument("--worker", default="0/1",
                   help="k/n: run only plan entries i with i %% n == k (parallel processes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = resolve_device(args.device)
    windows = {16: read_windows(args.calibration)}
    if args.calibration32:
        windows[32] = read_windows(args.calibration32)
    evaluation, ood = read_windows(args.evaluation), read_windows(args.ood)
    out = Path(args.out)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            done.add(rec["key"])
    runs = PLANS[args.plan]()
    if args.only:  # indices of the whole plan, before the 32-window runs are dropped
        runs = [runs[int(i)] for i in args.only.split(",")]
    if not args.calibration32:
        runs = [r for r in runs if r["windows"] == 16]
    k, n = (int(x) for x in args.worker.split("/"))
    runs = runs[k::n]
    ppl_dense = None
    # a killed worker (kill, a session's end) still removes its scratch curvature files, which
    # live in /dev/shm, i.e. in memory: SIGTERM unwinds like Ctrl-C instead of exiting at once
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        for run in runs:
            key = run_key(run)
            if key in done:
                continue
            if ppl_dense is None and "dense" not in done:
                model = load_model(args.model, device)
                rec = {"key": "dense", "ppl": perplexity(model, evaluation, progress=False),
                       "ppl_ood": perplexity(model, ood, progress=False), "device": str(device)}
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
                ppl_dense = rec["ppl"]
                del model
            try:
                rec = {"key": key, **run_one(run, args, windows, evaluation, ood, Path(d),
                                             device)}
            except Exception:  # noqa: BLE001 - record and go on with the grid
                rec = {"key": key, **run, "error": traceback.format_exc(limit=6)}
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: v for k, v in rec.items() if k != "key"}), flush=True)


if __name__ == "__main__":
    main()
