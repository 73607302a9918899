"""LoRA settings, apart from lora.py so that the CLI shows their defaults without importing
torch (every `surgeon` command builds the whole parser)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SurgeonError


@dataclass
class LoraSettings:
    """Adapter and optimisation settings; `targets` are module-name suffixes (None = all).
    The defaults are the config schema's `recovery` defaults (a test holds them equal) and the
    `surgeon recover` / `surgeon qat` options take theirs from here."""

    rank: int = 8
    alpha: float = 16
    steps: int = 100
    lr: float = 5e-4
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    targets: tuple[str, ...] | None = None

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.rank < 1:
            raise SurgeonError("lora steps, rank, batch_size and grad_accum must be at least 1")
