"""Stage `evaluate`: perplexity in and out of domain, sparsity, size and speed (rules/evaluate.smk)."""

from __future__ import annotations

import time

from ..artifacts import made_by, prune_settings


def llama_cpp_scores(args, windows, ood_windows=None) -> dict:
    """Perplexities of the model's .gguf export computed by llama.cpp itself, beside ours."""
    from pathlib import Path

    from .. import llamacpp
    from ..errors import SurgeonError

    files = [Path(f) for f in args.exports if str(f).endswith(".gguf")]
    if not files:
        raise SurgeonError("--llama-cpp scores a .gguf export: none among --exports")
    scores = {"ppl_llamacpp": llamacpp.perplexity(files[0], windows, args.threads)}
    if ood_windows is not None:
        scores["ppl_ood_llamacpp"] = llamacpp.perplexity(files[0], ood_windows, args.threads)
    return scores


def cmd_evaluate(args):
    import torch

    from ..data import load_windows
    from ..artifacts import write_json
    from ..evaluate import (export_sizes, parameter_counts, perplexity, sparsity_stats,
                           stored_size)
    from ..models import load_model, resolve_device

    start = time.time()
    windows, _meta = load_windows(args.evaluation)
    model = load_model(args.model, resolve_device(args.device))
    ppl = perplexity(model, windows, args.batch_size)
    ood_windows, extra_ppl = None, {}
    if args.ood:
        ood_windows, ood_meta = load_windows(args.ood)
        extra_ppl = {"ppl_ood": perplexity(model, ood_windows, args.batch_size),
                     "ood_source": ood_meta.get("source", ""), "ood_windows": len(ood_windows)}
    stats = sparsity_stats(model)
    maker = made_by(args.model)
    compress_wall = maker.get("compress_wall_s", 0.0)
    extra = {k: maker[k] for k in ("compaction", "quantization") if k in maker}
    if args.exports:
        extra["export_bytes"] = export_sizes(args.exports)
    if args.llama_cpp:
        extra.update(llama_cpp_scores(args, windows, ood_windows))
    speed = {}
    if args.speed_new_tokens:
        from ..evaluate import tokens_per_second

        prompt = windows[0, : args.speed_prompt_tokens]
        speed = {"tokens_per_s": round(tokens_per_second(model, prompt, args.speed_new_tokens), 2),
                 "speed_prompt_tokens": len(prompt), "speed_new_tokens": args.speed_new_tokens,
                 "speed_device": str(next(model.parameters()).device),
                 "speed_threads": torch.get_num_threads()}
    pruned = prune_settings(args.model)  # what was done to the model, from its manifests
    shot = pruned.get("shot", 0)
    write_json(args.out, {
        **speed,
        **extra,
        "model": args.model_name, "experiment": args.experiment,
        "method": pruned.get("method", "none"), "structure": pruned.get("structure", "none"),
        "target": pruned.get("target", 0.0), "shot": shot, "shots": pruned.get("shots", shot),
        "stage": args.eval_stage or ("dense" if shot == 0 else f"shot-{shot}"),
        "model_dir": str(args.model), "ppl": ppl, **extra_ppl, "eval_windows": len(windows),
        "seqlen": int(windows.shape[1]), **stats, **parameter_counts(model),
        "size_bytes": stored_size(args.model), "compress_wall_s": compress_wall,
        "eval_wall_s": round(time.time() - start, 3),
    })
    ood = f", out-of-domain ppl {extra_ppl['ppl_ood']:.3f}" if extra_ppl else ""
    print(f"{args.experiment} shot {shot}: ppl {ppl:.3f}{ood}, "
          f"sparsity {stats['sparsity']:.4f}")


def add_parsers(sub) -> None:
    s = sub.add_parser("evaluate", help="perplexity, sparsity, size -> eval JSON")
    s.add_argument("--model", required=True, help="model folder to evaluate")
    s.add_argument("--evaluation", required=True, help="evaluation windows file")
    s.add_argument("--ood", default="", help="windows of an out-of-domain text: adds ppl_ood")
    s.add_argument("--out", required=True, help="eval JSON to write")
    s.add_argument("--model-name", default="model", help="model name recorded (for the report)")
    s.add_argument("--experiment", default="dense", help="experiment recorded (for the report)")
    s.add_argument("--stage", dest="eval_stage", default="",
                   help="dense, shot-K, recovered or compact (default: shot-K of the prune shot "
                   "the model's manifests lead to, or dense)")
    s.add_argument("--speed-prompt-tokens", type=int, default=64,
                   help="prompt length of the tokens/s measurement")
    s.add_argument("--speed-new-tokens", type=int, default=0,
                   help="also measure greedy tokens/s generating this many tokens (0 = skip)")
    s.add_argument("--exports", nargs="*", default=[],
                   help="exported files/folders of a quantized model (.gguf, compressed-tensors)"
                   " whose sizes are recorded")
    s.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    s.add_argument("--llama-cpp", action="store_true",
                   help="also score the .gguf among --exports in llama.cpp itself (needs the "
                        "optional llama-cpp-python: make llama-cpp)")
    s.add_argument("--device", default="auto", help="where the model runs (auto: CUDA if present)")
    s.set_defaults(func=cmd_evaluate)
