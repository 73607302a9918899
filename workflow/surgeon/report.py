"""summary.csv and summary.md from the evaluation JSON files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

COLUMNS = ["model", "experiment", "method", "structure", "target", "shot", "sparsity", "params",
           "nonzero_params", "size_mb", "ppl", "compress_wall_s"]


def summary_rows(eval_files: list[str | Path]) -> list[dict]:
    rows = []
    for path in eval_files:
        e = json.loads(Path(path).read_text())
        rows.append({
            "model": e["model"],
            "experiment": e["experiment"],
            "method": e["method"],
            "structure": e["structure"],
            "target": e["target"],
            "shot": e["shot"],
            "sparsity": round(e["sparsity"], 4),
            "params": e["params"],
            "nonzero_params": e["nonzero_params"],
            "size_mb": round(e["size_bytes"] / 2**20, 1),
            "ppl": round(e["ppl"], 3),
            "compress_wall_s": e.get("compress_wall_s", 0.0),
        })
    rows.sort(key=lambda r: (r["model"], r["experiment"] != "dense", r["experiment"], r["shot"]))
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"
