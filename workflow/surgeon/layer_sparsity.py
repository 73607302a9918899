"""Where a method removed weights: zeros of every decoder Linear, by block and module.

Counted like `evaluate.sparsity_stats` (weight and bias), but kept as counts per Linear so the
report can weigh them into fractions per block or per module type.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .models import decoder_blocks, decoder_linears

FIELDS = ["layer", "block", "module", "kind", "params", "zeros"]


def layer_zeros(model) -> list[dict]:
    """One row per decoder Linear: block index, module path inside the block, attention/MLP,
    parameter count and number of exact zeros."""
    blocks = decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    rows = []
    for name, layer in decoder_linears(model).items():
        block, module = name.removeprefix(prefix + ".").split(".", 1)
        params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        rows.append({
            "layer": name, "block": int(block), "module": module,
            "kind": "attention" if "attn" in module or "attention" in module else "MLP",
            "params": sum(p.numel() for p in params),
            "zeros": sum(int((p == 0).sum()) for p in params),
        })
    return rows


def to_tsv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_tsv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [{**r, "block": int(r["block"]), "params": int(r["params"]), "zeros": int(r["zeros"])}
            for r in rows]


def fraction_by(rows: list[dict], *keys: str) -> dict[tuple, float]:
    """Fraction of zeros over the rows sharing `keys` (e.g. block and kind), weighted by size."""
    sums: dict[tuple, list[int]] = {}
    for r in rows:
        s = sums.setdefault(tuple(r[k] for k in keys), [0, 0])
        s[0] += r["zeros"]
        s[1] += r["params"]
    return {k: z / n for k, (z, n) in sums.items()}
