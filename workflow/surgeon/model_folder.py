"""The one writer of a model folder that a stage derives from another (prune, recover, qat,
quantize, compact): weights, the source's tokenizer, the mask, integer codes when quantized,
and the manifest with the compression time so far."""

from __future__ import annotations

from .artifacts import MASK_FILE, QUANT_FILE, atomic_path, compress_wall, manifest, write_json
from .masks import save_mask
from .models import load_tokenizer, save_model


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
