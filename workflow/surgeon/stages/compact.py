"""Stage `compact`: a structured Llama without its zeroed heads and channels (rules/compact.smk)."""

from __future__ import annotations

import time


def cmd_compact(args):
    from ..artifacts import check_free_space
    from ..compact import compact_model
    from ..data import load_windows
    from ..model_folder import output_folder_bytes, write_model_folder
    from ..models import load_model

    start = time.time()
    check_free_space(args.out, output_folder_bytes(args.model))  # at most the folder again
    model = load_model(args.model, "cpu")
    small, summary = compact_model(model)
    if args.check_windows:
        import torch

        ids = load_windows(args.check_windows)[0][:1]
        with torch.no_grad():
            diff = (small(ids).logits - model(ids).logits).abs().max().item()
        summary["max_abs_logit_diff"] = diff
        summary["logit_check_tokens"] = ids.numel()
    write_model_folder(args.out, small, args.model, None, "compact", {"model": args.model}, {},
                       start, compaction=summary)
    print(f"compacted: {summary['decoder_linear_params_before']} -> "
          f"{summary['decoder_linear_params_after']} decoder-Linear weights; "
          f"{summary['zero_weights_left']} zeros could not be removed "
          f"(realised {summary['realised_fraction']:.1%} of the structured sparsity)")


def add_parsers(sub) -> None:
    s = sub.add_parser("compact", help="structured Llama -> smaller model without its zeroed units")
    s.add_argument("--model", required=True, help="structured pruned model folder")
    s.add_argument("--check-windows", default="",
                   help="windows file: record max |logit difference| on its first window")
    s.add_argument("--out", required=True, help="model folder to write")
    s.set_defaults(func=cmd_compact)
