"""Eigenvalue spectra of the K-FAC factors of a few chosen layers (the report's curvature figure).

A spectrum is small (one number per row of A and G), so a tiny JSON per curvature file is all the
report needs; the file itself may be a temp() artifact that Snakemake deletes once this has run.
"""

from __future__ import annotations

import re

import torch

from .curvature_store import open_curvature, read_factors

# one attention Linear and one MLP Linear per chosen block: q_proj reads the residual stream,
# down_proj the MLP's inner activations (the largest A factor of a Llama block; OPT's fc2,
# GPT-2's mlp.c_proj; GPT-2's fused c_attn comes first of its attention by name anyway)
PREFERRED = {"attention": ("q_proj",), "MLP": ("down_proj", "fc2", "mlp.c_proj")}


def block_index(name: str) -> int | None:
    """Decoder block of a layer name (`model.layers.3.mlp.up_proj` -> 3); None if it has none."""
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def kind(name: str) -> str:
    return "attention" if "attn" in name or "attention" in name else "MLP"


def chosen_layers(names) -> list[tuple[int, str, str]]:
    """(block, kind, name) for the first, middle and last decoder block: its attention and its
    MLP Linear, the PREFERRED module when present (else the first of that kind by name)."""
    blocks: dict[int, list[str]] = {}
    for n in names:
        b = block_index(n)
        if b is not None:
            blocks.setdefault(b, []).append(n)
    order = sorted(blocks)
    if not order:
        return []
    picks = sorted({order[0], order[len(order) // 2], order[-1]})
    chosen = []
    for b in picks:
        for k, preferred in PREFERRED.items():
            members = sorted(n for n in blocks[b] if kind(n) == k)
            if members:
                name = next((n for n in members if n.endswith(preferred)), members[0])
                chosen.append((b, k, name))
    return chosen


def spectrum(M: torch.Tensor) -> list[float]:
    """Eigenvalues of a symmetric factor, largest first, to 6 significant digits (float64: the
    small ones are what a log axis shows)."""
    eig = torch.linalg.eigvalsh(M.double()).flip(0)
    return [float(f"{v:.6g}") for v in eig.tolist()]


def curvature_spectra(path) -> dict:
    """Spectra of A and G of the chosen layers of one curvature.h5."""
    layers = []
    with open_curvature(path) as f:
        for block, k, name in chosen_layers(list(f)):
            A, G = read_factors(f, name)
            layers.append({"name": name, "block": block, "kind": k,
                           "tokens": int(f[name].attrs["tokens"]),
                           "A": spectrum(A), "G": spectrum(G)})
    return {"curvature": str(path), "layers": layers}
