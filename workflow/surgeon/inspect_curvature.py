"""`surgeon inspect`: audit table of a curvature file (spectra and conditioning per layer)."""

from __future__ import annotations

import torch

from .curvature_store import open_curvature, read_factors
from .linalg import damped


def factor_summary(M: torch.Tensor, rel_damping: float) -> dict:
    eig = torch.linalg.eigvalsh(M.double())
    eig_d = torch.linalg.eigvalsh(damped(M, rel_damping))
    return {
        "trace": float(eig.sum()),
        "eig_min": float(eig[0]),
        "eig_max": float(eig[-1]),
        "cond_damped": float(eig_d[-1] / eig_d[0]),
    }


def curvature_table(path, damp_g: float = 0.1, damp_a: float = 0.01) -> list[dict]:
    rows = []
    with open_curvature(path) as f:
        for name in f:
            A, G = read_factors(f, name)
            attrs = f[name].attrs
            rows.append({
                "layer": name,
                "shape": "x".join(str(int(s)) for s in attrs["weight_shape"]),
                "tokens": int(attrs["tokens"]),
                **{f"A_{k}": v for k, v in factor_summary(A, damp_a).items()},
                **{f"G_{k}": v for k, v in factor_summary(G, damp_g).items()},
            })
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no layers)"
    cols = list(rows[0])
    cells = [[c for c in cols]] + [
        [f"{r[c]:.3e}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)
