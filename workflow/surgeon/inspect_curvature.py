"""`surgeon inspect`: audit table of a curvature file (spectra and conditioning per layer)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import torch

from .artifacts import file_hash
from .curvature_store import open_curvature, read_factors
from .linalg import damped
from .methods import DAMPING_A_DEFAULT, damping_g_default

# what `inspect` damps a factor by when no flag and no prune manifest says otherwise
DEFAULT_DAMPING = {"damping_g": damping_g_default("unstructured"), "damping_a": DAMPING_A_DEFAULT}


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


def shot_manifests(path) -> list[Path]:
    """Manifests of the prune shots that may have read the curvature file at `path`, in the
    workflow's layout: the model folder beside it (shot-<k>/model) and, for the dense
    curvature, the first shot of every experiment (kept or under scratch/)."""
    folder = Path(path).parent
    found = [folder / "model" / "manifest.json"]
    if folder.name == "dense":
        for shot in ("*/shot-1", "*/scratch/shot-1"):
            found += sorted(folder.parent.glob(f"{shot}/model/manifest.json"))
    return [p for p in found if p.is_file()]


def recorded_damping(path) -> dict[str, dict[float, list[str]]]:
    """damping_g and damping_a -> {value: [manifests]} of the prune shots that read this very
    file (the sha256 they recorded for their curvature input is its own)."""
    found: dict[str, dict[float, list[str]]] = {key: {} for key in DEFAULT_DAMPING}
    manifests = shot_manifests(path)
    sha = file_hash(path) if manifests else None  # cached when verify_inputs hashed it
    for manifest in manifests:
        try:
            info = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        read = info.get("inputs", {}).get("curvature", {}).get("sha256")
        if info.get("stage") != "prune" or read != sha:
            continue
        for key in DEFAULT_DAMPING:
            if key in info.get("config", {}):
                found[key].setdefault(info["config"][key], []).append(str(manifest))
    return found


def run_damping(path, flags: dict) -> tuple[dict, list[str]]:
    """The damping to show for G and A, each with where it came from: a flag that is set, else
    the value the prune shots that read this file recorded, else the default."""
    recorded, damping, notes = recorded_damping(path), {}, []
    for key, default in DEFAULT_DAMPING.items():
        values, flag = recorded[key], "--" + key.replace("_", "-")
        if flags.get(key) is not None:
            damping[key], why = flags[key], flag
        elif len(values) == 1:
            [(damping[key], manifests)] = values.items()
            more = f" and {len(manifests) - 1} more" if len(manifests) > 1 else ""
            why = f"recorded by {manifests[0]}{more}"
        elif values:
            used = ", ".join(f"{v} in {m[0]}" for v, m in sorted(values.items()))
            damping[key], why = default, (f"the default; the shots that read this file used "
                                          f"{used}: choose one with {flag}")
        else:
            damping[key], why = default, ("the default; no prune manifest that read this file "
                                          "records it")
        notes.append(f"{key} {damping[key]} ({why})")
    return damping, notes


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
                "A_damping": damp_a,
                **{f"A_{k}": v for k, v in a.items()},
                "G_damping": damp_g,
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
