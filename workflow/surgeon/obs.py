"""Optimal Brain Surgeon under a Kronecker-factored Hessian H = G (x) A (docs/algorithms.md §1-4).

Pure functions on tensors. W is R x C (a bias is an extra column), G is R x R, A is C x C.
"""

from __future__ import annotations

import torch

from .linalg import damped, spd_inverse


def dead_structures(W: torch.Tensor, G: torch.Tensor, A: torch.Tensor):
    """Boolean (dead_rows, dead_cols): all-zero rows/columns, or zero curvature diagonal."""
    dead_rows = (W == 0).all(dim=1) | (G.diagonal() <= 0)
    dead_cols = (W == 0).all(dim=0) | (A.diagonal() <= 0)
    return dead_rows, dead_cols


def kfac_inverses(G, A, live_rows, live_cols, damp_g: float, damp_a: float):
    """Gi = (G~[live,live])^-1 and Ai = (A~[live,live])^-1 of the live sub-problem."""
    Gl = G[live_rows][:, live_rows]
    Al = A[live_cols][:, live_cols]
    return spd_inverse(damped(Gl, damp_g)), spd_inverse(damped(Al, damp_a))


def element_costs(W: torch.Tensor, gi_diag: torch.Tensor, ai_diag: torch.Tensor) -> torch.Tensor:
    """OBS cost of removing each element alone: 0.5 W_rc^2 / (Gi_rr Ai_cc)."""
    W = W.double()
    return 0.5 * W.square() / (gi_diag[:, None] * ai_diag[None, :])


def obd_element_costs(W: torch.Tensor, g_diag: torch.Tensor, a_diag: torch.Tensor) -> torch.Tensor:
    """K-OBD cost (no update): 0.5 W_rc^2 G_rr A_cc; L-OBD passes g_diag = 1 (G = I)."""
    W = W.double()
    return 0.5 * W.square() * g_diag.double()[:, None] * a_diag.double()[None, :]


def row_blocks(Gi: torch.Tensor, Ai: torch.Tensor, remove: torch.Tensor, budget: int):
    """Cholesky factors of the per-row diagonal blocks Gi_rr Ai[Q_r, Q_r] of
    M = (Gi (x) Ai)[Q, Q], Q = the True entries of `remove`.

    Rows are sorted by their count |Q_r| and put in batches of about `budget` matrix entries,
    shorter rows padded with identity (budget 0: one row per batch, no padding, the fastest
    on a CPU; a GPU wants large batches). Returns [(rows, cols, valid, L)]: cols (b x n) are
    the removed columns of each row, padding points at column 0 with valid False.
    """
    counts = remove.sum(dim=1)
    rows = torch.nonzero(counts).flatten()
    rows = rows[torch.argsort(counts[rows], stable=True)]
    # the removed columns of every row, left-aligned (a stable sort puts True first)
    order = torch.argsort((~remove[rows]).to(torch.uint8), dim=1, stable=True)
    sizes = counts[rows].tolist()  # one device sync, not one per row
    batches, start = [], 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and (stop - start + 1) * sizes[stop] ** 2 <= budget:
            stop += 1
        r = rows[start:stop]
        n = sizes[stop - 1]
        cols = order[start:stop, :n]
        valid = torch.arange(n, device=cols.device)[None, :] < counts[r][:, None]
        if len(r) == 1:
            M = (Ai.index_select(0, cols[0]).index_select(1, cols[0]) * Gi[r[0], r[0]])[None]
        else:
            cols = cols.masked_fill(~valid, 0)
            M = Ai[cols[:, :, None], cols[:, None, :]] * Gi[r, r][:, None, None]
            M = M.masked_fill(~(valid[:, :, None] & valid[:, None, :]), 0.0)
            M.diagonal(dim1=1, dim2=2).add_((~valid).to(M.dtype))
        L, info = torch.linalg.cholesky_ex(M)
        if bool((info > 0).any()):  # not positive definite at this precision: float64
            L = torch.linalg.cholesky(M.double()).to(M.dtype)
        batches.append((r, cols, valid, L))
        start = stop
    return batches


def solve_row_blocks(batches, X: torch.Tensor) -> torch.Tensor:
    """Z[r, Q_r] = (Gi_rr Ai[Q_r, Q_r])^-1 X[r, Q_r] for every row, zero outside Q."""
    Z = torch.zeros_like(X)
    for r, cols, valid, L in batches:
        z = torch.cholesky_solve(X[r[:, None], cols][:, :, None], L)[:, :, 0]
        if len(r) == 1:
            Z[r[0], cols[0]] = z[0]
        else:
            Z[r[:, None].expand_as(cols)[valid], cols[valid]] = z[valid]
    return Z


CG_TOL = 1e-2  # relative residual: the layer's loss is then within ~1e-5 of the optimum


def obs_element_prune(W: torch.Tensor, Gi: torch.Tensor, Ai: torch.Tensor, remove: torch.Tensor,
                      tol: float = CG_TOL, max_iter: int = 100, budget: int | None = None
                      ) -> torch.Tensor:
    """Remove every element of `remove` (R x C bool) at once with the optimal correlated update.

    The KKT system of min 0.5 tr(dW^T G~ dW A~) s.t. (W + dW)[Q] = 0 is
    M u = w_Q with M = Gi[r_i, r_j] Ai[c_i, c_j], and dW = -Gi U Ai (U the scatter of u).
    Q may hold every weight of a layer, too many to factor M, so M u = w_Q is solved by
    conjugate gradients: M U = (Gi U Ai)[Q] costs two matrix products, and the exact
    per-row blocks Gi_rr Ai[Q_r, Q_r] (a row's own solve, which is exact when Gi is diagonal)
    precondition it; rows couple only through the off-diagonal of Gi, so a few iterations
    (`tol`: relative residual, i.e. how far the kept constraints are from exactly zero before
    the final zeroing) reach the joint optimum. Q is zeroed exactly at the end. Works in the
    dtype of Gi.
    """
    W = W.to(Gi.dtype)
    if budget is None:
        budget = 1 << 24 if W.is_cuda else 0
    Qf = remove.to(W.dtype)
    residual = W * Qf
    norm0 = residual.norm()
    U = torch.zeros_like(W)
    if norm0 > 0:
        blocks = row_blocks(Gi, Ai, remove, budget)
        Z = solve_row_blocks(blocks, residual)
        P, rz = Z, (residual * Z).sum()
        for _ in range(max_iter):
            MP = (Gi @ P @ Ai) * Qf
            alpha = rz / (P * MP).sum()
            U += alpha * P
            residual -= alpha * MP
            if residual.norm() <= tol * norm0:
                break
            Z = solve_row_blocks(blocks, residual)
            rz, rz_old = (residual * Z).sum(), rz
            P = Z + (rz / rz_old) * P
    out = W - Gi @ U @ Ai
    out[remove] = 0.0
    return out
