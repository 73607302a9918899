"""Damping and symmetric positive-definite inverses and solves: the one home of each.

Damping is relative to the mean diagonal (docs/algorithms.md §1); factorizations are Cholesky
in float64.
"""

from __future__ import annotations

import torch


def damped(M: torch.Tensor, rel: float) -> torch.Tensor:
    """M + rel * mean(diag M) * I, in float64."""
    M = M.double()
    scale = M.diagonal().mean().clamp_min(1e-30)
    return M + rel * scale * torch.eye(len(M), dtype=M.dtype, device=M.device)


def spd_inverse(M: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive-definite matrix via float64 Cholesky (with jitter retry)."""
    M = M.double()
    eye = torch.eye(len(M), dtype=M.dtype, device=M.device)
    jitter = 0.0
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(M + jitter * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(L)
        jitter = max(jitter * 10, 1e-10 * float(M.diagonal().abs().mean().clamp_min(1e-30)))
    raise torch.linalg.LinAlgError("matrix is not positive definite even with jitter")


def spd_solve(M: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """M^-1 B for symmetric positive-definite M via float64 Cholesky (LU if it fails)."""
    M, B = M.double(), B.double()
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.solve(M, B)


def upper_inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """U with U^T U = (H + damp * mean(diag H) * I)^-1, in float64: the column sweep of
    SparseGPT and GPTQ reads its rows."""
    return torch.linalg.cholesky(spd_inverse(damped(H, damp)), upper=True)
