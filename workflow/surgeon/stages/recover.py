"""Stages `recover`, `qat`, `teacher-logits`: LoRA training on a pruned or quantized model (rules/recover.smk, rules/quantize.smk)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..artifacts import check_free_space, made_by
from ..errors import SurgeonError

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
    from ..artifacts import tree_hash
    from ..data import load_windows
    from ..distill import Objective
    from ..lora import Checkpoint, LoraSettings, lora_train

    windows, _ = load_windows(args.windows)
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
    from ..artifacts import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("step\tloss\n" + "".join(f"{i + 1}\t{v:.6f}\n"
                                                  for i, v in enumerate(losses)))


def cmd_recover(args):
    from ..masks import load_mask, weight_columns
    from ..model_folder import output_folder_bytes, write_model_folder
    from ..models import load_model, resolve_device
    from ..prune import decoder_weights

    start = time.time()
    check_free_space(args.out, output_folder_bytes(args.model))
    model = load_model(args.model, resolve_device(args.device))
    masks = load_mask(args.model, decoder_weights(model))
    losses, config, inputs = _lora_fit(args, model, weight_columns(masks, model))
    model.to("cpu")
    _write_losses(args.loss_out, losses)
    write_model_folder(args.out, model, args.model, masks, "recover", inputs, config, start,
                        initial_loss=losses[0], final_loss=losses[-1])
    print(f"recovered: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")


def cmd_qat(args):
    import torch

    from ..artifacts import QUANT_FILE
    from ..model_folder import output_folder_bytes, write_model_folder
    from ..models import decoder_linears, load_model, resolve_device
    from ..masks import load_mask, weight_columns
    from ..prune import decoder_weights
    from ..qat import requantize
    from ..quantize import load_codes

    start = time.time()
    check_free_space(args.out, output_folder_bytes(args.model, codes=True))
    quant = made_by(args.model).get("quantization")
    if not quant or not (Path(args.model) / QUANT_FILE).is_file():
        raise SurgeonError(f"{args.model} is not a quantized model (run the quantize stage)")
    codes = load_codes(Path(args.model) / QUANT_FILE)
    tables = load_codes(Path(args.model) / QUANT_FILE, tables=True)  # untouched by LoRA
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
    write_model_folder(args.out, model, args.model, masks, "qat", inputs, config, start,
                        codes={**codes, **tables}, codes_info=quant, quantization=info,
                        initial_loss=losses[0], final_loss=losses[-1])
    print(f"quantization-aware LoRA: loss {losses[0]:.4f} -> {losses[-1]:.4f}, re-quantized on "
          f"the same grid ({quant.get('gguf_type') or str(quant['bits']) + '-bit'})")


def cmd_teacher_logits(args):
    from safetensors.torch import save_file

    from ..artifacts import atomic_path, manifest, sidecar, write_json
    from ..data import load_windows
    from ..distill import kept_mass, teacher_topk
    from ..models import load_model, resolve_device

    start = time.time()
    windows, _ = load_windows(args.windows)
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


def _lora_arguments(s):
    """Options of the LoRA training shared by recover and qat (defaults: LoraSettings)."""
    from ..lora_settings import LoraSettings

    d = LoraSettings()
    s.add_argument("--windows", required=True, help="token windows to train on")
    s.add_argument("--rank", type=int, default=d.rank, help="rank of the LoRA adapters")
    s.add_argument("--alpha", type=float, default=d.alpha,
                   help="LoRA scale numerator (the update is alpha / rank * B A)")
    s.add_argument("--targets", default="all",
                   help="comma-separated module names (q_proj,...) or all decoder Linears")
    s.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    s.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    s.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per batch")
    s.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="batches accumulated into one optimizer step")
    s.add_argument("--seed", type=int, default=d.seed, help="seed of adapters and window order")
    s.add_argument("--objective", choices=["lm", "kd", "mix"], default="lm",
                   help="next-token loss, distillation from --teacher, or a weighted mix")
    s.add_argument("--teacher", default="", help="top-k teacher logits of --windows")
    s.add_argument("--kd-weight", type=float, default=0.5, help="weight of KD in `mix`")
    s.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    s.add_argument("--checkpoint", default="", help="resumable state (deleted when done)")
    s.add_argument("--checkpoint-every", type=int, default=10,
                   help="optimizer steps between two checkpoint writes")
    s.add_argument("--device", default="auto", help="where training runs (auto: CUDA if present)")
    s.add_argument("--loss-out", required=True, help="loss per optimizer step (TSV)")
    s.add_argument("--out", required=True, help="model folder to write")


def add_parsers(sub) -> None:
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
    s.add_argument("--windows", required=True, help="token windows to score (those the students train on)")
    s.add_argument("--top-k", type=int, default=64, help="logits kept per position")
    s.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    s.add_argument("--device", default="auto", help="where the teacher runs (auto: CUDA if present)")
    s.add_argument("--out", required=True, help="logits file to write")
    s.set_defaults(func=cmd_teacher_logits)
