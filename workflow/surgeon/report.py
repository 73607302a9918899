"""summary.csv and summary.md from the evaluation JSON files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .errors import SurgeonError

COLUMNS = ["model", "experiment", "method", "structure", "target", "shot", "stage", "sparsity", "params",
           "nonzero_params", "size_mb", "stored_as", "ppl", "ppl_ood", "compress_wall_s", "tokens_per_s",
           "bits_per_weight"]


# perplexity of a .gguf export computed by llama.cpp (config llama_cpp_scoring), when measured
LLAMA_CPP_COLUMNS = ["ppl_llamacpp", "ppl_ood_llamacpp"]


def report_columns(rows: list[dict]) -> list[str]:
    """COLUMNS, and the llama.cpp ones when a row has them (empty cells for the others)."""
    extra = [c for c in LLAMA_CPP_COLUMNS if any(c in r for r in rows)]
    for r in rows:
        for c in extra:
            r.setdefault(c, "")
    return COLUMNS + extra


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
            "stage": e.get("stage", "dense" if e["shot"] == 0 else f"shot-{e['shot']}"),
            "sparsity": round(e["sparsity"], 4),
            "params": e["params"],
            "nonzero_params": e["nonzero_params"],
            **stored_size(e),
            "ppl": round(e["ppl"], 3),
            "ppl_ood": round(e["ppl_ood"], 3) if "ppl_ood" in e else "",
            "compress_wall_s": e.get("compress_wall_s", 0.0),
            "tokens_per_s": e.get("tokens_per_s", ""),
            "bits_per_weight": e.get("quantization", {}).get("bits_per_weight", ""),
            **{k: round(e[k], 3) for k in LLAMA_CPP_COLUMNS if k in e},
        })
    rows.sort(key=lambda r: (r["model"], r["experiment"] != "dense", r["experiment"], r["shot"],
                             r["stage"] == "recovered"))
    return rows


def stored_size(e: dict) -> dict:
    """A quantized model counts at its smallest export (its folder holds dequantized float32
    weights for evaluation); other models at their safetensors files."""
    exports = e.get("export_bytes")
    if exports:
        fmt, size = min(exports.items(), key=lambda kv: kv[1])
    else:
        fmt, size = "safetensors", e["size_bytes"]
        if "quantization" in e:
            fmt = "safetensors (dequantized)"
    return {"size_mb": round(size / 2**20, 1), "stored_as": fmt}


def with_zeroshot(rows: list[dict], zeroshot_files: list[str | Path]) -> tuple[list, list]:
    """(rows, added columns): each row gains `zeroshot_acc` (mean acc over the tasks that ran)
    and `acc_<task>` from the zero-shot JSON of the same model, experiment and stage; rows
    without one get empty cells."""
    scores, tasks = {}, []
    for path in zeroshot_files:
        z = json.loads(Path(path).read_text())
        acc = {f"acc_{t}": round(v["acc"], 4) for t, v in z["tasks"].items()
               if v.get("acc") is not None}
        avg = z.get("average_acc")
        scores[(z["model"], z["experiment"], z["stage"])] = {
            "zeroshot_acc": "" if avg is None else round(avg, 4), **acc}
        tasks += [c for c in acc if c not in tasks]
    if not scores:
        return rows, []
    columns = ["zeroshot_acc", *sorted(tasks)]
    empty = dict.fromkeys(columns, "")
    return [{**r, **empty, **scores.get((r["model"], r["experiment"], r["stage"]), {})}
            for r in rows], columns


def to_csv(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compaction_markdown(eval_files: list[str | Path]) -> str:
    """What compaction removed and what it could not, per compacted experiment."""
    lines = []
    for path in eval_files:
        e = json.loads(Path(path).read_text())
        c = e.get("compaction")
        if not c:
            continue
        left = ", ".join(f"{k} {v}" for k, v in c["zero_weights_left_by_module"].items() if v)
        diff = c.get("max_abs_logit_diff")
        lines.append(
            f"| {e['experiment']} | {c['decoder_linear_params_before']} | "
            f"{c['decoder_linear_params_after']} | {c['realised_fraction']:.2%} | "
            f"{c['removed_heads']} | {c['padded_heads']} | {left or 'none'} | "
            f"{'' if diff is None else f'{diff:.2e}'} |")
    if not lines:
        return ""
    head = ["", "Compaction: decoder-Linear weights before/after, share of the zeros removed, "
            "query heads removed and kept only as padding, zeros left (inside heads or in the "
            "residual dimension), max |logit difference| to the masked model (fp32).", "",
            "| experiment | before | after | realised | heads removed | padded heads "
            "| zeros left | max logit diff |", "|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"


def read_losses(path: str | Path) -> list[float]:
    """Loss per optimizer step from a recover stage's loss.tsv (header `step<TAB>loss`)."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] != "step\tloss":
        raise SurgeonError(f"{path}: not a loss curve (expected a 'step<TAB>loss' header)")
    return [float(line.split("\t")[1]) for line in lines[1:]]


def plot_losses(curves: dict[str, list[float]], out: str | Path) -> None:
    """One line per experiment: training loss against optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in sorted(curves.items()):
        ax.plot(range(1, len(losses) + 1), losses, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("LoRA recovery")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=120)
    plt.close(fig)
