"""Calibration and evaluation text never overlap; bad text inputs fail clearly."""

import json

import pytest
import torch

from surgeon.data import calibration_windows, cut_windows, load_split, split_documents, tokenize
from surgeon.errors import SurgeonError


def contains_window(stream: torch.Tensor, window: torch.Tensor) -> bool:
    return bool((stream.unfold(0, len(window), 1) == window).all(dim=1).any())


def test_embedded_split_is_disjoint_at_document_level(tokenizer):
    split = load_split("embedded:pydoc-topics", 0.2)
    assert split.calibration and split.evaluation
    assert 0.15 < len(split.evaluation) / (len(split.calibration) + len(split.evaluation)) < 0.25
    cal_ids, ev_ids = tokenize(tokenizer, split.calibration), tokenize(tokenizer, split.evaluation)
    windows = calibration_windows(cal_ids, 128, 32, seed=0)
    for w in windows:
        assert contains_window(cal_ids, w)
        assert not contains_window(ev_ids, w)
    # the source repeats paragraphs between topics: none of them is left in evaluation
    assert split.description["evaluation_paragraphs_dropped_as_shared"] > 0
    paragraphs = [p for p in split.evaluation.split("\n\n") if len(p.strip()) >= 40]
    assert paragraphs and not any(p in split.calibration for p in paragraphs)


def test_calibration_windows_are_seeded_distinct_and_counted():
    ids = torch.arange(1000)
    a, b = calibration_windows(ids, 10, 20, 1), calibration_windows(ids, 10, 20, 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, calibration_windows(ids, 10, 20, 2))
    assert len({tuple(w.tolist()) for w in a}) == 20
    with pytest.raises(SurgeonError, match="only 100 windows"):
        calibration_windows(ids, 10, 101, 0)
    assert cut_windows(ids, 300).shape == (3, 300)


def test_local_files_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first document " * 50)
    (tmp_path / "b.txt").write_text("second document " * 50)
    split = load_split(str(tmp_path / "*.txt"), 0.3)
    assert split.calibration.startswith("first") and split.evaluation.startswith("second")
    lines = [json.dumps({"text": f"doc {i} " * 30}) for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    split = load_split(str(tmp_path / "d.jsonl"), 0.2)
    assert "doc 9" in split.evaluation and "doc 9" not in split.calibration


@pytest.mark.slow  # tokenizes the embedded text several times
def test_bad_text_sources(tmp_path):
    with pytest.raises(SurgeonError, match="not found"):
        load_split(str(tmp_path / "missing.txt"), 0.2)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SurgeonError, match="empty.txt is empty"):
        load_split(str(tmp_path / "empty.txt"), 0.2)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(SurgeonError, match="latin1.txt is not UTF-8"):
        load_split(str(tmp_path / "latin1.txt"), 0.2)
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(SurgeonError, match="bad.jsonl:1"):
        load_split(str(tmp_path / "bad.jsonl"), 0.2)
    with pytest.raises(SurgeonError, match="offline|hub"):
        load_split("wikitext2", 0.2)


def test_single_document_splits_at_paragraph():
    text = "para one.\n\npara two.\n\npara three.\n\npara four."
    cal, ev, _ = split_documents([text], 0.3)
    assert cal and ev and cal + "\n\n" + ev == text
