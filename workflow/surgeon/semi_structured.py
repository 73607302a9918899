"""N:M semi-structured sparsity (2:4): blocks of M consecutive input columns of one row.

A weight with a bias column (OPT) keeps the bias out of the blocks: only the first
`weight_cols` columns are blocked, the bias is never removed by an N:M method.
"""

from __future__ import annotations

import torch

from .errors import SurgeonError


def blocks(cost: torch.Tensor, weight_cols: int, m: int = 4) -> torch.Tensor:
    """R x C costs -> R x (weight_cols / m) x m blocks over the weight columns."""
    if weight_cols % m:
        raise SurgeonError(f"{m}-blocks need in_features divisible by {m}, got {weight_cols}")
    return cost[:, :weight_cols].reshape(cost.shape[0], weight_cols // m, m)


def block_costs(cost: torch.Tensor, weight_cols: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Cost of a block = sum of its n cheapest element costs (docs/algorithms.md §2)."""
    return blocks(cost, weight_cols, m).topk(n, dim=-1, largest=False).values.sum(-1)


def nm_mask(cost: torch.Tensor, weight_cols: int, chosen: torch.Tensor | None = None,
            n: int = 2, m: int = 4) -> torch.Tensor:
    """Element mask: the n cheapest elements of every chosen block (all blocks if None)."""
    b = blocks(cost, weight_cols, m)
    idx = b.topk(n, dim=-1, largest=False).indices
    picked = torch.zeros_like(b, dtype=torch.bool).scatter_(-1, idx, True)
    if chosen is not None:
        picked &= chosen[..., None]
    mask = torch.zeros(cost.shape, dtype=torch.bool, device=cost.device)
    mask[:, :weight_cols] = picked.reshape(cost.shape[0], weight_cols)
    return mask


