"""Text sources and token windows for calibration and evaluation.

Calibration and evaluation never overlap: a single-text source is split at a document boundary
(evaluation = the last `evaluation_fraction`), a hub data set uses its train and test splits.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SurgeonError

HUB_DATASETS = {
    # name -> (dataset path, config, calibration split, evaluation split, text field)
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "train", "test", "text"),
    "c4": ("allenai/c4", "en", "train", "validation", "text"),
}


@dataclass
class TextSplit:
    calibration: str
    evaluation: str
    description: dict


COMMON_LICENSES = Path("/usr/share/common-licenses")
EMBEDDED_TEXTS = ("pydoc-topics", "common-licenses")


def embedded_documents(name: str) -> list[str]:
    """Texts that ship with the machine: CPython's documentation topics (`pydoc_data`), or the
    licence texts of Debian's base-files (English legal prose: a text of another kind, used to
    score perplexity out of the calibration text's domain)."""
    if name == "pydoc-topics":
        from pydoc_data.topics import topics

        return [topics[k] for k in sorted(topics)]
    if name == "common-licenses":
        files = sorted(p for p in COMMON_LICENSES.glob("*") if p.is_file() and not p.is_symlink())
        if not files:
            raise SurgeonError(f"embedded text 'common-licenses' needs {COMMON_LICENSES} "
                               "(Debian's base-files); point data.ood_source at a local text")
        return [p.read_text(encoding="utf-8") for p in files]
    raise SurgeonError(f"unknown embedded text '{name}'; known: {', '.join(EMBEDDED_TEXTS)}")


def source_documents(source: str) -> list[str]:
    """Documents of an embedded text or of local .txt/.jsonl files."""
    if source.startswith("embedded:"):
        return embedded_documents(source.split(":", 1)[1])
    return file_documents(source)


def file_documents(pattern: str) -> list[str]:
    """Documents from .txt files (one document per file) or .jsonl files (field `text`)."""
    paths = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    if not paths or not all(Path(p).is_file() for p in paths):
        raise SurgeonError(f"text source not found: {pattern}")
    docs = []
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise SurgeonError(f"{p} is not UTF-8 text (byte {err.start}: "
                               f"{err.object[err.start:err.start + 1]!r}); convert it, e.g. "
                               f"iconv -f latin1 -t utf-8") from None
        if not text.strip():
            raise SurgeonError(f"text file {p} is empty")
        if p.endswith(".jsonl"):
            for i, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        docs.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise SurgeonError(f"{p}:{i + 1}: expected a JSON object with 'text'") from None
        else:
            docs.append(text)
    return docs


def split_documents(docs: list[str], evaluation_fraction: float) -> tuple[str, str, int]:
    """Cut the document list so the last `evaluation_fraction` of characters is evaluation."""
    docs = [d for d in docs if d.strip()]
    total = sum(len(d) for d in docs)
    if total == 0:
        raise SurgeonError("text source is empty")
    if len(docs) < 2:  # one document: split it at a paragraph boundary
        text = docs[0]
        cut = text.rfind("\n\n", 0, int(len(text) * (1 - evaluation_fraction)))
        cut = cut if cut > 0 else int(len(text) * (1 - evaluation_fraction))
        return text[:cut], text[cut:].lstrip("\n"), cut
    target, running = total * (1 - evaluation_fraction), 0
    for i, d in enumerate(docs):
        if running + len(d) > target:
            break
        running += len(d)
    i = min(max(i, 1), len(docs) - 1)
    return "\n\n".join(docs[:i]), "\n\n".join(docs[i:]), i


def drop_shared_paragraphs(calibration: str, evaluation: str, min_chars: int = 40):
    """Remove evaluation paragraphs that occur verbatim in the calibration text.

    Sources repeat boilerplate (pydoc topics share whole paragraphs); without this the same
    passage could be calibrated on and then evaluated.
    """
    kept, dropped = [], 0
    for para in evaluation.split("\n\n"):
        if len(para.strip()) >= min_chars and para in calibration:
            dropped += 1
        else:
            kept.append(para)
    return "\n\n".join(kept), dropped


def hub_split(name: str) -> TextSplit:
    path, cfg, cal, ev, field = HUB_DATASETS[name]
    try:
        import datasets

        cal_ds = datasets.load_dataset(path, cfg, split=cal, streaming=(name == "c4"))
        ev_ds = datasets.load_dataset(path, cfg, split=ev, streaming=(name == "c4"))
    except Exception as err:
        raise SurgeonError(
            f"cannot load data set '{name}' from the hub ({type(err).__name__}); offline, "
            "use data.source: embedded:pydoc-topics or a local .txt/.jsonl file"
        ) from None
    take = 20000 if name == "c4" else None
    cal_text = "\n\n".join(r[field] for i, r in enumerate(cal_ds) if take is None or i < take)
    ev_text = "\n\n".join(r[field] for i, r in enumerate(ev_ds) if take is None or i < 2000)
    # published splits are kept as they are, so perplexities compare with the papers
    return TextSplit(cal_text, ev_text, {"source": name, "split": f"{cal}/{ev}"})


def load_split(source: str, evaluation_fraction: float) -> TextSplit:
    if source in HUB_DATASETS:
        return hub_split(source)
    docs = source_documents(source)
    cal, ev, cut = split_documents(docs, evaluation_fraction)
    ev, dropped = drop_shared_paragraphs(cal, ev)
    return TextSplit(cal, ev, {"source": source, "split_at_document": cut,
                               "evaluation_fraction": evaluation_fraction,
                               "evaluation_paragraphs_dropped_as_shared": dropped})


def tokenize(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    return ids.long()


def cut_windows(ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Non-overlapping windows of `seqlen` tokens (the tail that does not fill one is dropped)."""
    n = ids.numel() // seqlen
    return ids[: n * seqlen].view(n, seqlen)


def calibration_windows(ids: torch.Tensor, seqlen: int, count: int, seed: int,
                        setting: str = "data.calibration_windows") -> torch.Tensor:
    """`count` distinct non-overlapping windows drawn at random (seeded) from the token stream."""
    windows = cut_windows(ids, seqlen)
    if count > len(windows):
        raise SurgeonError(
            f"calibration text gives only {len(windows)} windows of {seqlen} tokens, "
            f"{count} requested; lower {setting} or data.seqlen"
        )
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=gen)[:count]
    return windows[order]


def ood_text(source: str) -> str:
    """The whole out-of-domain text (a hub data set: its evaluation split); it is never
    calibrated on, so no part of it is held back."""
    if source in HUB_DATASETS:
        return hub_split(source).evaluation
    docs = [d for d in source_documents(source) if d.strip()]
    if not docs:
        raise SurgeonError(f"out-of-domain text {source} is empty")
    return "\n\n".join(docs)


def save_windows(path, windows: torch.Tensor, meta: dict) -> None:
    """Token windows as safetensors (key `windows`), metadata as strings; written atomically."""
    from safetensors.torch import save_file

    from .artifacts import atomic_path

    with atomic_path(path) as tmp:
        save_file({"windows": windows.contiguous()}, str(tmp),
                  metadata={k: str(v) for k, v in meta.items()})


def load_windows(path) -> tuple[torch.Tensor, dict]:
    """(windows, metadata) of a file written by save_windows."""
    from safetensors import safe_open

    from .artifacts import rebuild_hint

    if not Path(path).is_file():
        raise SurgeonError(f"windows file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("windows"), f.metadata()
    except Exception as err:
        raise SurgeonError(f"cannot read windows file {path} (corrupt?): {err}; "
                           + rebuild_hint(path)) from None


def tokenizer_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
