"""Stage `prune`: one pruning shot, optionally followed by the low-rank correction (rules/prune.smk)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import SurgeonError
from ..methods import COUPLED_COSTS, DAMPING_A_DEFAULT, METHODS, UNITS

def cmd_prune(args):
    from ..artifacts import check_free_space
    from ..data import load_windows
    from ..model_folder import output_folder_bytes, write_model_folder
    from ..masks import load_mask
    from ..methods import damping_g_default
    from ..models import load_model, resolve_device
    from ..prune import decoder_weights, prune_shot
    from ..threshold import linear_schedule

    start = time.time()
    if not 0 <= args.target < 1:
        raise SurgeonError(f"target {args.target} is outside [0, 1)")
    if not 1 <= args.shot <= args.shots:
        raise SurgeonError(f"shot {args.shot} is outside 1..{args.shots}")
    fraction = linear_schedule(args.target, args.shots, args.shot)
    if args.damping_g is None:
        args.damping_g = damping_g_default(args.structure)
    check_free_space(args.out, output_folder_bytes(args.model))
    model = load_model(args.model, "cpu")
    removed = load_mask(args.model, decoder_weights(model))
    windows = load_windows(args.calibration)[0] if args.calibration else None
    masks = prune_shot(model, args.method, fraction, removed,
                       Path(args.curvature) if args.curvature else None,
                       args.damping_g, args.damping_a,
                       device=str(resolve_device(args.device)), structure=args.structure,
                       calibration=windows, sequential=args.sequential,
                       nm_schedule=args.nm_schedule, units=args.units,
                       coupled_cost=args.coupled_cost,
                       cache_bytes=args.inverse_cache * 2**30)
    correction = None
    if args.lora_steps > 0:
        correction = _low_rank_correction(model, windows, masks, args)
    inputs = {"model": args.model}
    for name in ("curvature", "calibration"):
        if getattr(args, name):
            inputs[name] = getattr(args, name)
    config = {k: getattr(args, k) for k in ("method", "structure", "target", "shots", "shot",
                                            "sequential", "nm_schedule", "lora_steps",
                                            "lora_rank", "lora_lr", "lora_windows")}
    if args.structure == "structured":
        config["units"] = args.units or METHODS[args.method].units[0]
        if config["units"] == "coupled" and METHODS[args.method].update == "obs":
            config["coupled_cost"] = args.coupled_cost
    update = METHODS[args.method].update  # record only the damping the method reads
    config.update({"damping_g": args.damping_g} if update == "obs" else {})
    reads_a = update in ("obs", "sweep", "layer-obs")
    config.update({"damping_a": args.damping_a} if reads_a else {})
    write_model_folder(args.out, model, args.model, masks, "prune", inputs, config, start,
                       earlier_wall=_curvature_wall(args), cumulative_fraction=fraction,
                       low_rank_correction=correction)


def _low_rank_correction(model, windows, masks, args) -> dict:
    """Masked LoRA on the first `lora_windows` calibration windows, merged (docs/algorithms.md §6)."""
    from ..lora import lora_correct
    from ..models import resolve_device
    from ..masks import weight_columns

    if windows is None:
        raise SurgeonError("the low-rank correction needs --calibration windows")
    weight_masks = weight_columns(masks, model)
    model.to(resolve_device(args.device))
    try:
        return lora_correct(model, windows[: args.lora_windows], weight_masks,
                            rank=args.lora_rank, alpha=2 * args.lora_rank,
                            steps=args.lora_steps, lr=args.lora_lr, seed=args.seed)
    finally:
        model.to("cpu")


def _curvature_wall(args) -> float:
    """Seconds the curvature this shot read took to estimate (added to the compression time)."""
    from ..artifacts import sidecar

    if args.curvature and sidecar(args.curvature).is_file():
        return json.loads(sidecar(args.curvature).read_text()).get("wall_time_s", 0.0)
    return 0.0


def add_parsers(sub) -> None:
    s = sub.add_parser("prune", help="one pruning shot -> model folder with mask")
    s.add_argument("--model", required=True, help="model of the previous shot")
    s.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    s.add_argument("--structure", default="unstructured", help="unstructured, 2:4 or structured")
    s.add_argument("--target", type=float, required=True,
                   help="share of decoder-Linear parameters removed after the last shot, [0, 1)")
    s.add_argument("--shots", type=int, default=1, help="shots that reach the target")
    s.add_argument("--shot", type=int, default=1,
                   help="this shot (1..shots): it removes target * shot / shots in all")
    s.add_argument("--curvature", default="",
                   help="curvature .h5 of --model, for the methods that read it")
    s.add_argument("--calibration", default="",
                   help="token windows (llm-pruner gradients, low-rank correction)")
    s.add_argument("--lora-steps", type=int, default=0,
                   help="masked LoRA steps after the shot, merged (0 = no correction)")
    s.add_argument("--lora-rank", type=int, default=8, help="rank of the correction's adapters")
    s.add_argument("--lora-lr", type=float, default=1e-4, help="learning rate of the correction")
    s.add_argument("--lora-windows", type=int, default=8,
                   help="calibration windows the correction trains on")
    s.add_argument("--seed", type=int, default=0, help="seed of the correction")
    s.add_argument("--damping-g", type=float, default=None,
                   help="relative damping of G (default: 0.01 structured, else 0.1)")
    s.add_argument("--damping-a", type=float, default=DAMPING_A_DEFAULT,
                   help="relative damping of A (LLM Surgeon, SparseGPT, SlimGPT-style)")
    s.add_argument("--units", choices=sorted(UNITS), default=None,
                   help="structured units: coupled (MLP channels, attention groups: what "
                   "compaction removes) or rows-columns (default: the method's first)")
    s.add_argument("--coupled-cost", choices=list(COUPLED_COSTS), default="output",
                   help="llm-surgeon, coupled units: output (a unit costed on its output layer, "
                   "global greedy with downdates) or summed (row and column costs of every "
                   "layer it touches, the earlier version)")
    s.add_argument("--nm-schedule", choices=["blocks", "elements"], default="blocks",
                   help="2:4 over several shots: whole blocks per shot, or single elements "
                   "(at most two per block) by one global threshold")
    s.add_argument("--sequential", action="store_true",
                   help="sparsegpt/wanda: layer by layer on the outputs of the pruned layers "
                   "before (needs --calibration), instead of the dense curvature's A")
    s.add_argument("--inverse-cache", type=float, default=6.0,
                   help="GiB of layer inverses kept between the cost and the update pass; a "
                        "model whose inverses need more reads its factors again, one layer at a "
                        "time (same result)")
    s.add_argument("--device", default="auto", help="where the maths runs (auto: CUDA if present)")
    s.add_argument("--out", required=True, help="model folder to write (with its mask)")
    s.set_defaults(func=cmd_prune)
