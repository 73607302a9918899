"""Wanda (Sun et al. 2023): score |W_rc| * ||X_c||_2, compared within each output row.

||X_c||_2^2 = tokens * A_cc, and a per-layer constant does not change a per-row comparison,
so the K-FAC A factor's diagonal is all Wanda needs.
"""

from __future__ import annotations

import torch

from .threshold import REMOVED


def wanda_scores(W: torch.Tensor, a_diag: torch.Tensor) -> torch.Tensor:
    """|W_rc| * sqrt(A_cc)."""
    return W.abs().double() * a_diag.double().clamp_min(0).sqrt()[None, :]


def per_row_mask(scores: torch.Tensor, fraction: float, removed: torch.Tensor) -> torch.Tensor:
    """In every row, remove the round(fraction * C) lowest scores; removed entries go first."""
    scores = scores.masked_fill(removed, REMOVED)
    k = round(fraction * scores.shape[1])
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        # stable sort: ties broken by column index
        idx = scores.argsort(dim=1, stable=True)[:, :k]
        mask.scatter_(1, idx, True)
    return mask
