"""The removed-weight mask saved beside every pruned model (mask.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .artifacts import MASK_FILE
from .models import decoder_linears


def load_mask(model_dir: Path, weights: dict[str, torch.Tensor],
              zeros: bool = True) -> dict[str, torch.Tensor]:
    """Removed elements so far: the previous shot's mask (if any) plus exact zeros. A quantized
    model's saved mask is its pruning mask; `zeros=False` leaves out the weights that only
    rounded to zero, which quantization-aware training may move."""
    saved = {}
    path = Path(model_dir) / MASK_FILE
    if path.is_file():
        saved = {k: v.bool() for k, v in load_file(path).items()}
    return {n: ((w == 0) if zeros else torch.zeros_like(w, dtype=torch.bool))
            | saved.get(n, torch.zeros_like(w, dtype=torch.bool))
            for n, w in weights.items()}


def weight_columns(masks: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """The [W | b] masks of `load_mask` cut to the weight's own columns (bias column dropped)."""
    layers = decoder_linears(model)
    return {n: m[:, : layers[n].in_features] for n, m in masks.items()}


def save_mask(path: Path, masks: dict[str, torch.Tensor]) -> None:
    save_file({n: m.to(torch.uint8).contiguous() for n, m in masks.items()}, str(path))
