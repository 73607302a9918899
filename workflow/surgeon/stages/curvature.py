"""Stages `curvature` and `inspect`: K-FAC factors of every decoder Linear, and their audit (rules/curvature.smk)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import SurgeonError

def cmd_curvature(args):
    import torch

    from ..artifacts import atomic_path, check_free_space, manifest, tree_hash, write_json, sidecar
    from ..data import load_windows
    from ..curvature import estimate_kfac, finished_passes_file, layer_metadata
    from ..curvature_store import curvature_bytes, write_curvature
    from ..models import decoder_linears, load_model, model_skeleton, resolve_device

    start = time.time()
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    # sized from the model's shapes, before any window is run
    layers = decoder_linears(model_skeleton(args.model))
    check_free_space(args.out, _peak_bytes(curvature_bytes(layers), ckpt))
    windows, wmeta = load_windows(args.calibration)
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    model_hash, data_hash = tree_hash(args.model), tree_hash(args.calibration)
    fingerprint = f"{model_hash}:{data_hash}:{args.fisher}:{args.batch_size}:{args.seed}"
    budget = factor_budget(args.factor_memory, device)
    factors, acc = estimate_kfac(model, windows, args.fisher, args.batch_size, ckpt,
                                 args.checkpoint_every, fingerprint, args.seed,
                                 max_factor_bytes=budget)
    layer_meta = layer_metadata(acc, fisher=args.fisher, dtype="float32", damping=0.0)
    meta = {"model_sha256": model_hash, "data_sha256": data_hash, "fisher": args.fisher,
            "windows": len(windows), "seqlen": int(windows.shape[1]),
            "created_by": "surgeon curvature", "torch": torch.__version__,
            "note": "A and G are undamped means; damping is applied where they are used"}
    info = manifest("curvature", {"model": args.model, "calibration": args.calibration},
                    {"fisher": args.fisher, "batch_size": args.batch_size, "seed": args.seed},
                    start)
    with atomic_path(args.out) as tmp:
        write_curvature(tmp, factors, meta, layer_meta)
        write_json(sidecar(args.out), {**info, "wall_time_s": round(time.time() - start, 3)})
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
        finished_passes_file(ckpt).unlink(missing_ok=True)


def factor_budget(gib: float, device) -> int:
    """Bytes of factors one pass over the windows may accumulate on the device: `gib` when
    given; else (0) on CUDA half the memory free once the model is loaded, on the CPU no limit
    (one pass: the host holds every factor at the end anyway)."""
    import torch

    if gib > 0:
        return int(gib * 2**30)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return 0


def _peak_bytes(factors: int, ckpt: Path | None) -> int:
    """Disk the stage needs at its peak: the .h5 written while the checkpoint of running sums
    (float32 too, as large again) is still there; a checkpoint already on disk (a resumed job)
    holds its share, as does the file of finished passes of a multi-pass estimate."""
    from ..curvature import finished_passes_file

    if ckpt is None:
        return factors
    on_disk = [p for p in (ckpt, finished_passes_file(ckpt)) if p.is_file()]
    return 2 * factors - sum(p.stat().st_size for p in on_disk)


def cmd_inspect(args):
    from ..inspect_curvature import curvature_table, format_rows, run_damping

    flags = {"damping_g": args.damping_g, "damping_a": args.damping_a}
    damping, notes = run_damping(args.curvature, flags)
    rows = curvature_table(args.curvature, damping["damping_g"], damping["damping_a"])
    print(format_rows(rows, args.format))
    bad = [r for r in rows if r["check"] != "ok"]
    if bad:
        raise SurgeonError(f"{len(bad)} layers have impossible factors (first {bad[0]['layer']}: "
                           f"{bad[0]['check']}): {args.curvature} is damaged; rebuild it with "
                           f"snakemake --forcerun {args.curvature}")
    # on stderr, so that the csv and json on stdout stay plain data
    print("damping of the cond_damped columns: " + "; ".join(notes), file=sys.stderr)


def add_parsers(sub) -> None:
    s = sub.add_parser("curvature", help="K-FAC factors of every decoder Linear -> curvature.h5")
    s.add_argument("--model", required=True, help="model folder whose curvature is estimated")
    s.add_argument("--calibration", required=True, help="calibration windows file")
    s.add_argument("--out", required=True, help="curvature .h5 file to write")
    s.add_argument("--fisher", choices=["empirical", "sampled"], default="empirical",
                   help="labels of the gradients: the text's (empirical) or drawn from the model")
    s.add_argument("--batch-size", type=int, default=1, help="windows per forward/backward pass")
    s.add_argument("--checkpoint", default="",
                   help="file of running sums a killed job resumes from")
    s.add_argument("--checkpoint-every", type=int, default=8,
                   help="windows between two checkpoint writes")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampled Fisher's labels")
    s.add_argument("--factor-memory", type=float, default=0.0,
                   help="GiB of factors accumulated on the device per pass over the windows; "
                        "more layers than fit take several passes (same result). 0: on CUDA "
                        "half the free GPU memory, on the CPU one pass")
    s.add_argument("--device", default="auto", help="where the model runs (auto: CUDA if present)")
    s.set_defaults(func=cmd_curvature)

    s = sub.add_parser("inspect", help="per-layer audit table of a curvature.h5")
    s.add_argument("curvature", help="curvature .h5 file to audit")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="aligned text, or CSV / JSON for scripts")
    s.add_argument("--damping-g", type=float, default=None,
                   help="relative damping of G for the condition numbers shown (default: what "
                        "the prune shots that read the file recorded, else 0.1)")
    s.add_argument("--damping-a", type=float, default=None,
                   help="relative damping of A for the condition numbers shown (default: what "
                        "the prune shots that read the file recorded, else 0.01)")
    s.set_defaults(func=cmd_inspect)
