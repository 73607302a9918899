"""`surgeon <stage>`: every stage with explicit input and output paths (the rules call these)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import SurgeonError


def _windows_io():
    from safetensors import safe_open
    from safetensors.torch import save_file

    def save(path, windows, meta):
        from .artifacts import atomic_path

        with atomic_path(path) as tmp:
            save_file({"windows": windows.contiguous()}, str(tmp),
                      metadata={k: str(v) for k, v in meta.items()})

    def load(path):
        if not Path(path).is_file():
            raise SurgeonError(f"windows file not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                return f.get_tensor("windows"), f.metadata()
        except Exception as err:
            from .artifacts import rebuild_hint

            raise SurgeonError(f"cannot read windows file {path} (corrupt?): {err}; "
                               + rebuild_hint(path)) from None

    return save, load


def cmd_import_model(args):
    from .artifacts import atomic_path, manifest, write_json
    from .models import load_source, save_model

    start = time.time()
    model, tokenizer = load_source(args.source)
    with atomic_path(args.out, directory=True) as tmp:
        save_model(model, tokenizer, tmp)
        write_json(tmp / "manifest.json", manifest(
            "import-model", {}, {"source": args.source}, start,
            architecture=type(model).__name__,
        ))


def cmd_calibrate(args):
    from .artifacts import tree_hash
    from .data import calibration_windows, cut_windows, load_split, tokenize, tokenizer_hash
    from .models import load_tokenizer

    from transformers import AutoConfig

    save, _ = _windows_io()
    cfg = AutoConfig.from_pretrained(args.model)
    ctx = getattr(cfg, "max_position_embeddings", None)
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
        raise SurgeonError(f"evaluation text is shorter than one window of {args.seqlen} tokens")
    meta = {**split.description, "seed": args.seed, "seqlen": args.seqlen,
            "tokenizer_hash": tokenizer_hash(tokenizer), "model_sha256": tree_hash(args.model)}
    save(args.calibration_out, cal, {**meta, "part": "calibration", "count": len(cal),
                                     "tokens_available": cal_ids.numel()})
    save(args.evaluation_out, ev, {**meta, "part": "evaluation", "count": len(ev),
                                   "tokens_available": ev_ids.numel()})


def cmd_curvature(args):
    import torch

    from .artifacts import atomic_path, manifest, tree_hash, write_json, sidecar
    from .curvature import estimate_kfac
    from .curvature_store import write_curvature
    from .models import load_model, resolve_device

    start = time.time()
    _, load = _windows_io()
    windows, wmeta = load(args.calibration)
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    model_hash, data_hash = tree_hash(args.model), tree_hash(args.calibration)
    fingerprint = f"{model_hash}:{data_hash}:{args.fisher}:{args.batch_size}:{args.seed}"
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    factors, acc = estimate_kfac(model, windows, args.fisher, args.batch_size, ckpt,
                                 args.checkpoint_every, fingerprint, args.seed)
    layer_meta = {
        name: {
            "weight_shape": [layer.out_features, layer.in_features + (layer.bias is not None)],
            "has_bias": layer.bias is not None,
            "tokens": acc.tokens[name],
            "fisher": args.fisher,
            "dtype": "float32",
            "damping": 0.0,
        }
        for name, layer in acc.layers.items()
    }
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
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()


def cmd_prune(args):
    from .artifacts import MASK_FILE, atomic_path, manifest, write_json
    from .models import load_model, load_tokenizer, resolve_device, save_model
    from .prune import load_mask, prune_shot, save_mask, decoder_weights
    from .threshold import linear_schedule

    start = time.time()
    if not 0 <= args.target < 1:
        raise SurgeonError(f"target {args.target} is outside [0, 1)")
    if not 1 <= args.shot <= args.shots:
        raise SurgeonError(f"shot {args.shot} is outside 1..{args.shots}")
    fraction = linear_schedule(args.target, args.shots, args.shot)
    model = load_model(args.model, "cpu")
    tokenizer = load_tokenizer(args.model)
    removed = load_mask(args.model, decoder_weights(model))
    windows = _windows_io()[1](args.calibration)[0] if args.calibration else None
    masks = prune_shot(model, args.method, fraction, removed,
                       Path(args.curvature) if args.curvature else None,
                       args.damping_g, args.damping_a,
                       device=str(resolve_device(args.device)), structure=args.structure,
                       calibration=windows, sequential=args.sequential,
                       nm_schedule=args.nm_schedule)
    correction = None
    if args.lora_steps > 0:
        correction = _low_rank_correction(model, windows, masks, args)
    inputs = {"model": args.model}
    for name in ("curvature", "calibration"):
        if getattr(args, name):
            inputs[name] = getattr(args, name)
    config = {k: getattr(args, k) for k in ("method", "structure", "target", "shots", "shot",
                                            "damping_g", "damping_a", "sequential", "nm_schedule",
                                            "lora_steps", "lora_rank", "lora_lr",
                                            "lora_windows")}
    with atomic_path(args.out, directory=True) as tmp:
        save_model(model, tokenizer, tmp)
        save_mask(tmp / MASK_FILE, masks)
        m = manifest("prune", inputs, config, start, cumulative_fraction=fraction,
                     low_rank_correction=correction)
        m["compress_wall_s"] = round(m["wall_time_s"] + _earlier_wall(args), 3)
        write_json(tmp / "manifest.json", m)


def _low_rank_correction(model, windows, masks, args) -> dict:
    """Masked LoRA on the first `lora_windows` calibration windows, merged (docs/algorithms.md §6)."""
    from .lora import lora_correct
    from .models import resolve_device
    from .prune import weight_columns

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


def _made_by(model_dir) -> dict:
    """The manifest of the stage that wrote `model_dir` ({} when there is none)."""
    path = Path(model_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _compress_wall(model_dir) -> float:
    """Seconds spent so far compressing the model in `model_dir` (0 for an imported model)."""
    return _made_by(model_dir).get("compress_wall_s", 0.0)


def _earlier_wall(args) -> float:
    """Wall time already spent on this compression: earlier shots and this shot's curvature."""
    from .artifacts import sidecar

    total = _compress_wall(args.model)
    if args.curvature and sidecar(args.curvature).is_file():
        total += json.loads(sidecar(args.curvature).read_text()).get("wall_time_s", 0.0)
    return total


def cmd_windows(args):
    from .data import calibration_windows, load_split, tokenize, tokenizer_hash
    from .models import load_tokenizer

    save, _ = _windows_io()
    tokenizer = load_tokenizer(args.model)
    split = load_split(args.source, args.evaluation_fraction)
    ids = tokenize(tokenizer, split.calibration)
    windows = calibration_windows(ids, args.seqlen, args.windows, args.seed, args.setting)
    save(args.out, windows, {**split.description, "seed": args.seed, "seqlen": args.seqlen,
                             "part": "calibration split", "count": len(windows),
                             "tokens_available": ids.numel(),
                             "tokenizer_hash": tokenizer_hash(tokenizer)})


def cmd_ood_windows(args):
    """Windows of a text of another kind than the calibration text, for `ppl_ood`."""
    from .data import calibration_windows, cut_windows, ood_text, tokenize, tokenizer_hash
    from .models import load_tokenizer

    save, _ = _windows_io()
    tokenizer = load_tokenizer(args.model)
    ids = tokenize(tokenizer, ood_text(args.source))
    available = len(cut_windows(ids, args.seqlen))
    if available == 0:
        raise SurgeonError(f"out-of-domain text {args.source} is shorter than one window of "
                           f"{args.seqlen} tokens")
    windows = calibration_windows(ids, args.seqlen, min(args.windows, available), args.seed,
                                  "data.ood_windows")
    save(args.out, windows, {"source": args.source, "seed": args.seed, "seqlen": args.seqlen,
                             "part": "out-of-domain", "count": len(windows),
                             "tokens_available": ids.numel(),
                             "tokenizer_hash": tokenizer_hash(tokenizer)})


def _load_teacher(path):
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise SurgeonError(f"teacher logits file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as err:
        raise SurgeonError(f"cannot read teacher logits {path} (corrupt?): {err}") from None


def _lora_fit(args, model, masks, quantized=None):
    """The training shared by recover and qat: settings, objective, resumable checkpoint.
    Returns the loss per optimizer step, the settings for the manifest, and its inputs."""
    from .artifacts import tree_hash
    from .distill import Objective
    from .lora import Checkpoint, LoraSettings, lora_train

    windows, _ = _windows_io()[1](args.windows)
    targets = None if args.targets == "all" else tuple(args.targets.split(","))
    settings = LoraSettings(rank=args.rank, alpha=args.alpha, steps=args.steps, lr=args.lr,
                            batch_size=args.batch_size, grad_accum=args.grad_accum,
                            seed=args.seed, targets=targets)
    if args.objective != "lm" and not args.teacher:
        raise SurgeonError(f"objective '{args.objective}' needs --teacher (top-k logits file)")
    teacher = _load_teacher(args.teacher) if args.objective != "lm" else None
    objective = Objective(args.objective, args.kd_weight, args.temperature, teacher)
    config = {k: getattr(args, k) for k in ("rank", "alpha", "targets", "steps", "lr",
                                            "batch_size", "grad_accum", "seed", "objective")}
    if teacher is not None:
        config.update(kd_weight=objective.weight, temperature=args.temperature,
                      top_k=int(teacher["indices"].shape[-1]))
    inputs = {"model": args.model, "windows": args.windows,
              **({"teacher": args.teacher} if teacher is not None else {})}
    checkpoint = None
    if args.checkpoint:
        fingerprint = json.dumps([tree_hash(p) for p in inputs.values()] + [config],
                                 sort_keys=True, default=list)
        checkpoint = Checkpoint(Path(args.checkpoint), args.checkpoint_every, fingerprint)
    losses = lora_train(model, windows, masks, settings, checkpoint, objective=objective,
                        quantized=quantized)
    if checkpoint is not None and checkpoint.path.exists():
        checkpoint.path.unlink()
    return losses, config, inputs


def _write_losses(path, losses):
    from .artifacts import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("step\tloss\n" + "".join(f"{i + 1}\t{v:.6f}\n"
                                                  for i, v in enumerate(losses)))


def _write_model_folder(out, model, source, masks, stage, inputs, config, start, codes=None,
                        codes_info=None, **extra):
    """A model folder a stage made from the one at `source`: weights, its tokenizer, the mask,
    integer codes when quantized, and the manifest with the compression time so far."""
    from .artifacts import MASK_FILE, QUANT_FILE, atomic_path, manifest, write_json
    from .models import load_tokenizer, save_model
    from .prune import save_mask
    from .quantize import save_codes

    with atomic_path(out, directory=True) as tmp:
        save_model(model, load_tokenizer(source), tmp)
        save_mask(tmp / MASK_FILE, masks)
        if codes is not None:
            save_codes(tmp / QUANT_FILE, codes, codes_info)
        m = manifest(stage, inputs, config, start, **extra)
        m["compress_wall_s"] = round(_compress_wall(source) + m["wall_time_s"], 3)
        write_json(tmp / "manifest.json", m)


def cmd_recover(args):
    from .models import load_model, resolve_device
    from .prune import decoder_weights, load_mask, weight_columns

    start = time.time()
    model = load_model(args.model, resolve_device(args.device))
    masks = load_mask(args.model, decoder_weights(model))
    losses, config, inputs = _lora_fit(args, model, weight_columns(masks, model))
    model.to("cpu")
    _write_losses(args.loss_out, losses)
    _write_model_folder(args.out, model, args.model, masks, "recover", inputs, config, start,
                        initial_loss=losses[0], final_loss=losses[-1])
    print(f"recovered: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")


def cmd_qat(args):
    import torch

    from .artifacts import QUANT_FILE
    from .models import decoder_linears, load_model, resolve_device
    from .prune import decoder_weights, load_mask, weight_columns
    from .qat import requantize
    from .quantize import load_codes

    start = time.time()
    quant = _made_by(args.model).get("quantization")
    if not quant or not (Path(args.model) / QUANT_FILE).is_file():
        raise SurgeonError(f"{args.model} is not a quantized model (run the quantize stage)")
    codes = load_codes(Path(args.model) / QUANT_FILE)
    model = load_model(args.model, resolve_device(args.device))
    masks = load_mask(args.model, decoder_weights(model), zeros=False)
    removed = weight_columns(masks, model)
    losses, config, inputs = _lora_fit(args, model, removed, quantized=codes)
    model.to("cpu")
    layers = decoder_linears(model)
    for name, q in codes.items():  # the merged weights back on the same grid
        codes[name] = requantize(layers[name].weight, q, removed[name])
        with torch.no_grad():
            layers[name].weight.copy_(codes[name].weight().to(layers[name].weight))
    info = {**quant, "qat": config, "quantized_from": str(args.model)}
    _write_losses(args.loss_out, losses)
    _write_model_folder(args.out, model, args.model, masks, "qat", inputs, config, start,
                        codes=codes, codes_info=quant, quantization=info,
                        initial_loss=losses[0], final_loss=losses[-1])
    print(f"quantization-aware LoRA: loss {losses[0]:.4f} -> {losses[-1]:.4f}, re-quantized on "
          f"the same {quant['bits']}-bit grid")


def cmd_teacher_logits(args):
    from safetensors.torch import save_file

    from .artifacts import atomic_path, manifest, sidecar, write_json
    from .distill import kept_mass, teacher_topk
    from .models import load_model, resolve_device

    start = time.time()
    windows, _ = _windows_io()[1](args.windows)
    model = load_model(args.model, resolve_device(args.device))
    cache = teacher_topk(model, windows, args.top_k, args.batch_size)
    mass = kept_mass(cache)
    info = {"top_k": args.top_k, "windows": len(windows), "positions": int(mass.numel()),
            "kept_mass_mean": round(mass.mean().item(), 6),
            "kept_mass_min": round(mass.min().item(), 6)}
    with atomic_path(args.out) as tmp:
        save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp),
                  metadata={k: str(v) for k, v in info.items()})
        write_json(sidecar(args.out), manifest("teacher-logits", {"model": args.model,
                                                                   "windows": args.windows},
                                               {"top_k": args.top_k}, start, teacher=info))
    print(f"teacher top-{args.top_k}: {info['kept_mass_mean']:.3f} of the probability mass kept "
          f"on average (min {info['kept_mass_min']:.3f})")


def cmd_evaluate(args):
    import torch

    from .artifacts import write_json
    from .evaluate import (export_sizes, parameter_counts, perplexity, sparsity_stats,
                           stored_size)
    from .models import load_model, resolve_device

    start = time.time()
    _, load = _windows_io()
    windows, _meta = load(args.evaluation)
    model = load_model(args.model, resolve_device(args.device))
    ppl = perplexity(model, windows, args.batch_size)
    if args.ood:
        ood_windows, ood_meta = load(args.ood)
        extra_ppl = {"ppl_ood": perplexity(model, ood_windows, args.batch_size),
                     "ood_source": ood_meta.get("source", ""), "ood_windows": len(ood_windows)}
    else:
        extra_ppl = {}
    stats = sparsity_stats(model)
    made_by = _made_by(args.model)
    compress_wall = made_by.get("compress_wall_s", 0.0)
    extra = {k: made_by[k] for k in ("compaction", "quantization") if k in made_by}
    if args.exports:
        extra["export_bytes"] = export_sizes(args.exports)
    speed = {}
    if args.speed_new_tokens:
        from .evaluate import tokens_per_second

        prompt = windows[0, : args.speed_prompt_tokens]
        speed = {"tokens_per_s": round(tokens_per_second(model, prompt, args.speed_new_tokens), 2),
                 "speed_prompt_tokens": len(prompt), "speed_new_tokens": args.speed_new_tokens,
                 "speed_device": str(next(model.parameters()).device),
                 "speed_threads": torch.get_num_threads()}
    write_json(args.out, {
        **speed,
        **extra,
        "model": args.model_name, "experiment": args.experiment, "method": args.method,
        "structure": args.structure, "target": args.target, "shot": args.shot,
        "shots": args.shots or args.shot,
        "stage": args.eval_stage or ("dense" if args.shot == 0 else f"shot-{args.shot}"),
        "model_dir": str(args.model), "ppl": ppl, **extra_ppl, "eval_windows": len(windows),
        "seqlen": int(windows.shape[1]), **stats, **parameter_counts(model),
        "size_bytes": stored_size(args.model), "compress_wall_s": compress_wall,
        "eval_wall_s": round(time.time() - start, 3),
    })
    ood = f", out-of-domain ppl {extra_ppl['ppl_ood']:.3f}" if extra_ppl else ""
    print(f"{args.experiment} shot {args.shot}: ppl {ppl:.3f}{ood}, "
          f"sparsity {stats['sparsity']:.4f}")


def cmd_compact(args):
    from .artifacts import atomic_path, manifest, write_json
    from .compact import compact_model
    from .models import load_model, load_tokenizer, save_model

    start = time.time()
    model = load_model(args.model, "cpu")
    small, summary = compact_model(model)
    if args.check_windows:
        import torch

        ids = _windows_io()[1](args.check_windows)[0][:1]
        with torch.no_grad():
            diff = (small(ids).logits - model(ids).logits).abs().max().item()
        summary["max_abs_logit_diff"] = diff
        summary["logit_check_tokens"] = ids.numel()
    with atomic_path(args.out, directory=True) as tmp:
        save_model(small, load_tokenizer(args.model), tmp)
        m = manifest("compact", {"model": args.model}, {}, start, compaction=summary)
        m["compress_wall_s"] = round(_compress_wall(args.model) + m["wall_time_s"], 3)
        write_json(tmp / "manifest.json", m)
    print(f"compacted: {summary['decoder_linear_params_before']} -> "
          f"{summary['decoder_linear_params_after']} decoder-Linear weights; "
          f"{summary['zero_weights_left']} zeros could not be removed "
          f"(realised {summary['realised_fraction']:.1%} of the structured sparsity)")


def cmd_quantize(args):
    import contextlib

    from .curvature_store import open_curvature
    from .models import load_model, resolve_device
    from .prune import decoder_weights, load_mask, weight_columns
    from .quantize import Grid, bits_per_weight, quantize_model

    start = time.time()
    model = load_model(args.model, "cpu")
    masks = load_mask(args.model, decoder_weights(model))
    removed = weight_columns(masks, model)
    grid = Grid(args.bits, args.group_size, not args.asymmetric)
    curvature = open_curvature(args.curvature) if args.curvature else contextlib.nullcontext()
    with curvature as f:
        codes = quantize_model(model, args.method, grid, removed, f, args.damp,
                               str(resolve_device(args.device)))
    inputs = {"model": args.model, **({"curvature": args.curvature} if args.curvature else {})}
    info = {"method": args.method, "bits": grid.bits, "group_size": grid.group_size,
            "symmetric": grid.symmetric, "bits_per_weight": bits_per_weight(grid),
            "quantized_weights": sum(q.codes.numel() for q in codes.values())}
    _write_model_folder(args.out, model, args.model, masks, "quantize", inputs,
                        {"damp": args.damp}, start, codes=codes, codes_info=info,
                        quantization=info)
    print(f"{args.method} {grid.bits}-bit, groups of {grid.group_size}: "
          f"{info['bits_per_weight']:.3f} bits per decoder-Linear weight")


def cmd_export_gguf(args):
    from .artifacts import QUANT_FILE, atomic_path, manifest, sidecar, write_json
    from .gguf_export import export_gguf
    from .models import load_model, load_tokenizer
    from .quantize import load_codes

    start = time.time()
    quant = _made_by(args.model).get("quantization")
    if not quant or not (Path(args.model) / QUANT_FILE).is_file():
        raise SurgeonError(f"{args.model} is not a quantized model (run the quantize stage)")
    if not quant["symmetric"] or quant["group_size"] != 32 or quant["bits"] not in (4, 8):
        raise SurgeonError("GGUF export needs the Q4_0/Q8_0 grid: symmetric, 4 or 8 bits, "
                           f"groups of 32 (this model: {quant})")
    model = load_model(args.model, "cpu")
    codes = load_codes(Path(args.model) / QUANT_FILE)
    with atomic_path(args.out) as tmp:
        info = export_gguf(model, load_tokenizer(args.model), codes, tmp,
                           name=Path(args.model).parent.name)
        size = tmp.stat().st_size
        total = sum(info["weights"].values())
        info.update(file_bytes=size, bits_per_weight_file=round(8 * size / total, 4))
        write_json(sidecar(args.out), manifest("export-gguf", {"model": args.model}, {}, start,
                                                gguf=info))
    print(f"{args.out}: {size / 2**20:.1f} MiB, {info['bits_per_weight_file']:.2f} bits per "
          f"weight over all tensors")


def cmd_export_compressed_tensors(args):
    from .artifacts import QUANT_FILE, atomic_path, manifest, write_json
    from .ct_export import export_compressed_tensors
    from .models import load_model, load_tokenizer
    from .quantize import load_codes

    start = time.time()
    codes_file = Path(args.model) / QUANT_FILE
    if not codes_file.is_file():
        raise SurgeonError(f"{args.model} is not a quantized model (no {QUANT_FILE})")
    model = load_model(args.model, "cpu")
    with atomic_path(args.out, directory=True) as tmp:
        info = export_compressed_tensors(model, load_tokenizer(args.model),
                                         load_codes(codes_file), tmp,
                                         sparsity_2of4=args.structure == "2:4")
        write_json(tmp / "manifest.json",
                   manifest("export-compressed-tensors", {"model": args.model},
                            {"structure": args.structure}, start, export=info))
    print(f"{args.out}: {info['bits_per_weight']:.3f} bits per decoder-Linear weight stored")


def cmd_inspect(args):
    from .inspect_curvature import curvature_table, format_table

    print(format_table(curvature_table(args.curvature, args.damping_g, args.damping_a)))


def cmd_report(args):
    from .artifacts import atomic_path
    from .report import (COLUMNS, compaction_markdown, summary_rows, to_csv, to_markdown,
                         with_zeroshot)

    rows, zeroshot = with_zeroshot(summary_rows(args.evals), args.zeroshot)
    columns = COLUMNS + zeroshot
    markdown = to_markdown(rows, columns) + compaction_markdown(args.evals)
    for figure in args.figures:
        markdown += f"\n![{Path(figure).stem}]({Path(figure).name})\n"
    for path, text in ((args.csv, to_csv(rows, columns)), (args.md, markdown)):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(to_markdown(rows, columns))


def cmd_plot_losses(args):
    from .artifacts import atomic_path
    from .report import plot_losses, read_losses

    curves = {Path(path).parent.parent.name: read_losses(path) for path in args.losses}
    with atomic_path(args.out) as tmp:
        plot_losses(curves, tmp)


def _lora_arguments(s):
    """Options of the LoRA training shared by recover and qat."""
    s.add_argument("--windows", required=True, help="token windows to train on")
    s.add_argument("--rank", type=int, default=8)
    s.add_argument("--alpha", type=float, default=16)
    s.add_argument("--targets", default="all",
                   help="comma-separated module names (q_proj,...) or all decoder Linears")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--grad-accum", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--objective", choices=["lm", "kd", "mix"], default="lm",
                   help="next-token loss, distillation from --teacher, or a weighted mix")
    s.add_argument("--teacher", default="", help="top-k teacher logits of --windows")
    s.add_argument("--kd-weight", type=float, default=0.5, help="weight of KD in `mix`")
    s.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    s.add_argument("--checkpoint", default="", help="resumable state (deleted when done)")
    s.add_argument("--checkpoint-every", type=int, default=10)
    s.add_argument("--device", default="auto")
    s.add_argument("--loss-out", required=True, help="loss per optimizer step (TSV)")
    s.add_argument("--out", required=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surgeon", description=__doc__)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = default)")
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("import-model", help="hub id / folder / .gguf / embedded:NAME -> HF folder")
    s.add_argument("--source", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_import_model)

    s = sub.add_parser("calibrate", help="text -> calibration and evaluation token windows")
    s.add_argument("--model", required=True, help="model folder (for its tokenizer)")
    s.add_argument("--source", required=True)
    s.add_argument("--seqlen", type=int, required=True)
    s.add_argument("--windows", type=int, required=True)
    s.add_argument("--evaluation-fraction", type=float, default=0.2)
    s.add_argument("--max-eval-windows", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--calibration-out", required=True)
    s.add_argument("--evaluation-out", required=True)
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("curvature", help="K-FAC factors of every decoder Linear -> curvature.h5")
    s.add_argument("--model", required=True)
    s.add_argument("--calibration", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--fisher", choices=["empirical", "sampled"], default="empirical")
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--checkpoint", default="")
    s.add_argument("--checkpoint-every", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_curvature)

    s = sub.add_parser("prune", help="one pruning shot -> model folder with mask")
    s.add_argument("--model", required=True, help="model of the previous shot")
    s.add_argument("--method", required=True)
    s.add_argument("--structure", default="unstructured")
    s.add_argument("--target", type=float, required=True)
    s.add_argument("--shots", type=int, default=1)
    s.add_argument("--shot", type=int, default=1)
    s.add_argument("--curvature", default="")
    s.add_argument("--calibration", default="",
                   help="token windows (llm-pruner gradients, low-rank correction)")
    s.add_argument("--lora-steps", type=int, default=0,
                   help="masked LoRA steps after the shot, merged (0 = no correction)")
    s.add_argument("--lora-rank", type=int, default=8)
    s.add_argument("--lora-lr", type=float, default=1e-4)
    s.add_argument("--lora-windows", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--damping-g", type=float, default=0.1)
    s.add_argument("--damping-a", type=float, default=0.01)
    s.add_argument("--nm-schedule", choices=["blocks", "elements"], default="blocks",
                   help="2:4 over several shots: whole blocks per shot, or single elements "
                   "(at most two per block) by one global threshold")
    s.add_argument("--sequential", action="store_true",
                   help="sparsegpt/wanda: layer by layer on the outputs of the pruned layers "
                   "before (needs --calibration), instead of the dense curvature's A")
    s.add_argument("--device", default="auto", help="where the maths runs (auto: CUDA if present)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("windows", help="token windows from the calibration split of a text")
    s.add_argument("--model", required=True, help="model folder (for its tokenizer)")
    s.add_argument("--source", required=True)
    s.add_argument("--seqlen", type=int, required=True)
    s.add_argument("--windows", type=int, required=True)
    s.add_argument("--evaluation-fraction", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--setting", default="--windows", help="config key named in errors")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_windows)

    s = sub.add_parser("ood-windows", help="token windows of an out-of-domain text (ppl_ood)")
    s.add_argument("--model", required=True, help="model folder (for its tokenizer)")
    s.add_argument("--source", required=True,
                   help="embedded:common-licenses, a .txt/.jsonl file or glob, or a hub data set")
    s.add_argument("--seqlen", type=int, required=True)
    s.add_argument("--windows", type=int, required=True, help="at most this many windows")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_ood_windows)

    s = sub.add_parser("recover", help="masked LoRA fine-tuning, merged -> model folder")
    s.add_argument("--model", required=True, help="pruned model folder")
    s.set_defaults(func=cmd_recover)
    _lora_arguments(s)

    s = sub.add_parser("qat", help="quantization-aware LoRA on a quantized model, re-quantized"
                       " on its grid -> quantized model folder")
    s.add_argument("--model", required=True, help="quantized model folder (quantize stage)")
    s.set_defaults(func=cmd_qat)
    _lora_arguments(s)

    s = sub.add_parser("teacher-logits", help="top-k next-token logits of a teacher model on "
                       "token windows (the distillation cache)")
    s.add_argument("--model", required=True, help="teacher model folder (the dense model)")
    s.add_argument("--windows", required=True)
    s.add_argument("--top-k", type=int, default=64)
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_teacher_logits)

    s = sub.add_parser("compact", help="structured Llama -> smaller model without its zeroed units")
    s.add_argument("--model", required=True)
    s.add_argument("--check-windows", default="",
                   help="windows file: record max |logit difference| on its first window")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_compact)

    s = sub.add_parser("quantize", help="RTN or GPTQ of every decoder Linear -> model folder")
    s.add_argument("--model", required=True)
    s.add_argument("--method", choices=["rtn", "gptq"], required=True)
    s.add_argument("--curvature", default="", help="curvature.h5 of this model (gptq: its A)")
    s.add_argument("--bits", type=int, default=4)
    s.add_argument("--group-size", type=int, default=32)
    s.add_argument("--asymmetric", action="store_true", help="zero point per group")
    s.add_argument("--damp", type=float, default=0.01, help="GPTQ: relative damping of H")
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("export-gguf", help="quantized Llama (Q4_0/Q8_0 grid) -> .gguf file")
    s.add_argument("--model", required=True, help="folder written by the quantize stage")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export_gguf)

    s = sub.add_parser("export-compressed-tensors",
                       help="quantized model -> compressed-tensors folder (vLLM)")
    s.add_argument("--model", required=True, help="folder written by the quantize stage")
    s.add_argument("--structure", default="unstructured",
                   help="2:4 adds compressed-tensors' 2:4 sparsity metadata")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export_compressed_tensors)

    s = sub.add_parser("evaluate", help="perplexity, sparsity, size -> eval JSON")
    s.add_argument("--model", required=True)
    s.add_argument("--evaluation", required=True)
    s.add_argument("--ood", default="", help="windows of an out-of-domain text: adds ppl_ood")
    s.add_argument("--out", required=True)
    s.add_argument("--model-name", default="model")
    s.add_argument("--experiment", default="dense")
    s.add_argument("--method", default="none")
    s.add_argument("--structure", default="none")
    s.add_argument("--target", type=float, default=0.0)
    s.add_argument("--shot", type=int, default=0)
    s.add_argument("--shots", type=int, default=0, help="the experiment's number of shots")
    s.add_argument("--stage", dest="eval_stage", default="",
                   help="dense, shot-K, recovered or compact (default from --shot)")
    s.add_argument("--speed-prompt-tokens", type=int, default=64)
    s.add_argument("--speed-new-tokens", type=int, default=0,
                   help="also measure greedy tokens/s generating this many tokens (0 = skip)")
    s.add_argument("--exports", nargs="*", default=[],
                   help="exported files/folders of a quantized model (.gguf, compressed-tensors)"
                   " whose sizes are recorded")
    s.add_argument("--batch-size", type=int, default=1)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("inspect", help="per-layer audit table of a curvature.h5")
    s.add_argument("curvature")
    s.add_argument("--damping-g", type=float, default=0.1)
    s.add_argument("--damping-a", type=float, default=0.01)
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("plot-losses", help="recovery loss curves (loss.tsv files) -> PNG")
    s.add_argument("--losses", nargs="+", required=True,
                   help="results/<model>/<experiment>/recovered/loss.tsv files")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_plot_losses)

    s = sub.add_parser("report", help="eval JSONs -> summary.csv + summary.md")
    s.add_argument("--evals", nargs="+", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--figures", nargs="*", default=[], help="PNGs beside the .md to show in it")
    s.add_argument("--zeroshot", nargs="*", default=[],
                   help="zero-shot JSONs: their average and per-task accuracy become columns")
    s.set_defaults(func=cmd_report)

    from .cli_figures import add_parsers  # spectra, layer-sparsity, plot-*, html-table, ...

    add_parsers(sub)
    from . import cli_zeroshot  # zeroshot, cloze-task

    cli_zeroshot.add_parsers(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        from .artifacts import verify_inputs

        verify_inputs(vars(args))  # a truncated or altered input stops here, named
        args.func(args)
    except SurgeonError as err:
        print(f"surgeon {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
