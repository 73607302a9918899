"""One global threshold over the cost pools of all layers (docs/algorithms.md §3)."""

from __future__ import annotations

import torch

REMOVED = -1.0  # cost of an already-removed element: below every real cost, chosen first


def smallest_k_mask(costs: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly the k smallest entries; ties broken by index order."""
    flat = costs.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask.view(costs.shape)
    if k >= flat.numel():
        return ~mask.view(costs.shape)
    tau = torch.kthvalue(flat.cpu(), k).values.to(flat.device)
    mask = flat < tau
    need = k - int(mask.sum())
    ties = torch.nonzero(flat == tau).flatten()[:need]
    mask[ties] = True
    return mask.view(costs.shape)


def global_threshold(pools: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Masks choosing the k cheapest entries over all pools together (pool order = tie order)."""
    names = list(pools)
    flat = torch.cat([pools[n].reshape(-1).float().cpu() for n in names])
    chosen = smallest_k_mask(flat, k)
    out, start = {}, 0
    for n in names:
        size = pools[n].numel()
        out[n] = chosen[start : start + size].view(pools[n].shape)
        start += size
    return out


def linear_schedule(target: float, shots: int, shot: int) -> float:
    """Cumulative removed fraction after shot t of T: s_t = t * s / T."""
    return target * shot / shots
