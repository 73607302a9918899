"""Stages `import-model`, `calibrate`, `windows`, `ood-windows`: a model folder and token windows (rules/data.smk)."""

from __future__ import annotations

import time

from ..errors import SurgeonError

def cmd_import_model(args):
    from ..artifacts import atomic_path, manifest, write_json
    from ..models import load_source, save_model

    start = time.time()
    model, tokenizer = load_source(args.source)
    with atomic_path(args.out, directory=True) as tmp:
        save_model(model, tokenizer, tmp)
        write_json(tmp / "manifest.json", manifest(
            "import-model", {}, {"source": args.source}, start,
            architecture=type(model).__name__,
        ))


def cmd_calibrate(args):
    from ..artifacts import tree_hash
    from ..data import (calibration_windows, cut_windows, load_split, save_windows, tokenize,
                        tokenizer_hash)
    from transformers import AutoConfig

    from ..models import context_length, load_tokenizer

    ctx = context_length(AutoConfig.from_pretrained(args.model))
    if ctx is not None and args.seqlen > ctx:
        raise SurgeonError(f"seqlen {args.seqlen} exceeds the model's context length {ctx}")
    if args.seqlen < 2:
        raise SurgeonError("seqlen must be at least 2")
    if not 0 < args.evaluation_fraction < 1:
        raise SurgeonError("evaluation fraction must be in (0, 1)")
    tokenizer = load_tokenizer(args.model)
    split = load_split(args.source, args.evaluation_fraction)
    cal_ids, ev_ids = tokenize(tokenizer, split.calibration), tokenize(tokenizer, split.evaluation)
    cal = calibration_windows(cal_ids, args.seqlen, args.windows, args.seed)
    ev = cut_windows(ev_ids, args.seqlen)
    if args.max_eval_windows:
        ev = ev[: args.max_eval_windows]
    if len(ev) == 0:
        dropped = split.description.get("evaluation_paragraphs_dropped_as_shared", 0)
        why = (f"; {dropped} of its paragraphs were dropped because they also occur in the "
               "calibration text (repeated documents)" if dropped else "")
        raise SurgeonError(f"evaluation text of {args.source} is shorter than one window of "
                           f"{args.seqlen} tokens{why}")
    meta = {**split.description, "seed": args.seed, "seqlen": args.seqlen,
            "tokenizer_hash": tokenizer_hash(tokenizer), "model_sha256": tree_hash(args.model)}
    save_windows(args.calibration_out, cal, {**meta, "part": "calibration", "count": len(cal),
                                     "tokens_available": cal_ids.numel()})
    save_windows(args.evaluation_out, ev, {**meta, "part": "evaluation", "count": len(ev),
                                   "tokens_available": ev_ids.numel()})


def cmd_windows(args):
    from ..data import calibration_windows, load_split, save_windows, tokenize, tokenizer_hash
    from ..models import load_tokenizer
    tokenizer = load_tokenizer(args.model)
    split = load_split(args.source, args.evaluation_fraction)
    ids = tokenize(tokenizer, split.calibration)
    windows = calibration_windows(ids, args.seqlen, args.windows, args.seed, args.setting)
    save_windows(args.out, windows, {**split.description, "seed": args.seed, "seqlen": args.seqlen,
                             "part": "calibration split", "count": len(windows),
                             "tokens_available": ids.numel(),
                             "tokenizer_hash": tokenizer_hash(tokenizer)})


def cmd_ood_windows(args):
    """Windows of a text of another kind than the calibration text, for `ppl_ood`."""
    from ..data import (calibration_windows, cut_windows, ood_text, save_windows, tokenize,
                        tokenizer_hash)
    from ..models import load_tokenizer
    tokenizer = load_tokenizer(args.model)
    ids = tokenize(tokenizer, ood_text(args.source))
    available = len(cut_windows(ids, args.seqlen))
    if available == 0:
        raise SurgeonError(f"out-of-domain text {args.source} is shorter than one window of "
                           f"{args.seqlen} tokens")
    windows = calibration_windows(ids, args.seqlen, min(args.windows, available), args.seed,
                                  "data.ood_windows")
    save_windows(args.out, windows, {"source": args.source, "seed": args.seed, "seqlen": args.seqlen,
                             "part": "out-of-domain", "count": len(windows),
                             "tokens_available": ids.numel(),
                             "tokenizer_hash": tokenizer_hash(tokenizer)})


def _text_window_arguments(s) -> None:
    """Options shared by the stages that cut token windows from a text source."""
    s.add_argument("--model", required=True, help="model folder (for its tokenizer)")
    s.add_argument("--source", required=True,
                   help="embedded:NAME, a .txt/.jsonl file or glob, or a hub data set")
    s.add_argument("--seqlen", type=int, required=True, help="tokens per window")
    s.add_argument("--windows", type=int, required=True, help="windows to draw from the calibration split")
    s.add_argument("--evaluation-fraction", type=float, default=0.2,
                   help="last share of the text kept for evaluation, never calibrated on")
    s.add_argument("--seed", type=int, default=0, help="seed of the window draw")


def add_parsers(sub) -> None:
    s = sub.add_parser("import-model", help="hub id / folder / .gguf / embedded:NAME -> HF folder")
    s.add_argument("--source", required=True,
                   help="hub id, local HF folder, .gguf file, or embedded:NAME")
    s.add_argument("--out", required=True, help="model folder to write")
    s.set_defaults(func=cmd_import_model)

    s = sub.add_parser("calibrate", help="text -> calibration and evaluation token windows")
    _text_window_arguments(s)
    s.add_argument("--max-eval-windows", type=int, default=0,
                   help="evaluation windows kept (0 = every window of the evaluation text)")
    s.add_argument("--calibration-out", required=True, help="calibration windows file to write")
    s.add_argument("--evaluation-out", required=True, help="evaluation windows file to write")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("windows", help="token windows from the calibration split of a text")
    _text_window_arguments(s)
    s.add_argument("--setting", default="--windows", help="config key named in errors")
    s.add_argument("--out", required=True, help="windows file to write")
    s.set_defaults(func=cmd_windows)

    s = sub.add_parser("ood-windows", help="token windows of an out-of-domain text (ppl_ood)")
    s.add_argument("--model", required=True, help="model folder (for its tokenizer)")
    s.add_argument("--source", required=True,
                   help="embedded:common-licenses, a .txt/.jsonl file or glob, or a hub data set")
    s.add_argument("--seqlen", type=int, required=True, help="tokens per window")
    s.add_argument("--windows", type=int, required=True, help="at most this many windows")
    s.add_argument("--seed", type=int, default=0, help="seed of the window draw")
    s.add_argument("--out", required=True, help="windows file to write")
    s.set_defaults(func=cmd_ood_windows)
