"""`surgeon inspect`: audit table of a curvature file (spectra and conditioning per layer)."""

from __future__ import annotations

import csv
import io
import json
import math
import re

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


def model_order(name: str) -> list:
    """Sort key that puts layers.2 before layers.10 (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def factor_check(summary: dict, which: str) -> list[str]:
    """Problems of one factor: a mean of outer products has no negative or NaN eigenvalue (up
    to rounding), so either means the file is damaged or was not written by this tool."""
    problems = []
    if any(math.isnan(v) for v in summary.values()):
        problems.append(f"NaN in {which}")
    elif summary["eig_min"] < -1e-6 * max(abs(summary["eig_max"]), 1e-30):
        problems.append(f"negative eigenvalue of {which}")
    return problems


def curvature_table(path, damp_g: float = 0.1, damp_a: float = 0.01) -> list[dict]:
    rows = []
    with open_curvature(path) as f:
        for name in sorted(f, key=model_order):
            A, G = read_factors(f, name)
            attrs = f[name].attrs
            a, g = factor_summary(A, damp_a), factor_summary(G, damp_g)
            rows.append({
                "layer": name,
                "shape": "x".join(str(int(s)) for s in attrs["weight_shape"]),
                "tokens": int(attrs["tokens"]),
                **{f"A_{k}": v for k, v in a.items()},
                **{f"G_{k}": v for k, v in g.items()},
                "check": "; ".join(factor_check(a, "A") + factor_check(g, "G")) or "ok",
            })
    return rows


def format_rows(rows: list[dict], fmt: str) -> str:
    """The table as aligned text, CSV or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["layer"])
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return format_table(rows)


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no layers)"
    cols = list(rows[0])
    cells = [[c for c in cols]] + [
        [f"{r[c]:.3e}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)
