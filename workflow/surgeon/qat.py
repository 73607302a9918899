"""Quantization-aware LoRA: adapters trained through the exported grid, then re-quantized.

A quantized layer keeps its scales d and zero points z (per group of input columns) fixed: the
grid is the one the export writes. During training its forward uses

    W_eff = Q(W + D * ~M),   Q(w) = (clamp(round(w / d) + z, lo, hi) - z) d,   removed -> z,

with the straight-through estimator (dQ/dw taken as 1), where W is the dequantized weight, D
the LoRA delta and M the removed (pruned) elements. After training the delta is merged and the
weight re-quantized with the same d and z (`requantize`), which gives exactly the W_eff the
last step used: the exported model is the one that was tuned, and pruned weights stay on the
code of zero.
"""

from __future__ import annotations

import dataclasses

import torch

from .quantize import Quantized, dequantize, quantize_codes


def _expanded(q: Quantized, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = q.grid.group_size
    d = q.scales.double().repeat_interleave(g, dim=1).to(device)
    z = q.zeros.double().repeat_interleave(g, dim=1).to(device)
    return d, z


def grid_codes(w: torch.Tensor, q: Quantized, removed: torch.Tensor) -> torch.Tensor:
    """Codes (float64) of w on q's fixed grid; removed elements on the code of zero."""
    d, z = _expanded(q, w.device)
    return quantize_codes(w.detach().double(), d, z, q.grid, removed.to(w.device))


def fake_quantize(w: torch.Tensor, q: Quantized, removed: torch.Tensor) -> torch.Tensor:
    """Q(w) in the forward pass, identity in the backward pass (straight-through)."""
    with torch.no_grad():
        d, z = _expanded(q, w.device)
        w_q = dequantize(grid_codes(w, q, removed), d, z).to(w.dtype)
    return w + (w_q - w).detach()


def requantize(w: torch.Tensor, q: Quantized, removed: torch.Tensor) -> Quantized:
    """The merged weight's codes on the same grid (scales and zero points unchanged)."""
    codes = grid_codes(w, q, removed).to(torch.int16).cpu()
    return dataclasses.replace(q, codes=codes)
