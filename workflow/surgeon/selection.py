"""Which elements a shot removes, given per-layer costs (docs/algorithms.md §3).

Scope says what competes with what: `global` (one pool over all layers: LLM Surgeon, K-OBD,
L-OBD), `layer` (each layer to the same fraction: magnitude), `row` (each output row to the
same fraction: Wanda). 2:4 blocks are chosen by block cost (sum of the two cheapest elements)
with the same scopes (a row scope chooses blocks per layer), and a chosen block loses its two
cheapest elements.
"""

from __future__ import annotations

import torch

from .semi_structured import block_costs, blocks, nm_mask
from .threshold import global_threshold, smallest_k_mask
from .wanda import per_row_mask

from .methods import NM_DENSITY


NM_SCHEDULES = ("blocks", "elements")


def nm_candidates(cost: torch.Tensor, weight_cols: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Costs with everything but the elements a block may still lose set to +inf: the n - z
    cheapest live elements of a block with z removed (removed ones keep their negative cost);
    the bias column is never a candidate."""
    b = blocks(cost, weight_cols, m)
    rank = b.argsort(dim=-1, stable=True).argsort(dim=-1)  # 0 = cheapest; removed come first
    out = torch.full_like(cost, float("inf"))
    out[:, :weight_cols] = b.masked_fill(rank >= n, float("inf")).reshape(cost.shape[0], -1)
    return out


def select_elements(costs: dict[str, torch.Tensor], removed: dict[str, torch.Tensor],
                    fraction: float, structure: str, scope: str,
                    weight_cols: dict[str, int], nm_schedule: str = "blocks"
                    ) -> dict[str, torch.Tensor]:
    """Masks (True = removed) at the cumulative `fraction`; `removed` elements stay removed.

    Costs of already removed elements must be below every other cost (callers use -1).
    For 2:4, `fraction` is of the blocked weights: 0.5 means every block is 2:4. The 2:4
    `nm_schedule` of a multi-shot global prune: `blocks` completes whole blocks (two elements
    each) shot by shot; `elements` takes single elements by one global threshold, a block
    never losing more than two, so a block's second element is chosen by a later shot's costs
    on the updated weights (the last shot, at 0.5, completes every block).
    """
    if structure == "2:4" and nm_schedule == "elements" and scope == "global":
        candidates = {n: nm_candidates(c, weight_cols[n]) for n, c in costs.items()}
        total = sum(c.shape[0] * weight_cols[n] for n, c in costs.items())
        masks = global_threshold(candidates, round(fraction * total))
        return {n: m | removed[n] for n, m in masks.items()}
    if structure == "unstructured":
        if scope == "global":
            total = sum(c.numel() for c in costs.values())
            masks = global_threshold(costs, round(fraction * total))
        elif scope == "layer":
            masks = {n: smallest_k_mask(c, round(fraction * c.numel())) for n, c in costs.items()}
        else:
            masks = {n: per_row_mask(c, fraction, removed[n]) for n, c in costs.items()}
    else:
        share = min(fraction / NM_DENSITY, 1.0)
        blocks = {n: block_costs(c, weight_cols[n]) for n, c in costs.items()}
        if scope == "global":
            total = sum(b.numel() for b in blocks.values())
            chosen = global_threshold(blocks, round(share * total))
        else:
            chosen = {n: smallest_k_mask(b, round(share * b.numel())) for n, b in blocks.items()}
        masks = {n: nm_mask(costs[n], weight_cols[n], chosen[n]) for n in costs}
    return {n: m | removed[n] for n, m in masks.items()}
