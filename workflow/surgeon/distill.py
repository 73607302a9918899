"""Knowledge distillation from the dense model: cached top-k teacher distributions, KD loss.

The teacher's next-token distribution at temperature t is kept on its k most likely tokens and
renormalised there, q = softmax(z_topk / t). The student's loss at a position is

    KL(q || p) = sum_{i in top-k} q_i (log q_i - log p_i),   p = softmax(s / t) over the vocabulary,

times t^2 (Hinton et al. 2015) so that the gradient's scale does not shrink as t grows; it is
averaged over the positions of a batch. Truncating to the top k is what keeps the cache small
(k logits and ids per token instead of the vocabulary); the cache also stores each position's
full log-normaliser at t = 1, so the probability mass the truncation drops is known exactly
(`kept_mass`), and the teacher model is loaded once, by the stage that writes the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import SurgeonError

OBJECTIVES = ("lm", "kd", "mix")


@torch.no_grad()
def teacher_topk(model, windows: torch.Tensor, k: int, batch_size: int = 1,
                 progress: bool = True) -> dict[str, torch.Tensor]:
    """Top-k next-token logits of every position but the last of each window.

    Returns logits (N, T-1, k) float32 sorted descending, their token ids (N, T-1, k) int32,
    and the log-normaliser over the whole vocabulary (N, T-1) float32.
    """
    if k < 1:
        raise SurgeonError(f"top-k must be at least 1, got {k}")
    device = next(model.parameters()).device
    parts = {"logits": [], "indices": [], "logsumexp": []}
    for i in tqdm(range(0, len(windows), batch_size), desc="teacher", disable=not progress):
        logits = model(windows[i : i + batch_size].to(device)).logits[:, :-1].float()
        if k > logits.shape[-1]:
            raise SurgeonError(f"top-k {k} exceeds the vocabulary ({logits.shape[-1]})")
        top = logits.topk(k, dim=-1)
        parts["logits"].append(top.values.cpu())
        parts["indices"].append(top.indices.to(torch.int32).cpu())
        parts["logsumexp"].append(logits.logsumexp(dim=-1).cpu())
    return {name: torch.cat(p) for name, p in parts.items()}


def kept_mass(cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher probability (t = 1) on its cached top k tokens, per position."""
    return (cache["logits"].logsumexp(dim=-1) - cache["logsumexp"]).exp()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            teacher_indices: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """t^2 KL(q || p) averaged over positions; see the module docstring.

    student_logits (..., V); teacher_logits and teacher_indices (..., k).
    """
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=-1).gather(
        -1, teacher_indices.long())
    log_q = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return t * t * (log_q.exp() * (log_q - log_p)).sum(dim=-1).mean()


@dataclass
class Objective:
    """Training loss of a batch of windows: (1 - w) * next-token NLL + w * KD, with w = 0 for
    `lm`, 1 for `kd` and `kd_weight` for `mix`. `teacher` is the top-k cache of the same
    windows file the batches index into."""

    kind: str = "lm"
    kd_weight: float = 0.5
    temperature: float = 1.0
    teacher: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise SurgeonError(f"unknown recovery objective '{self.kind}' ({', '.join(OBJECTIVES)})")
        if self.weight > 0 and self.teacher is None:
            raise SurgeonError(f"objective '{self.kind}' needs the teacher's top-k logits")
        if self.temperature <= 0 or not 0 <= self.kd_weight <= 1:
            raise SurgeonError("kd temperature must be > 0 and kd weight in [0, 1]")

    @property
    def weight(self) -> float:
        return {"lm": 0.0, "kd": 1.0, "mix": self.kd_weight}[self.kind]

    def __call__(self, model, idx: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logits = model(ids).logits[:, :-1].float()
        loss = logits.new_zeros(())
        if self.weight < 1:
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            loss = loss + (1 - self.weight) * nll
        if self.weight > 0:
            t_logits = self.teacher["logits"][idx].to(logits.device)
            t_ids = self.teacher["indices"][idx].to(logits.device)
            if t_logits.shape[:2] != logits.shape[:2]:
                raise SurgeonError(f"teacher cache covers {tuple(t_logits.shape[:2])} positions, "
                                   f"the windows {tuple(logits.shape[:2])}")
            loss = loss + self.weight * kd_loss(logits, t_logits, t_ids, self.temperature)
        return loss
