"""One global threshold over the cost pools of all layers (docs/algorithms.md §3)."""

from __future__ import annotations

import torch

REMOVED = -1.0  # cost of an already-removed element: below every real cost, chosen first


def kth_smallest(flat: torch.Tensor, k: int, sample: int = 1 << 20) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor, exactly. For a large pool a random
    sample brackets it (quantiles k/n -+ 0.5%), one pass counts what lies below the bracket,
    and kthvalue runs on the ~1% inside: about twice as fast as kthvalue on 100M costs. When
    the bracket misses (ties, bad luck), kthvalue on the whole pool."""
    n = flat.numel()
    if n <= 16 * sample:
        return torch.kthvalue(flat, k).values
    generator = torch.Generator().manual_seed(0)
    picked = flat[torch.randint(n, (sample,), generator=generator)].double()
    q = torch.tensor([max(k / n - 0.005, 0.0), min(k / n + 0.005, 1.0)], dtype=torch.float64)
    lo, hi = torch.quantile(picked, q).to(flat.dtype)
    below = int(torch.count_nonzero(flat < lo))
    inside = flat[(flat >= lo) & (flat <= hi)]
    if below < k <= below + inside.numel():
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(flat, k).values


def smallest_k_mask(costs: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly the k smallest entries; ties broken by index order."""
    flat = costs.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask.view(costs.shape)
    if k >= flat.numel():
        return ~mask.view(costs.shape)
    tau = kth_smallest(flat.cpu(), k).to(flat.device)
    mask = flat < tau
    need = k - int(torch.count_nonzero(mask))
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
