"""GPTQ's damping against in-domain and out-of-domain perplexity, beside RTN on the same grid.

GPTQ's H is the A factor of the calibration windows (a narrow text); a small damping fits the
rounding errors to that text. For each damping (relative to the mean diagonal of H) the model
is quantized on a llama.cpp file type and scored on the evaluation and out-of-domain windows.

  python benchmarks/gptq_damping.py --type Q4_0 --damp 0.01 0.1 1.0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from surgeon.curvature_store import open_curvature
from surgeon.data import load_windows
from surgeon.evaluate import perplexity
from surgeon.ggml_plan import file_type_grids
from surgeon.masks import load_mask, weight_columns
from surgeon.models import load_model
from surgeon.prune import decoder_weights
from surgeon.quantize import quantize_embeddings, quantize_model

DATA = Path("results/smollm2-135m/data")


def scores(folder, curvature, file_type, method, damp, windows, scale_search=False,
           shrink=0.0) -> dict:
    model = load_model(folder, "cpu")
    removed = weight_columns(load_mask(folder, decoder_weights(model)), model)
    grids, table_grids = file_type_grids(model, file_type)
    start = time.time()
    with open_curvature(curvature) as f:
        quantize_model(model, method, grids, removed, f, damp, progress=False,
                       scale_search=scale_search, shrink=shrink)
    quantize_embeddings(model, table_grids)
    seconds = time.time() - start
    ppl = [perplexity(model, w, progress=False) for w in windows]
    return {"model": folder, "type": file_type, "method": method, "damp": damp,
            "scale_search": scale_search, "shrink": shrink, "ppl": ppl[0], "ppl_ood": ppl[1],
            "quantize_s": round(seconds)}


def model_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments every quantization benchmark takes: model, curvature, both texts."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="results/smollm2-135m/dense/model")
    p.add_argument("--curvature", default="results/smollm2-135m/dense/curvature.h5")
    p.add_argument("--evaluation", default=str(DATA / "evaluation.safetensors"))
    p.add_argument("--ood", default=str(DATA / "ood.safetensors"))
    p.add_argument("--threads", type=int, default=2)
    return p


def evaluation_windows(args) -> list:
    torch.set_num_threads(args.threads)
    return [load_windows(path)[0] for path in (args.evaluation, args.ood)]


def main():
    p = model_arguments(__doc__)
    p.add_argument("--type", default="Q4_0", help="llama.cpp file type")
    p.add_argument("--damp", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    args = p.parse_args()
    windows = evaluation_windows(args)
    rows = [scores(args.model, args.curvature, args.type, "rtn", 0.0, windows)]
    print(json.dumps(rows[-1]), flush=True)
    for damp in args.damp:
        rows.append(scores(args.model, args.curvature, args.type, "gptq", damp, windows))
        print(json.dumps(rows[-1]), flush=True)
    print("| method | damp | ppl | ppl_ood |\n|---|---|---|---|")
    for r in rows:
        damp = f"{r['damp']:g}" if r["method"] == "gptq" else ""
        print(f"| {r['method']} | {damp} | {r['ppl']:.3f} | {r['ppl_ood']:.3f} |")


if __name__ == "__main__":
    main()
