"""The one writer of a model folder that a stage derives from another (prune, recover, qat,
quantize, compact): weights, the source's tokenizer, the mask, integer codes when quantized,
and the manifest with the compression time so far."""

from __future__ import annotations

from pathlib import Path

from .artifacts import MASK_FILE, QUANT_FILE, atomic_path, compress_wall, manifest, write_json
from .masks import save_mask
from .models import load_tokenizer, save_model


def output_folder_bytes(model_dir, codes: bool = False) -> int:
    """Bytes a stage that writes a model folder made from `model_dir` will write, sized before
    it starts: the folder again (float32 weights, tokenizer, manifest) with a mask of one byte
    per decoder-Linear weight, and with `codes` the quantization codes too (one byte per weight
    plus the group scales: 1.06 bytes measured at Q4_0, 1.25 counted)."""
    from .models import decoder_linears, model_skeleton

    files = [f for f in Path(model_dir).rglob("*")
             if f.is_file() and f.name not in (MASK_FILE, QUANT_FILE)]
    layers = decoder_linears(model_skeleton(model_dir)).values()
    weights = sum(layer.weight.numel() for layer in layers)
    return sum(f.stat().st_size for f in files) + weights + (5 * weights // 4 if codes else 0)


def write_model_folder(out, model, source, masks, stage, inputs, config, start, codes=None,
                       codes_info=None, earlier_wall: float = 0.0, **extra) -> None:
    """`out` written atomically from `model` (made from the folder `source`). `masks` None
    writes no mask (a compacted model has no zeros to remember); `earlier_wall` adds seconds
    other jobs spent on this model (a shot's curvature) to the compression time."""
    from .quantize import save_codes

    with atomic_path(out, directory=True) as tmp:
        save_model(model, load_tokenizer(source), tmp)
        if masks is not None:
            save_mask(tmp / MASK_FILE, masks)
        if codes is not None:
            save_codes(tmp / QUANT_FILE, codes, codes_info)
        m = manifest(stage, inputs, config, start, **extra)
        m["compress_wall_s"] = round(compress_wall(source) + earlier_wall + m["wall_time_s"], 3)
        write_json(tmp / "manifest.json", m)
