"""Which elements a shot removes, given per-layer costs (ALGORITHMS.md section 3).

Scope says what competes with what: `global` (one pool over all layers: LLM Surgeon, K-OBD,
L-OBD), `layer` (each layer to the same fraction: magnitude), `row` (each output row to the
same fraction: Wanda). 2:4 blocks are chosen by block cost (sum of the two cheapest elements)
with the same scopes (a row scope chooses blocks per layer), and a chosen block loses its two
cheapest elements.
"""

from __future__ import annotations

import torch

from .semi_structured import block_costs, nm_mask
from .threshold import global_threshold, smallest_k_mask
from .wanda import per_row_mask

NM_DENSITY = 0.5  # 2:4 removes half of every chosen block


def select_elements(costs: dict[str, torch.Tensor], removed: dict[str, torch.Tensor],
                    fraction: float, structure: str, scope: str,
                    weight_cols: dict[str, int]) -> dict[str, torch.Tensor]:
    """Masks (True = removed) at the cumulative `fraction`; `removed` elements stay removed.

    Costs of already removed elements must be below every other cost (callers use -1).
    For 2:4, `fraction` is of the blocked weights: 0.5 means every block is 2:4.
    """
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
