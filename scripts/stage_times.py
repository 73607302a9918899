"""Seconds per shot per stage, and the run's total, from Snakemake's `benchmark:` files.

Every rule writes benchmarks/<model>/<experiment>/<rule>.shot-<k>.tsv (wall seconds `s`, peak
RSS `max_rss` in MB). This prints, for the experiments of the given config files, one markdown
row per shot (curvature, prune, evaluation) and the sum of all jobs those experiments need,
shared jobs (import, calibration, dense curvature, dense evaluation) counted once:
  python scripts/stage_times.py --configfile config/config.yaml [more.yaml ...]
"""

import argparse
import csv
from pathlib import Path

import yaml

STAGES = ("estimate_curvature", "prune_shot", "evaluate")


def seconds(path: Path) -> float | None:
    """Wall seconds of one benchmark file (the last repeat if several), None if missing."""
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


def merged_config(files: list[str]) -> dict:
    """Config files merged the way Snakemake merges several --configfile (later wins)."""
    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) else v
        return a

    cfg: dict = {}
    for f in files:
        merge(cfg, yaml.safe_load(Path(f).read_text()))
    return cfg


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"])
    p.add_argument("--benchmarks", default="benchmarks")
    args = p.parse_args()
    cfg = merged_config(args.configfile)
    if "model" not in cfg:
        raise SystemExit("no model in the config: a preset that extends the default needs "
                         "--configfile config/config.yaml PRESET.yaml")
    root = Path(args.benchmarks) / cfg["model"]["name"]
    shared = {
        "import_model": root / "import_model.tsv",
        "calibrate": root / "calibrate.tsv",
        "dense curvature": root / "dense" / "estimate_curvature.tsv",
        "dense evaluation": root / "dense" / "evaluate.dense.tsv",
    }
    total, missing = 0.0, []
    print("| experiment | shot | curvature s | prune s | evaluate s |\n|---|---|---|---|---|")
    for name, exp in cfg["experiments"].items():
        for shot in range(1, exp.get("shots", 1) + 1):
            cells = []
            for stage in STAGES:
                s = seconds(root / name / f"{stage}.shot-{shot}.tsv")
                if s is None and stage == "estimate_curvature" and shot == 1:
                    cells.append("dense")  # shot 1 reads the shared dense curvature
                    continue
                cells.append("" if s is None else f"{s:.1f}")
                total += s or 0.0
            if not any(c not in ("", "dense") for c in cells):
                missing.append(f"{name} shot {shot}")
            print(f"| {name} | {shot} | " + " | ".join(cells) + " |")
    for label, path in shared.items():
        s = seconds(path)
        print(f"| {label} | | | | {'' if s is None else f'{s:.1f}'} |")
        total += s or 0.0
    print(f"\nsum of job wall times: {total:.0f} s ({total / 60:.1f} min)")
    if missing:
        print(f"no benchmark for: {', '.join(missing)}")


if __name__ == "__main__":
    main()
