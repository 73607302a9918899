"""Structured (whole row / whole column) pruning under H = G (x) A (docs/algorithms.md §2-4).

Pure functions on tensors. W is R x C (a bias is an extra column), G is R x R, A is C x C;
Gi = G~^-1 and Ai = A~^-1 are the inverses of the damped factors; the OBS cost numerators take
the damped factors too (the caller passes them). Removing row r means W[r, :] = 0 (output r), column c means W[:, c] = 0.
"""

from __future__ import annotations

import torch

from .linalg import spd_solve

KINDS = ("obs", "k-obd", "l-obd", "magnitude")


def _row_quad(W: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """w_r^T A w_r for every row r."""
    W = W.double()
    return ((W @ A.double()) * W).sum(dim=1)


def _col_quad(W: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
    """w_c^T G w_c for every column c (G = None means I)."""
    W = W.double()
    return (W.square() if G is None else (G.double() @ W) * W).sum(dim=0)


def row_costs(W: torch.Tensor, A: torch.Tensor, gi_diag: torch.Tensor) -> torch.Tensor:
    """OBS cost of removing each row alone: 0.5 w_r^T A w_r / Gi_rr."""
    return 0.5 * _row_quad(W, A) / gi_diag.double()


def col_costs(W: torch.Tensor, G: torch.Tensor, ai_diag: torch.Tensor) -> torch.Tensor:
    """OBS cost of removing each column alone: 0.5 w_c^T G w_c / Ai_cc."""
    return 0.5 * _col_quad(W, G) / ai_diag.double()


def obd_row_costs(W: torch.Tensor, A: torch.Tensor, g_diag: torch.Tensor | None) -> torch.Tensor:
    """K-OBD row cost (no update): 0.5 G_rr w_r^T A w_r; L-OBD passes g_diag = None (G = I)."""
    quad = _row_quad(W, A)
    return 0.5 * quad if g_diag is None else 0.5 * g_diag.double() * quad


def obd_col_costs(W: torch.Tensor, G: torch.Tensor | None, a_diag: torch.Tensor) -> torch.Tensor:
    """K-OBD column cost (no update): 0.5 A_cc w_c^T G w_c; L-OBD passes G = None (G = I)."""
    return 0.5 * a_diag.double() * _col_quad(W, G)


def structure_costs(kind: str, W: torch.Tensor, G: torch.Tensor, A: torch.Tensor,
                    gi_diag: torch.Tensor | None = None, ai_diag: torch.Tensor | None = None):
    """(row costs, column costs) of one layer for `kind` in KINDS.

    "obs" (LLM Surgeon) needs gi_diag / ai_diag, the diagonals of the damped inverses;
    "k-obd" and "l-obd" use the diagonals of the undamped G and A (L-OBD: G = I);
    "magnitude" is the L2 norm of each row / column.
    """
    if kind == "obs":
        if gi_diag is None or ai_diag is None:
            raise ValueError("OBS structure costs need gi_diag and ai_diag")
        return row_costs(W, A, gi_diag), col_costs(W, G, ai_diag)
    if kind == "k-obd":
        return obd_row_costs(W, A, G.diagonal()), obd_col_costs(W, G, A.diagonal())
    if kind == "l-obd":
        return obd_row_costs(W, A, None), obd_col_costs(W, None, A.diagonal())
    if kind == "magnitude":
        W = W.double()
        return W.norm(dim=1), W.norm(dim=0)
    raise ValueError(f"unknown structure cost kind {kind!r}; expected one of {KINDS}")


def removed_count(r: int, c: int, R: int, C: int) -> int:
    """Parameters of an R x C layer removed by r rows and c columns: r C + c R - r c."""
    return r * C + c * R - r * c


def _seen_before_in_layer(flags: torch.Tensor, layer: torch.Tensor, starts: torch.Tensor):
    """For items grouped by layer (layer ids ascending), how many True flags precede each item
    inside its own layer's group."""
    csum = torch.cat([flags.new_zeros(1, dtype=torch.long), flags.long().cumsum(0)])
    return csum[:-1] - csum[starts][layer]


def structured_threshold(row_pools: dict[str, torch.Tensor], col_pools: dict[str, torch.Tensor],
                         n_params: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer boolean (removed_rows, removed_cols) from ONE pool of all rows and columns.

    Structures are taken in ascending cost (ties: layer order of `row_pools`, rows before
    columns, then index); a row adds C - c_current removed parameters, a column R - r_current,
    so a layer ends at r C + c R - r c. The result is the shortest such prefix whose total
    reaches `n_params` removed parameters (everything when it never does), but never shorter than the structures
    with negative cost: callers give already-dead structures cost -1, so they are always kept.
    """
    names = list(row_pools)
    if set(names) != set(col_pools):
        raise ValueError("row_pools and col_pools must name the same layers")
    R = torch.tensor([row_pools[n].numel() for n in names], dtype=torch.long)
    C = torch.tensor([col_pools[n].numel() for n in names], dtype=torch.long)
    parts = [p for n in names for p in (row_pools[n], col_pools[n])]
    cost = torch.cat([p.reshape(-1).double().cpu() for p in parts]) if parts else torch.zeros(0)
    sizes = R + C
    starts = sizes.cumsum(0) - sizes
    layer = torch.repeat_interleave(torch.arange(len(names)), sizes)
    is_row = torch.arange(len(cost)) - starts[layer] < R[layer]

    # Stable sort: equal costs keep concatenation order = (layer, rows first, index).
    order = torch.argsort(cost, stable=True)
    lay, row = layer[order], is_row[order]
    # Group the sorted items by layer (keeping cost order inside a layer) to count, for each
    # item, the rows and columns of its layer taken before it.
    by_layer = torch.argsort(lay, stable=True)
    lay_g, row_g = lay[by_layer], row[by_layer]
    rows_seen = _seen_before_in_layer(row_g, lay_g, starts)
    cols_seen = _seen_before_in_layer(~row_g, lay_g, starts)
    marginal = torch.empty_like(lay)
    marginal[by_layer] = torch.where(row_g, C[lay_g] - cols_seen, R[lay_g] - rows_seen)

    total = marginal.cumsum(0)  # nondecreasing: every marginal is >= 0
    take = 0 if n_params <= 0 else int(torch.searchsorted(total, torch.tensor([n_params]))) + 1
    take = max(min(take, len(order)), int((cost < 0).sum()))
    chosen = torch.zeros(len(order), dtype=torch.bool)
    chosen[order[:take]] = True

    out, start = {}, 0
    for i, n in enumerate(names):
        r, c = int(R[i]), int(C[i])
        rows = chosen[start : start + r].to(row_pools[n].device)
        cols = chosen[start + r : start + r + c].to(col_pools[n].device)
        out[n] = (rows, cols)
        start += r + c
    return out


def obs_structured_update(W: torch.Tensor, Gi: torch.Tensor, Ai: torch.Tensor,
                          rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """W after removing the rows and columns given as boolean masks (length R and C).

    Row update dW_R = -Gi[:, R] Gi[R, R]^-1 W[R, :] (A cancels), then the column update
    dW_C = -W'[:, C] Ai[C, C]^-1 Ai[C, :] of the row-updated W'. Under H = G~ (x) A~ the two
    projections commute, so the sequence is the joint optimum of removing both sets (summing
    two updates computed from the same W is not). Removed rows and columns are then set
    exactly to zero. Solved in float64, returned in W's dtype.
    """
    Wn = W.double().clone()
    Gi, Ai = Gi.double(), Ai.double()
    rows, cols = rows.to(W.device), cols.to(W.device)
    if rows.any():
        Wn -= Gi[:, rows] @ spd_solve(Gi[rows][:, rows], Wn[rows])
        Wn[rows] = 0.0
    if cols.any():
        Wn -= spd_solve(Ai[cols][:, cols], Wn[:, cols].T).T @ Ai[cols]
    Wn[rows] = 0.0
    Wn[:, cols] = 0.0
    return Wn.to(W.dtype)
