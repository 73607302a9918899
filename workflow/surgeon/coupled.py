"""Structured LLM Surgeon on coupled units: exactly what compaction removes (docs/algorithms.md §10).

A unit is one coupled group of `llm_pruner.coupled_groups`: an MLP channel (its row of every
MLP input layer and its column of the MLP output layer) or an attention group (one kv head
with every query head that reads it: q, k, v rows and o columns). Removing units leaves a model
of the same kind with fewer channels or heads, so compaction removes every zero they make.

Under H = G~ (x) A~ per layer (block-diagonal across layers) the loss change of removing a
set S of rows of one layer, with the optimal update of the other rows, is

    0.5 tr(W_S^T (Gi_SS)^-1 W_S A~)          (rows; Gi = G~^-1, the full S x S sub-block)

and of a set T of columns 0.5 tr(G~ W_T (Ai_TT)^-1 W_T^T). A unit's cost is the sum over the
layers it touches. Units compete in one global pool by cost per removed parameter (units differ
in size: a SmolLM2 channel is 1,728 parameters, an attention group 294,912); every layer then
gets the joint row-then-column update of the units it lost (structured.obs_structured_update).
A block keeps at least one attention group and one MLP channel (compaction cannot remove the
last one).
"""

from __future__ import annotations

import torch

from .linalg import spd_solve
from .llm_pruner import Group, span_ranges
from .threshold import REMOVED


def multi_row_cost(W: torch.Tensor, A: torch.Tensor, Gi: torch.Tensor,
                   rows: torch.Tensor) -> float:
    """0.5 tr(W_S^T (Gi_SS)^-1 W_S A): removing rows S of W with the optimal update."""
    WS = W[rows].double()
    X = spd_solve(Gi[rows][:, rows], WS)
    return 0.5 * float(((X @ A.double()) * WS).sum())


def multi_col_cost(W: torch.Tensor, G: torch.Tensor, Ai: torch.Tensor,
                   cols: torch.Tensor) -> float:
    """0.5 tr(G W_T (Ai_TT)^-1 W_T^T): removing columns T of W with the optimal update."""
    WT = W[:, cols].double()
    X = spd_solve(Ai[cols][:, cols], WT.T)
    return 0.5 * float(((X @ G.double()) * WT.T).sum())


def live_positions(live: torch.Tensor, span) -> torch.Tensor:
    """Positions inside the live sub-problem of the live indices of `span` (a range, or the
    ranges of a fused Linear: their rows are removed jointly, one sub-block of Gi)."""
    pos = torch.cumsum(live.long(), 0) - 1
    idx = torch.cat([torch.arange(r.start, r.stop) for r in span_ranges(span)])
    return pos[idx[live[idx]]]


def span_costs(W: torch.Tensor, Gt: torch.Tensor, At: torch.Tensor, Gi: torch.Tensor,
               Ai: torch.Tensor, live_rows: torch.Tensor, live_cols: torch.Tensor,
               spans: list[range], axis: str) -> torch.Tensor:
    """OBS cost of removing each span of rows (axis "rows") or columns ("cols") of one layer
    on its own: W the full weight, Gt/At the damped factors and Gi/Ai their inverses over the
    live rows/columns. Dead (already removed) members add nothing; single-row / single-column
    spans take the vectorised formula (the same one for |S| = 1)."""
    Wl = W[live_rows][:, live_cols].double()
    live = live_rows if axis == "rows" else live_cols
    if axis == "rows":
        single = 0.5 * ((Wl @ At.double()) * Wl).sum(dim=1) / Gi.diagonal()
    else:
        single = 0.5 * ((Gt.double() @ Wl) * Wl).sum(dim=0) / Ai.diagonal()
    out = torch.zeros(len(spans), dtype=torch.float64)
    for i, span in enumerate(spans):
        pos = live_positions(live, span)
        if len(pos) == 1:
            out[i] = single[pos[0]]
        elif len(pos) and axis == "rows":
            out[i] = multi_row_cost(Wl, At, Gi, pos)
        elif len(pos):
            out[i] = multi_col_cost(Wl, Gt, Ai, pos)
    return out


def layer_spans(groups: list[Group]) -> dict[str, dict[str, tuple[list[int], list[range]]]]:
    """Per layer and axis ("rows", "cols"): the groups touching it and their spans there."""
    out: dict[str, dict[str, tuple[list[int], list[range]]]] = {}
    for i, g in enumerate(groups):
        for axis, spans in (("rows", g.rows), ("cols", g.cols)):
            for n, span in spans.items():
                ids, sp = out.setdefault(n, {}).setdefault(axis, ([], []))
                ids.append(i)
                sp.append(span)
    return out


def unit_removed(group: Group, zero_rows: dict[str, torch.Tensor],
                 zero_cols: dict[str, torch.Tensor]) -> bool:
    """True when every row and column the group owns is already all zero."""
    return (all(bool(zero_rows[n][r.start:r.stop].all())
                for n, s in group.rows.items() for r in span_ranges(s))
            and all(bool(zero_cols[n][r.start:r.stop].all())
                    for n, s in group.cols.items() for r in span_ranges(s)))


def select_units(groups: list[Group], costs: torch.Tensor, params: torch.Tensor,
                 n_params: int, keep_one: bool = True) -> torch.Tensor:
    """Boolean mask of the units removed: ascending cost per parameter (REMOVED costs first:
    earlier shots' units stay removed and count) until the removed parameters reach `n_params`.

    With `keep_one`, a block never loses its last attention group or its last MLP channel.
    """
    density = torch.where(costs == REMOVED, torch.full_like(costs, -1.0),
                          costs / params.clamp_min(1))
    order = torch.argsort(density, stable=True)
    left: dict[tuple, int] = {}
    for g in groups:
        left[(g.block, g.kind)] = left.get((g.block, g.kind), 0) + 1
    chosen = torch.zeros(len(groups), dtype=torch.bool)
    total = 0
    for i in order.tolist():
        if total >= n_params and density[i] >= 0:
            break
        key = (groups[i].block, groups[i].kind)
        if keep_one and left[key] == 1:
            continue
        chosen[i] = True
        left[key] -= 1
        total += int(params[i])
    return chosen
