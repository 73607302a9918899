"""Figures of the HTML report: pure functions, data in, PNG file out (matplotlib, Agg backend).

Each takes plain Python data (parsed eval JSONs, sparsity rows, spectra, benchmark rows) so it can
be tested on small synthetic inputs without running the workflow.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from .benchmarks import per_rule
from .layer_sparsity import fraction_by

STRUCTURES = ("unstructured", "2:4", "structured")  # panel order; others follow by name
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
KIND_COLORS = {"attention": "C0", "MLP": "C1"}
SPECTRUM_FLOOR = 1e-10  # eigenvalues below this times the panel's largest are drawn at it


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> None:
    """PNG whatever the file name ends with (callers write to a temporary name)."""
    fig.savefig(out, format="png", dpi=110)
    _pyplot().close(fig)


def _stage(e: dict) -> str:
    return e.get("stage") or ("dense" if e["shot"] == 0 else f"shot-{e['shot']}")


def shot_curves(evals: list[dict]) -> tuple[dict | None, dict[str, dict]]:
    """The dense evaluation and, per experiment, its evaluated shots as (shot, sparsity, ppl),
    from parsed eval JSONs; recovered, compacted and quantized stages are left out."""
    dense = next((e for e in evals if _stage(e) == "dense"), None)
    curves: dict[str, dict] = {}
    for e in evals:
        if not _stage(e).startswith("shot-"):
            continue
        c = curves.setdefault(e["experiment"], {"method": e["method"],
                                                "structure": e["structure"], "points": []})
        c["points"].append((int(e["shot"]), float(e["sparsity"]), float(e["ppl"])))
    for c in curves.values():
        c["points"].sort()
    return dense, curves


def _structure_order(s: str) -> tuple:
    return (STRUCTURES.index(s) if s in STRUCTURES else len(STRUCTURES), s)


def _y_scale(ax, values: list[float]) -> None:
    """Log when the values span more than a factor of 10 (magnitude pruning explodes); within
    one decade a log axis only adds ticks like 3.25x10^2, so plain linear numbers instead."""
    if values and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def plot_perplexity(dense: dict | None, curves: dict[str, dict], out: str | Path) -> None:
    """Perplexity (log axis when it explodes) against sparsity, one panel per structure, one
    line per experiment from the dense model through its evaluated shots."""
    plt = _pyplot()
    structures = sorted({c["structure"] for c in curves.values()}, key=_structure_order) or [""]
    methods = sorted({c["method"] for c in curves.values()})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(structures), figsize=(4.6 * len(structures) + 0.4, 4.2),
                             sharey=True, squeeze=False)
    for ax, structure in zip(axes[0], structures):
        names = sorted(n for n, c in curves.items() if c["structure"] == structure)
        per_method = Counter(curves[n]["method"] for n in names)
        seen: Counter = Counter()
        for name in names:
            c = curves[name]
            i = seen[c["method"]]
            seen[c["method"]] += 1
            start = [(0, dense["sparsity"], dense["ppl"])] if dense else []
            _, xs, ys = zip(*(start + c["points"]))
            label = c["method"] if per_method[c["method"]] == 1 else name
            ax.plot(xs, ys, color=colors[c["method"]], ls=LINESTYLES[i % 4],
                    marker=MARKERS[i % 4], ms=5, label=label)
            if len(c["points"]) > 1:  # name the shots when a line has several
                for k, x, y in c["points"]:
                    ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, -9),
                                fontsize=7, color=colors[c["method"]])
        if dense:
            ax.plot([dense["sparsity"]], [dense["ppl"]], ls="none", marker="*", ms=13,
                    color="black", label=f"dense ({dense['ppl']:.1f})", zorder=3)
        _y_scale(ax, [y for c in curves.values() for _, _, y in c["points"]]
                 + ([dense["ppl"]] if dense else []))
        ax.set_title(structure or "no pruned shots")
        ax.set_xlabel("sparsity (zeros among decoder-Linear weights)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    log = axes[0][0].get_yscale() == "log"
    axes[0][0].set_ylabel("perplexity" + (" (log scale)" if log else ""))
    fig.tight_layout()
    _save(fig, out)


def shot_count_series(evals: list[dict]) -> dict[tuple, list[tuple]]:
    """(method, structure, target) -> sorted [(shots, ppl, ppl_ood)] of every experiment's final
    pruned model (stage shot-<shots>); experiments that differ only in their shot count line up."""
    series: dict[tuple, list[tuple]] = {}
    for e in evals:
        shots = e.get("shots", e["shot"])
        if e.get("stage") != f"shot-{shots}" or e["shot"] != shots or shots == 0:
            continue
        key = (e["method"], e["structure"], e["target"])
        series.setdefault(key, []).append((shots, e["ppl"], e.get("ppl_ood")))
    return {k: sorted(v) for k, v in series.items()}


def plot_shots(series: dict[tuple, list[tuple]], out: str | Path) -> None:
    """Perplexity of the final model against the number of shots it was pruned in, one panel
    per structure, one line per method and target; dashed: the out-of-domain text."""
    plt = _pyplot()
    structures = sorted({k[1] for k in series}, key=_structure_order) or [""]
    fig, axes = plt.subplots(1, len(structures), figsize=(4.6 * len(structures) + 0.4, 4.2),
                             squeeze=False)
    for ax, structure in zip(axes[0], structures):
        keys = sorted(k for k in series if k[1] == structure)
        for i, key in enumerate(keys):
            points = series[key]
            xs = [p[0] for p in points]
            label = f"{key[0]} {key[2]:g}"
            ax.plot(xs, [p[1] for p in points], color=f"C{i % 10}", marker="o", label=label)
            ood = [(x, p[2]) for x, p in zip(xs, points) if p[2] is not None]
            if ood:
                ax.plot(*zip(*ood), color=f"C{i % 10}", marker="s", ls="--",
                        label=f"{label} (out of domain)")
        _y_scale(ax, [p[j] for pts in series.values() for p in pts for j in (1, 2)
                      if p[j] is not None])
        ax.set_xscale("log", base=2)
        ax.set_title(structure or "no pruned models")
        ax.set_xlabel("number of shots")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("perplexity of the final model")
    fig.tight_layout()
    _save(fig, out)


def plot_layer_sparsity(tables: dict[str, list[dict]], out: str | Path) -> None:
    """One panel per experiment: fraction of zeros in each decoder block's attention and MLP
    Linears (bars) and over all decoder Linears (dashed line, and in the title)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    names = list(tables) or [""]
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 2.5 * nrows + 0.5),
                             sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        rows = tables.get(name, [])
        frac = fraction_by(rows, "block", "kind")
        blocks = sorted({r["block"] for r in rows})
        kinds = [k for k in KIND_COLORS if any(r["kind"] == k for r in rows)]
        width = 0.8 / max(1, len(kinds))
        for i, k in enumerate(kinds):
            xs = [b + (i - (len(kinds) - 1) / 2) * width for b in blocks]
            ax.bar(xs, [frac.get((b, k), 0.0) for b in blocks], width, label=k,
                   color=KIND_COLORS[k])
        title = name
        if rows:
            overall = sum(r["zeros"] for r in rows) / sum(r["params"] for r in rows)
            ax.axhline(overall, color="black", ls="--", lw=0.9,
                       label="all decoder Linears")
            title = f"{name}: {overall:.1%} zeros"
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, axis="y", alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("decoder layer")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of zeros")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    _save(fig, out)


def _spectrum_styles(sources: list[dict]) -> list[dict]:
    """Dense in black; each experiment its own colour, darker for later shots; long shot
    series name only their first and last shot in the legend."""
    experiments = [e for e in dict.fromkeys(s["experiment"] for s in sources) if e != "dense"]
    shots = {e: sorted(s["shot"] for s in sources if s["experiment"] == e) for e in experiments}
    styles = []
    for s in sources:
        e, k = s["experiment"], s["shot"]
        if e == "dense":
            styles.append({"color": "black", "lw": 1.6, "label": "dense"})
            continue
        ks = shots[e]
        i = ks.index(k)
        named = len(ks) <= 4 or i in (0, len(ks) - 1)
        styles.append({"color": f"C{experiments.index(e) % 10}", "lw": 1.0,
                       "alpha": 0.35 + 0.65 * (i + 1) / len(ks),
                       "label": f"{e} shot {k}" if named else None})
    return styles


def plot_spectra(sources: list[dict], out: str | Path) -> None:
    """Eigenvalues (largest first, log axis) of A and G of the chosen layers; rows: attention A,
    attention G, MLP A, MLP G; columns: decoder blocks. sources: dicts with experiment ('dense'
    for the dense model's curvature), shot and the `layers` of `spectra.curvature_spectra`."""
    plt = _pyplot()
    layers = [l for s in sources for l in s["layers"]]
    blocks = sorted({l["block"] for l in layers}) or [0]
    kinds = [k for k in ("attention", "MLP") if any(l["kind"] == k for l in layers)] or ["MLP"]
    panels = [(k, f) for k in kinds for f in ("A", "G")]
    fig, axes = plt.subplots(len(panels), len(blocks), squeeze=False,
                             figsize=(3.7 * len(blocks) + 0.3, 2.4 * len(panels) + 1.0))
    styles = _spectrum_styles(sources)
    for i, (k, f) in enumerate(panels):
        for j, b in enumerate(blocks):
            ax = axes[i][j]
            lines = [(st, l) for s, st in zip(sources, styles) for l in s["layers"]
                     if l["block"] == b and l["kind"] == k]
            top = max((max(l[f], default=0.0) for _, l in lines), default=0.0)
            floor = top * SPECTRUM_FLOOR if top > 0 else 1e-30
            for st, l in lines:
                eig = np.maximum(np.asarray(l[f], dtype=float), floor)
                ax.plot(np.arange(1, len(eig) + 1), eig, **st)
            if lines:
                name = lines[0][1]["name"].split(f".{b}.", 1)[-1]
                ax.set_title(f"layer {b} {name}: {f} ({len(lines[0][1][f])})", fontsize=8)
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.tick_params(labelsize=7)
            if i == len(panels) - 1:
                ax.set_xlabel("eigenvalue index (largest first)", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{k} {f}", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    _save(fig, out)


def plot_benchmarks(rows: list[dict], out: str | Path) -> None:
    """Per rule: wall time summed over its jobs (with the job count) and the largest peak RSS of
    one job, from the gathered benchmark rows."""
    plt = _pyplot()
    stats = per_rule(rows)
    rules = sorted(stats, key=lambda r: -stats[r]["wall_s"]) or [""]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.32 * len(rules) + 1.4), sharey=True)
    walls = [stats.get(r, {}).get("wall_s", 0.0) for r in rules]
    left.barh(rules, walls, color="C0")
    for y, r in enumerate(rules):
        if r:
            left.annotate(f" {stats[r]['jobs']} job{'s' * (stats[r]['jobs'] != 1)}",
                          (walls[y], y), va="center", fontsize=7)
    left.set_xlabel("wall time, all jobs of the rule (s)")
    left.invert_yaxis()
    right.barh(rules, [stats.get(r, {}).get("max_rss_mb", 0.0) for r in rules], color="C1")
    right.set_xlabel("peak RSS of its largest job (MB)")
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    _save(fig, out)
