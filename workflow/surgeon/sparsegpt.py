"""SparseGPT (Frantar & Alistarh 2023) for one layer, with H = the K-FAC A factor.

H = A + damp * mean(diag A) * I; U = upper Cholesky factor of H^-1. Columns are processed left
to right in blocks: the mask of a block is chosen adaptively from w^2 / U_cc^2 (unstructured:
the cheapest `fraction` of the block; N:M: the n cheapest of every m columns, chosen when the
sweep reaches them), and the error of each zeroed column is propagated to the columns on its
right, err = (w - q) / U_cc, W[:, c:] -= err U[c, c:] (lazily across blocks).
"""

from __future__ import annotations

import torch

from .linalg import upper_inverse_cholesky
from .threshold import REMOVED, smallest_k_mask


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, fraction: float, removed: torch.Tensor,
                    weight_cols: int, nm: tuple[int, int] | None = None, blocksize: int = 128,
                    damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune W (R x C) to `fraction` per layer (or N:M on the first `weight_cols` columns).

    `removed` elements (earlier shots, exact zeros) are always in the mask. Returns the updated
    weights (same dtype as W) and the mask; a column with H_cc = 0 never saw an input and is
    zeroed without error propagation.
    """
    out_dtype = W.dtype
    W = W.double().clone()
    H = H.double().clone()
    dead = H.diagonal() <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = upper_inverse_cholesky(H, damp)
    R, C = W.shape
    mask = torch.zeros(R, C, dtype=torch.bool, device=W.device)
    forced = removed | (W == 0)
    for i1 in range(0, C, blocksize):
        i2 = min(i1 + blocksize, C)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        d2 = U1.diagonal().square()
        errors = torch.zeros_like(W1)
        if nm is None:
            scores = (W1.square() / d2).masked_fill(forced[:, i1:i2], REMOVED)
            M1 = smallest_k_mask(scores, round(fraction * scores.numel())) | forced[:, i1:i2]
        else:
            M1 = forced[:, i1:i2].clone()
        for i in range(i2 - i1):
            c = i1 + i
            if nm is not None and c % nm[1] == 0 and c + nm[1] <= weight_cols:
                n, m = nm
                s = (W1[:, i : i + m].square() / d2[i : i + m])
                s = s.masked_fill(forced[:, c : c + m], REMOVED)
                M1[:, i : i + m].scatter_(1, s.topk(n, dim=1, largest=False).indices, True)
            w = W1[:, i]
            err = torch.where(M1[:, i], w, torch.zeros_like(w)) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            errors[:, i] = err
        W1[M1] = 0.0
        W[:, i1:i2] = W1
        mask[:, i1:i2] = M1
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    return W.to(out_dtype), mask
