"""Cost of one pruning shot, as a ratio to one plain forward+backward pass over the calibration
windows (the floor: the curvature of a shot needs exactly that pass).

Measures, in one run on one device: the forward+backward pass; the curvature stage (K-FAC
accumulation and the HDF5 file); LLM Surgeon unstructured, 2:4 and structured (coupled units),
split into the cost/threshold pass and the update pass; SparseGPT and Wanda (layer by layer, as
the default config runs them, at 50% and 2:4); one perplexity pass over the evaluation windows.
Every method prunes a fresh copy of the dense model in one shot to its target (LLM Surgeon's
default runs 4 such shots, each with its own curvature). Timings only, no assertions.

  python benchmarks/shot_cost.py                      # the default run's model and windows
  python benchmarks/shot_cost.py --device cuda --out docs/shot_cost_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from surgeon import prune
from surgeon.curvature import estimate_kfac, layer_metadata, window_loss
from surgeon.curvature_store import write_curvature
from surgeon.data import load_windows
from surgeon.evaluate import perplexity
from surgeon.models import load_model, resolve_device
from surgeon.prune import decoder_weights, prune_shot

RESULTS = Path("results/smollm2-135m")
SHOTS = [  # (row label, method, structure, target, extra prune_shot arguments)
    ("LLM Surgeon 50%", "llm-surgeon", "unstructured", 0.5, {"damp_g": 1.0}),
    ("LLM Surgeon 2:4", "llm-surgeon", "2:4", 0.5, {"damp_g": 1.0, "nm_schedule": "elements"}),
    ("LLM Surgeon structured 20%", "llm-surgeon", "structured", 0.2,
     {"damp_g": 10.0, "units": "coupled"}),
    ("SparseGPT 50%", "sparsegpt", "unstructured", 0.5, {"sequential": True}),
    ("SparseGPT 2:4", "sparsegpt", "2:4", 0.5, {"sequential": True}),
    ("Wanda 50%", "wanda", "unstructured", 0.5, {"sequential": True}),
    ("Wanda 2:4", "wanda", "2:4", 0.5, {"sequential": True}),
]
UPDATE_PASSES = ("surgeon_element_updates", "apply_structured")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def update_timer(seconds: list):
    """Wrap prune's update passes so their wall time adds up in `seconds`."""
    originals = {name: getattr(prune, name) for name in UPDATE_PASSES}

    def timed(fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds.append(time.perf_counter() - start)
        return run

    for name, fn in originals.items():
        setattr(prune, name, timed(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(prune, name, fn)


def forward_backward(model, windows, device) -> float:
    """One pass: loss and backward per window, batch 1, as the curvature stage runs it."""
    for p in model.parameters():
        p.requires_grad_(False)
    sync(device)
    start = time.perf_counter()
    for i in range(len(windows)):
        window_loss(model, windows[i : i + 1].to(device), "empirical").backward()
    sync(device)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(RESULTS / "dense/model"))
    p.add_argument("--calibration", default=str(RESULTS / "data/calibration.safetensors"))
    p.add_argument("--evaluation", default=str(RESULTS / "data/evaluation.safetensors"))
    p.add_argument("--device", default="auto")
    p.add_argument("--only", nargs="*", help="labels of the shots to run (default: all)")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args()
    device = resolve_device(args.device)
    windows, _ = load_windows(args.calibration)
    rows = []

    def row(label, seconds, **parts):
        rows.append({"phase": label, "seconds": round(seconds, 2), **parts})
        base = rows[0]["seconds"]
        extra = "".join(f"  {k} {v:.1f} s" for k, v in parts.items())
        print(f"{label:32s} {seconds:8.1f} s  {seconds / base:6.2f}x{extra}", flush=True)

    model = load_model(args.model, device)
    row("forward+backward", forward_backward(model, windows, device))
    with tempfile.TemporaryDirectory() as tmp:
        curvature = Path(tmp) / "curvature.h5"
        sync(device)
        start = time.perf_counter()
        factors, acc = estimate_kfac(model, windows, progress=False)
        write_curvature(curvature, factors, {}, layer_metadata(acc, dtype="float32"))
        sync(device)
        row("curvature", time.perf_counter() - start)
        del factors, acc, model
        for label, method, structure, target, extra in SHOTS:
            if args.only and label not in args.only:
                continue
            model = load_model(args.model, "cpu")
            removed = {n: torch.zeros_like(W, dtype=torch.bool)
                       for n, W in decoder_weights(model).items()}
            updates: list[float] = []
            sync(device)
            start = time.perf_counter()
            with update_timer(updates):
                prune_shot(model, method, target, removed, curvature, progress=False,
                           device=str(device), structure=structure, calibration=windows,
                           **extra)
            sync(device)
            total = time.perf_counter() - start
            parts = {"cost_pass": total - sum(updates), "update_pass": sum(updates)} \
                if updates else {}
            row(label, total, **parts)
    evaluation, _ = load_windows(args.evaluation)
    model = load_model(args.model, device)
    start = time.perf_counter()
    perplexity(model, evaluation, progress=False)
    sync(device)
    row(f"perplexity ({len(evaluation)} windows)", time.perf_counter() - start)
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "windows": list(windows.shape), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
