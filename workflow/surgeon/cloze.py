"""A last-word (cloze) task built from the evaluation text, for zero-shot accuracy offline.

Each item is a passage of the evaluation split that ends a sentence; the model must continue
the passage with its last word (LAMBADA-style: accuracy = the word is the greedy continuation).
Built from the evaluation split only, so the calibration data never contains a test passage.
"""

from __future__ import annotations

import random
import re

from .errors import SurgeonError

TASK_NAME = "surgeon_cloze"
WORD = re.compile(r"[A-Za-z]+")


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces (paragraph breaks, indentation, line wraps)."""
    return " ".join(text.split())


def is_prose(paragraph: str) -> bool:
    """Mostly letters and spaces, no interactive session: code blocks make poor cloze items."""
    if ">>>" in paragraph or not paragraph.strip():
        return False
    plain = sum(c.isalpha() or c.isspace() for c in paragraph)
    return plain / len(paragraph) >= 0.9


def sentence_ends(words: list[str], min_word_length: int, min_context_words: int) -> list[int]:
    """Indices of words that end a sentence ("word."), are purely alphabetic, at least
    `min_word_length` letters long, and follow at least `min_context_words` words."""
    return [i for i, w in enumerate(words)
            if i >= min_context_words and w.endswith(".") and WORD.fullmatch(w[:-1])
            and len(w) - 1 >= min_word_length]


def passage(words: list[str], end: int, max_context_words: int, min_context_words: int) -> str:
    """The context before words[end]: at most `max_context_words` words, starting at a sentence
    start when the cut would otherwise fall mid-sentence and that leaves enough context."""
    start = max(0, end - max_context_words)
    if start > 0:
        for i in range(start, end - min_context_words):
            if words[i - 1].endswith("."):
                start = i
                break
    return " ".join(words[start:end])


def cloze_items(text: str, count: int, seed: int, min_word_length: int = 4,
                min_context_words: int = 15, max_context_words: int = 60) -> list[dict]:
    """`count` items {id, context, target} from the paragraphs of `text`: one seeded choice of
    sentence end per distinct prose paragraph, then a seeded sample of paragraphs, kept in text
    order."""
    if count < 1:
        raise SurgeonError(f"cloze items must be at least 1, got {count}")
    rng = random.Random(seed)
    candidates, seen = [], set()
    for number, para in enumerate(text.split("\n\n")):
        if not is_prose(para) or normalize(para) in seen:  # repeated paragraphs: once
            continue
        seen.add(normalize(para))
        words = normalize(para).split(" ")
        ends = sentence_ends(words, min_word_length, min_context_words)
        if ends:
            end = rng.choice(ends)
            candidates.append((number, passage(words, end, max_context_words,
                                               min_context_words), words[end][:-1]))
    if not candidates:
        raise SurgeonError("the evaluation text has no prose passage to build cloze items from "
                           f"(needs sentences of more than {min_context_words} words)")
    chosen = sorted(rng.sample(candidates, min(count, len(candidates))))
    return [{"id": f"cloze-{i + 1:03d}", "context": context, "target": target}
            for i, (_, context, target) in enumerate(chosen)]


def task_config(name: str = TASK_NAME) -> dict:
    """lm-eval task: log-likelihood of " <last word>" after the passage; acc = greedy match."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{' ' + target}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "generated_by": "surgeon cloze-task"},
    }
