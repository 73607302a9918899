"""Kronecker-factored empirical Fisher per decoder Linear (docs/algorithms.md §1).

For a layer y = W a (a with a 1 appended when there is a bias), over calibration tokens:
    A = mean(a a^T)  (C x C),   G = mean(g g^T)  (R x R),   g = dL/dy,
so that vec(dW)^T F vec(dW) ~= tr(dW^T G dW A). Inputs come from forward hooks, output
gradients from hooks on the output tensors; parameters never get `.grad` buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .artifacts import atomic_path, torch_save
from .curvature_store import curvature_bytes
from .errors import SurgeonError
from .models import decoder_linears


class KFACAccumulator:
    """Running sums of a a^T and g g^T for a set of Linear layers."""

    def __init__(self, layers: dict[str, nn.Linear], device: torch.device):
        self.layers = layers
        self.A, self.G = {}, {}
        self.tokens = {name: 0 for name in layers}
        self.windows_done = 0
        for name, layer in layers.items():
            c = layer.in_features + (layer.bias is not None)
            self.A[name] = torch.zeros(c, c, device=device)
            self.G[name] = torch.zeros(layer.out_features, layer.out_features, device=device)
        self._handles = []
        self.shares_input: dict[str, str] = {}  # layer -> earlier layer fed the same tensor
        self._last_input = None  # held so its memory cannot be reused by another input

    def _forward_hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0]
            source = self.shares_input.get(name)
            if source is None and self._last_input is not None and x is self._last_input[0]:
                earlier = self._last_input[1]
                if (self.layers[earlier].bias is None) == (module.bias is None):
                    source = self.shares_input[name] = earlier
                    self.A[name] = self.A[earlier]
            if source is not None:  # q/k/v and gate/up read one tensor: A is computed once
                self.tokens[name] += x.numel() // module.in_features
            else:
                self._accumulate_input(name, module, x)
                self._last_input = (x, name)
            if output.requires_grad:
                output.register_hook(self._grad_hook(name))

        return hook

    def _accumulate_input(self, name, module, x):
        a = x.detach().reshape(-1, module.in_features).float()
        if module.bias is not None:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        self.A[name].addmm_(a.T, a)
        self.tokens[name] += a.shape[0]

    def _grad_hook(self, name):
        def hook(grad):
            g = grad.detach().reshape(-1, grad.shape[-1]).float()
            self.G[name].addmm_(g.T, g)

        return hook

    def __enter__(self):
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc):
        self._last_input = None
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def state(self) -> dict:
        return {"A": self.A, "G": self.G, "tokens": self.tokens,
                "windows_done": self.windows_done, "shares_input": self.shares_input}

    def load_state(self, state: dict) -> None:
        for name in self.layers:
            self.A[name].copy_(state["A"][name])
            self.G[name].copy_(state["G"][name])
        self.tokens = dict(state["tokens"])
        self.windows_done = int(state["windows_done"])
        self.shares_input = dict(state.get("shares_input", {}))
        for name, source in self.shares_input.items():
            self.A[name] = self.A[source]

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Means (A, G) per layer on the CPU."""
        return {
            name: (
                (self.A[name] / max(self.tokens[name], 1)).cpu(),
                (self.G[name] / max(self.tokens[name], 1)).cpu(),
            )
            for name in self.layers
        }


def window_loss(model: nn.Module, ids: torch.Tensor, fisher: str, generator=None) -> torch.Tensor:
    """Summed next-token NLL of a batch of windows; labels true (empirical) or sampled."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[:, :-1].float()
    if fisher == "sampled":
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
            labels = torch.multinomial(probs.cpu(), 1, generator=generator).view(logits.shape[:2])
            labels = labels.to(ids.device)
    else:
        labels = ids[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")


def block_of(name: str) -> str:
    """The decoder block a Linear belongs to: its name up to the layer index
    (`model.layers.3.mlp.up_proj` -> `model.layers.3`)."""
    parts = name.split(".")
    i = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
    return ".".join(parts[: i + 1])


def factor_passes(layers: dict[str, nn.Linear], max_bytes: int = 0) -> list[list[str]]:
    """Layers grouped into passes over the windows so that the float32 A and G accumulated in
    one pass take at most `max_bytes` (0: every layer in one pass). Whole decoder blocks,
    consecutive: q/k/v and gate/up share one A only when accumulated together."""
    if max_bytes <= 0:
        return [list(layers)]
    blocks: dict[str, list[str]] = {}
    for name in layers:
        blocks.setdefault(block_of(name), []).append(name)
    passes: list[list[str]] = []
    used = 0  # bytes of the last pass (blocks share no input, so sizes add up)
    for block, names in blocks.items():
        size = curvature_bytes({n: layers[n] for n in names})
        if size > max_bytes:
            raise SurgeonError(f"the factors of one block ({block}: {size / 2**30:.2f} GiB) do "
                               f"not fit the curvature memory budget of {max_bytes / 2**30:.2f} "
                               "GiB; give the job more memory or raise the budget")
        if passes and used + size <= max_bytes:
            passes[-1].extend(names)
            used += size
        else:
            passes.append(list(names))
            used = size
    return passes


@dataclass
class KFACRun:
    """What an estimate saw, for the metadata of curvature.h5: layers, tokens per layer."""

    layers: dict[str, nn.Linear]
    tokens: dict[str, int] = field(default_factory=dict)
    passes: int = 1


def estimate_kfac(
    model: nn.Module,
    windows: torch.Tensor,
    fisher: str = "empirical",
    batch_size: int = 1,
    checkpoint: Path | None = None,
    checkpoint_every: int = 8,
    fingerprint: str = "",
    seed: int = 0,
    progress: bool = True,
    max_factor_bytes: int = 0,
) -> tuple[dict, KFACRun]:
    """K-FAC factors of every decoder Linear; resumes from `checkpoint` when it matches.

    With `max_factor_bytes` the layers are split into passes (factor_passes): each pass runs
    every window forward and backward but accumulates only its own blocks' factors on the
    device, and a finished pass's means move to the host. The result is bit for bit the
    one-pass estimate: the same windows, in the same order, the same sampled labels.
    """
    device = next(model.parameters()).device
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_linears(model)
    passes = factor_passes(layers, max_factor_bytes)
    run = KFACRun(layers, passes=len(passes))
    done: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # finished passes, on the host
    state = None
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("fingerprint") != fingerprint or state.get("passes", 1) != len(passes):
            state = None
    first = 0
    if state is not None and state.get("pass", 0) > 0:
        if finished_passes_file(checkpoint).is_file():
            first = int(state["pass"])
            finished = torch.load(finished_passes_file(checkpoint), weights_only=False)
            done, run.tokens = finished["factors"], finished["tokens"]
        else:  # the finished passes are lost: start over
            state = None
    for index in range(first, len(passes)):
        acc = KFACAccumulator({n: layers[n] for n in passes[index]}, device)
        if state is not None and index == first and state.get("windows_done", 0) > 0:
            acc.load_state(state)

        def save(acc=acc, index=index):
            with atomic_path(checkpoint) as tmp:
                torch_save({**acc.state(), "fingerprint": fingerprint, "pass": index,
                            "passes": len(passes)}, tmp)

        label = "curvature" if len(passes) == 1 else f"curvature pass {index + 1}/{len(passes)}"
        _accumulate(model, windows, acc, fisher, batch_size, seed, progress, label,
                    save if checkpoint is not None else None, checkpoint_every)
        done.update(acc.factors())
        run.tokens.update(acc.tokens)
        if checkpoint is not None and index + 1 < len(passes):
            # finished passes once, in their own file; the running sums restart at window 0
            with atomic_path(finished_passes_file(checkpoint)) as tmp:
                torch_save({"factors": done, "tokens": run.tokens}, tmp)
            with atomic_path(checkpoint) as tmp:
                torch_save({"fingerprint": fingerprint, "pass": index + 1,
                            "passes": len(passes), "windows_done": 0}, tmp)
    return {n: done[n] for n in layers}, run


def finished_passes_file(checkpoint: Path) -> Path:
    """Where a multi-pass estimate keeps the factors of its finished passes for a resume."""
    return Path(f"{checkpoint}.passes")


def _accumulate(model, windows, acc, fisher, batch_size, seed, progress, label, save, every):
    """Run the windows not yet in `acc` forward and backward through the model with its hooks."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    n = len(windows)
    processed = 0  # windows run through the model by this call (what a resume saves)
    if progress and acc.windows_done:
        print(f"{label}: resuming from window {acc.windows_done} of {n}", flush=True)
    bar = tqdm(total=n, initial=acc.windows_done, desc=label, unit="win", disable=not progress)
    with acc, bar:  # the bar is closed on failure too, so an error is the last line printed
        while acc.windows_done < n:
            start = acc.windows_done
            batch = windows[start : start + batch_size].to(device)
            # the sampled-label stream must not depend on where a resumed run started
            generator.manual_seed(seed + start)
            window_loss(model, batch, fisher, generator).backward()
            acc.windows_done += len(batch)
            processed += len(batch)
            bar.update(len(batch))
            if save is not None and acc.windows_done % every == 0 and acc.windows_done < n:
                save()
    if progress:
        print(f"{label}: {processed} of {n} windows processed in this run", flush=True)


def layer_metadata(acc: KFACRun, **extra) -> dict[str, dict]:
    """Per-layer attributes of curvature.h5: [W | b] shape, bias, tokens, and `extra`."""
    return {name: {"weight_shape": [layer.out_features,
                                    layer.in_features + (layer.bias is not None)],
                   "has_bias": layer.bias is not None, "tokens": acc.tokens[name], **extra}
            for name, layer in acc.layers.items()}
