"""benchmarks.csv: Snakemake's per-job benchmark TSVs (wall time, peak memory) in one table.

Snakemake writes `benchmarks/<...>/<rule>.<wildcards>.tsv` after each job; the rule and job are
read back from that path (or from the `rule_name`/`wildcards` columns of --benchmark-extended).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import SurgeonError

FIELDS = ["rule", "job", "wall_s", "max_rss_mb", "cpu_s", "path"]


def _number(value: str | None) -> float | None:
    """Snakemake writes NA (or '-') when it could not measure a value."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_benchmark(path: str | Path) -> dict:
    """Mean wall and CPU seconds over the repeats in one TSV, and the largest peak RSS (MB)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise SurgeonError(f"{path}: not a Snakemake benchmark file (no 's' column)")

    def mean(key):
        values = [v for v in (_number(r.get(key)) for r in rows) if v is not None]
        return round(sum(values) / len(values), 3) if values else ""

    # a job shorter than Snakemake's first memory sample gets max_rss 0.00: not measured either
    rss = [v for v in (_number(r.get("max_rss")) for r in rows) if v]
    return {"wall_s": mean("s"), "cpu_s": mean("cpu_time"),
            "max_rss_mb": round(max(rss), 2) if rss else "",
            "rule_name": rows[0].get("rule_name", ""), "wildcards": rows[0].get("wildcards", "")}


def job_of(path: str | Path, root: str | Path) -> tuple[str, str]:
    """(rule, job) from `<root>/<folders>/<rule>.<wildcards>.tsv`: the job is the folders under
    the root (model, experiment) and the wildcard part of the name (shot-2, quantized-gptq4)."""
    rel = Path(path).relative_to(root)
    rule, _, rest = rel.name.removesuffix(".tsv").partition(".")
    job = "/".join([*rel.parent.parts, *([rest] if rest else [])])
    return rule, job


def benchmark_files(dirs: list[str | Path], files: list[str | Path] = ()) -> list[Path]:
    """The *.tsv directly inside each folder (not below it), plus extra files that exist."""
    found = {p for d in dirs if Path(d).is_dir() for p in Path(d).glob("*.tsv")}
    found |= {Path(f) for f in files if Path(f).is_file()}
    return sorted(found)


def gather(paths: list[str | Path], root: str | Path) -> list[dict]:
    rows = []
    for path in paths:
        b = read_benchmark(path)
        rule, job = job_of(path, root)
        rows.append({"rule": b["rule_name"] or rule, "job": b["wildcards"] or job,
                     "wall_s": b["wall_s"], "max_rss_mb": b["max_rss_mb"], "cpu_s": b["cpu_s"],
                     "path": str(path)})
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def per_rule(rows: list[dict]) -> dict[str, dict]:
    """Per rule: number of jobs, total wall seconds, largest peak RSS (MB)."""
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r["rule"], {"jobs": 0, "wall_s": 0.0, "max_rss_mb": 0.0})
        s["jobs"] += 1
        s["wall_s"] += float(r["wall_s"] or 0)
        s["max_rss_mb"] = max(s["max_rss_mb"], float(r["max_rss_mb"] or 0))
    return out
