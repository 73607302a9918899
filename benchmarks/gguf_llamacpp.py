"""Our GGUF exports against llama.cpp's own quantizer, scored in llama.cpp itself.

For each model folder (with the curvature file GPTQ reads its H from) and each llama.cpp file
type: our GPTQ codes on llama-quantize's per-tensor types (the quantize stage with
--gguf-type: searched scales and shrink quantize.GPTQ_SHRINK unless --plain-scales / --shrink),
exported, and llama-quantize of the same model written as F32, without and
with an importance matrix (the diagonals of the same curvature's A factors: the mean squared
input of every column over the calibration windows, what llama-imatrix computes). Columns: file
bytes, our evaluation of the quantized weights (transformers), and llama.cpp's perplexity of
each file, in-domain and out of domain. Needs llama-cpp-python (`make llama-cpp`).

  python benchmarks/gguf_llamacpp.py --model results/smollm2-135m/dense/model \\
      --curvature results/smollm2-135m/dense/curvature.h5 --types Q4_0 Q4_K_M
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from surgeon import llamacpp
from surgeon.curvature_store import open_curvature
from surgeon.data import load_windows
from surgeon.evaluate import perplexity
from surgeon.ggml_plan import file_type_grids
from surgeon.gguf_export import export_gguf, gguf_name
from surgeon.masks import load_mask, weight_columns
from surgeon.models import load_model, load_tokenizer
from surgeon.prune import decoder_weights
from surgeon.quantize import GPTQ_DAMP, GPTQ_SHRINK, quantize_embeddings, quantize_model

DATA = Path("results/smollm2-135m/data")


def ours(folder, curvature, file_type, out: Path, windows, threads, scale_search=True,
         shrink=0.0, damp=GPTQ_DAMP, wide=None) -> dict:
    """GPTQ on llama-quantize's types, exported; our and llama.cpp's perplexities. `wide`:
    (shrink, damp) instead for the tensors of 5 bits and more (Q5_0, Q6_K, Q8_0)."""
    model, tokenizer = load_model(folder, "cpu"), load_tokenizer(folder)
    removed = weight_columns(load_mask(folder, decoder_weights(model)), model)
    grids, table_grids = file_type_grids(model, file_type)
    if wide is not None:
        shrink, damp = ({n: w if g.bits >= 5 else v for n, g in grids.items()}
                        for v, w in zip((shrink, damp), wide))
    with open_curvature(curvature) as f:
        codes = quantize_model(model, "gptq", grids, removed, f, damp=damp, progress=False,
                               scale_search=scale_search, shrink=shrink)
    tables = quantize_embeddings(model, table_grids)
    export_gguf(model, tokenizer, codes, out, tables=tables, file_type=file_type)
    return {"bytes": out.stat().st_size,
            "ours": [perplexity(model, w, progress=False) for w in windows],
            "llama.cpp": [llamacpp.perplexity(out, w, threads) for w in windows]}


def theirs(f32: Path, file_type, out: Path, windows, threads, importance=None) -> dict:
    llamacpp.quantize(f32, out, file_type, threads, importance)
    return {"bytes": out.stat().st_size,
            "llama.cpp": [llamacpp.perplexity(out, w, threads) for w in windows]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", nargs="+", default=["results/smollm2-135m/dense/model"],
                   help="model folders")
    p.add_argument("--curvature", nargs="+", default=["results/smollm2-135m/dense/curvature.h5"],
                   help="curvature .h5 of each model (GPTQ's H)")
    p.add_argument("--types", nargs="+", default=["Q4_0", "Q4_K_M"], help="llama.cpp file types")
    p.add_argument("--evaluation", default=str(DATA / "evaluation.safetensors"))
    p.add_argument("--ood", default=str(DATA / "ood.safetensors"))
    p.add_argument("--windows", type=int, default=0, help="first N windows of each (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shrink", type=float, default=GPTQ_SHRINK, help="GPTQ's shrink of H")
    p.add_argument("--damp", type=float, default=GPTQ_DAMP, help="GPTQ's damping of H")
    p.add_argument("--wide", type=float, nargs=2, metavar=("SHRINK", "DAMP"), default=None,
                   help="GPTQ's shrink and damping on the tensors of 5 bits and more "
                        "(default: --shrink and --damp everywhere)")
    p.add_argument("--plain-scales", action="store_true",
                   help="our Q4_0 / Q5_0 scales from the largest weight, not searched")
    p.add_argument("--out", default="", help="JSON of the rows (default: print only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    windows = [load_windows(path)[0] for path in (args.evaluation, args.ood)]
    windows = [w[: args.windows] if args.windows else w for w in windows]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for folder, curvature in zip(args.model, args.curvature, strict=True):
            model = load_model(folder, "cpu")
            with open_curvature(curvature) as f:  # the calibration windows GPTQ's H is from
                importance = llamacpp.importance_matrix(
                    f, {n: gguf_name(f"{n}.weight") for n in decoder_weights(model)})
            f32 = tmp / "f32.gguf"
            export_gguf(model, load_tokenizer(folder), {}, f32, tables={}, file_type="F32")
            f32_ppl = [llamacpp.perplexity(f32, w, args.threads) for w in windows]
            dense = [perplexity(model, w, progress=False) for w in windows]
            rows.append({"model": folder, "type": "F32", "bytes": f32.stat().st_size,
                         "ours": dense, "llama.cpp": f32_ppl})
            for file_type in args.types:
                start = time.time()
                row = ours(folder, curvature, file_type, tmp / "ours.gguf", windows,
                           args.threads, not args.plain_scales, args.shrink, args.damp,
                           args.wide)
                rows.append({"model": folder, "type": file_type, "by": "ours (GPTQ)",
                             "scale_search": not args.plain_scales, "shrink": args.shrink,
                             "damp": args.damp, "wide": args.wide,
                             "seconds": round(time.time() - start), **row})
                row = theirs(f32, file_type, tmp / "theirs.gguf", windows, args.threads)
                rows.append({"model": folder, "type": file_type, "by": "llama-quantize", **row})
                row = theirs(f32, file_type, tmp / "theirs-imatrix.gguf", windows, args.threads,
                             importance)
                rows.append({"model": folder, "type": file_type,
                             "by": "llama-quantize + imatrix", **row})
                for r in rows[-3:]:
                    print(json.dumps(r), flush=True)
    print("| model | type | quantized by | file bytes | our ppl (in / ood) | llama.cpp ppl "
          "(in / ood) |")
    print("|---|---|---|---:|---|---|")
    for r in rows:
        ppl = " / ".join(f"{x:.3f}" for x in r.get("ours", [])) or "-"
        print(f"| {r['model']} | {r['type']} | {r.get('by', 'export')} | {r['bytes']:,} | "
              f"{ppl} | {' / '.join(f'{x:.3f}' for x in r['llama.cpp'])} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
