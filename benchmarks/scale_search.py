"""Searched against largest-weight scales, for RTN and GPTQ, and GPTQ's shrink of H.

Q4_0 / Q5_0 blocks take their scale from the block's largest weight (d = m / -8), or from a
search weighted by the diagonal of the model's A factor (the mean squared input of each
column, what llama.cpp's importance matrix holds; `quantize.searched_scale`). RTN and GPTQ
with each, then GPTQ with searched scales and H = (1 - s) A + s diag(A) for each --shrink s:
every row quantizes the same model on the types `llama-quantize` picks for the file type and
is scored on the evaluation and out-of-domain windows (our evaluation).

  python benchmarks/scale_search.py --type Q4_0 Q4_K_M --shrink 0.25 0.5 0.75
"""

from __future__ import annotations

import json

from gptq_damping import evaluation_windows, model_arguments, scores


def main():
    p = model_arguments(__doc__)
    p.add_argument("--type", nargs="+", default=["Q4_0"], help="llama.cpp file types")
    p.add_argument("--methods", nargs="+", default=["rtn", "gptq"])
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ damping")
    p.add_argument("--shrink", type=float, nargs="*", default=[0.5],
                   help="GPTQ shrink values of the searched-scale rows")
    args = p.parse_args()
    windows = evaluation_windows(args)
    rows = []
    for file_type in args.type:
        plan = [(method, search, 0.0) for method in args.methods for search in (False, True)]
        plan += [("gptq", True, s) for s in args.shrink if "gptq" in args.methods]
        for method, search, shrink in plan:
            rows.append(scores(args.model, args.curvature, file_type, method, args.damp,
                               windows, scale_search=search, shrink=shrink))
            print(json.dumps(rows[-1]), flush=True)
    print("| type | method | scales | shrink | ppl | ppl_ood |\n|---|---|---|---|---|---|")
    for r in rows:
        scales = "searched" if r["scale_search"] else "largest weight"
        shrink = f"{r['shrink']:g}" if r["method"] == "gptq" else ""
        print(f"| {r['type']} | {r['method']} | {scales} | {shrink} | {r['ppl']:.3f} "
              f"| {r['ppl_ood']:.3f} |")


if __name__ == "__main__":
    main()
