"""Masked LoRA: interleaved low-rank corrections (docs/algorithms.md §6) and recovery.

Between pruning shots the model is no longer at an optimum of the loss. `lora_correct` trains
LoRA adapters (built with peft) on every decoder Linear with next-token cross-entropy on some
calibration windows, with the base weights frozen, then merges them into the weights and
re-applies the pruning mask, so the returned model is a plain HF model again with exactly the
sparsity it came in with. The `recover` stage runs the same loop (`lora_train`) for longer, on
chosen modules, with gradient accumulation and a resumable checkpoint.

How the adapters are kept from reviving pruned weights. For a layer with weight W (R x C),
removed mask M (the caller's mask or W == 0) and adapter delta D = s * B @ A:

* Whole removed rows and columns are masked in the factors: rows of B for removed output rows
  and columns of A for removed input columns are zero at the start and set back to zero after
  every optimizer step, so D is zero on them at every forward. This costs nothing and covers
  structured pruning completely.
* The removed elements left over (unstructured or semi-structured sparsity) are masked
  elementwise by a forward hook on the peft layer, which subtracts their share of the adapter
  output: y = base(x) + x D^T - x (D * M')^T = base(x) + x (D * ~M)^T, where M' is M without the
  rows/columns above. Gradients flow through both terms, so the adapters train on exactly the
  function that will survive the merge. The price is one dense matmul per masked Linear per
  forward (the size of the layer's own), affordable for a correction of a few dozen steps, and
  worth it: masking only after training would drop part of what was learnt and move the model
  away from where training left it.
* After training peft merges W += D and the mask is re-applied (W[M] = 0), which gives exactly
  W + D * ~M: the trained function, with removed elements exactly zero.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .artifacts import atomic_path, torch_save
from .distill import Objective
from .errors import SurgeonError
from .lora_settings import LoraSettings  # noqa: F401  (re-exported: lora.LoraSettings)
from .models import decoder_linears

ADAPTER = "default"


def _removed_masks(linears: dict, masks: dict, zeros: bool = True) -> dict[str, torch.Tensor]:
    """Removed-element mask of every decoder Linear: the caller's mask, OR'd with W == 0
    unless `zeros` is False (quantized weights that rounded to zero are not removed)."""
    unknown = sorted(set(masks) - set(linears))
    if unknown:
        raise SurgeonError(f"masks name layers that are not decoder Linears: {unknown[:3]}")
    removed = {}
    for name, layer in linears.items():
        w = layer.weight.detach()
        r = (w == 0) if zeros else torch.zeros_like(w, dtype=torch.bool)
        if name in masks:
            m = masks[name]
            if tuple(m.shape) != tuple(w.shape):
                raise SurgeonError(f"mask of {name} has shape {tuple(m.shape)}, "
                                   f"weight has {tuple(w.shape)}")
            r |= m.to(device=w.device, dtype=torch.bool)
        removed[name] = r
    return removed


def _residual_hook(residual: torch.Tensor):
    """Forward hook removing the adapter's contribution on the `residual` removed elements."""

    def hook(module, args, output):
        a = module.lora_A[ADAPTER].weight
        b = module.lora_B[ADAPTER].weight
        delta = torch.where(residual, b @ a, 0.0) * module.scaling[ADAPTER]
        return output - F.linear(args[0].to(delta.dtype), delta).to(output.dtype)

    return hook


def _fake_quant_hook(removed: torch.Tensor, quantized):
    """Forward hook replacing the layer's output by x Q(W + D * ~M)^T + b (see qat.py)."""
    from .qat import fake_quantize

    def hook(module, args, output):
        base = module.base_layer
        a = module.lora_A[ADAPTER].weight
        b = module.lora_B[ADAPTER].weight
        delta = torch.where(removed, 0.0, b @ a) * module.scaling[ADAPTER]
        weight = fake_quantize(base.weight + delta.to(base.weight.dtype), quantized, removed)
        return F.linear(args[0].to(weight.dtype), weight, base.bias).to(output.dtype)

    return hook


class _AdapterMask:
    """Row/column masking of one peft layer's factors, plus the elementwise hook if needed
    (or, for a quantized layer, the fake-quantization hook, which masks elementwise too)."""

    def __init__(self, module, removed: torch.Tensor, quantized=None):
        self.module = module
        self.dead_rows = removed.all(dim=1)  # removed output rows -> rows of B
        self.dead_cols = removed.all(dim=0)  # removed input columns -> columns of A
        residual = removed & ~self.dead_rows[:, None] & ~self.dead_cols[None, :]
        if quantized is not None:
            self.handle = module.register_forward_hook(_fake_quant_hook(removed, quantized))
        elif residual.any():
            self.handle = module.register_forward_hook(_residual_hook(residual))
        else:
            self.handle = None
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        self.module.lora_B[ADAPTER].weight[self.dead_rows] = 0
        self.module.lora_A[ADAPTER].weight[:, self.dead_cols] = 0

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _window_batches(n: int, micro: int, first_step: int, steps: int, per_step: int,
                    generator: torch.Generator):
    """Per optimizer step, `per_step` micro-batches of `micro` window indices, cycling through
    one seeded permutation of the n windows; step k's batches do not depend on where a resumed
    run started, so a resumed run sees the same windows as an uninterrupted one."""
    order = torch.randperm(n, generator=generator)
    for step in range(first_step, steps):
        base = step * per_step * micro
        yield step, [order[[(base + j * micro + i) % n for i in range(micro)]]
                     for j in range(per_step)]


@dataclass
class Checkpoint:
    """Adapter weights, optimizer state and losses saved every `every` optimizer steps.

    `fingerprint` names what the run depends on (model, data, settings); a checkpoint with a
    different fingerprint belongs to another run and is ignored rather than resumed.
    """

    path: Path
    every: int
    fingerprint: str

    def load(self, params: dict, optimizer) -> tuple[int, list[float]]:
        if not self.path.is_file():
            return 0, []
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            print(f"lora: ignoring unreadable checkpoint {self.path}: {err}".splitlines()[0])
            return 0, []
        if state.get("fingerprint") != self.fingerprint:
            print(f"lora: checkpoint {self.path} is from another run; starting afresh")
            return 0, []
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["adapters"][name])
        optimizer.load_state_dict(state["optimizer"])
        print(f"lora: resuming from step {state['step']} ({self.path})")
        return state["step"], list(state["losses"])

    def save(self, step: int, params: dict, optimizer, losses: list[float]) -> None:
        state = {"fingerprint": self.fingerprint, "step": step, "losses": losses,
                 "adapters": {n: p.detach().cpu() for n, p in params.items()},
                 "optimizer": optimizer.state_dict()}
        with atomic_path(self.path) as tmp:
            torch_save(state, tmp)


def _targeted(linears: dict, targets) -> dict:
    if targets is None:
        return linears
    chosen = {n: m for n, m in linears.items() if n.rsplit(".", 1)[-1] in targets}
    if not chosen:
        known = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise SurgeonError(f"lora target modules {list(targets)} match no decoder Linear; "
                           f"this model has {known}")
    return chosen


def lora_train(model, windows: torch.Tensor, masks: dict, settings: LoraSettings,
               checkpoint: Checkpoint | None = None, progress: bool = True,
               objective: Objective | None = None, quantized: dict | None = None) -> list[float]:
    """Train masked LoRA adapters on the targeted decoder Linears, merge, re-apply the masks.

    `windows` (N, seqlen) token ids; `masks` maps decoder-Linear names to boolean tensors of the
    weight's shape, True = removed (zeros in the weight count as removed too). The model is
    changed in place (same object, class and state_dict keys) and comes back in the train/eval
    modes and requires_grad flags it had. Training runs in eval mode (no dropout) with AdamW
    (no weight decay): each optimizer step averages `grad_accum` micro-batches of `batch_size`
    windows. `objective` is the loss (next-token NLL by default, or distillation from cached
    teacher logits of the same windows). With `quantized` ({layer: Quantized}) the targeted
    layers train through their fixed grids (qat.py) and the caller re-quantizes after the merge.
    Returns the loss of every optimizer step (a resumed run includes earlier steps).
    """
    from peft import LoraConfig, get_peft_model

    if windows.ndim != 2 or len(windows) == 0:
        raise SurgeonError(f"windows must be a non-empty (N, seqlen) tensor, "
                           f"got {tuple(windows.shape)}")
    settings.check()
    objective = objective or Objective()
    quantized = quantized or {}
    device = next(model.parameters()).device
    linears = decoder_linears(model)
    removed = _removed_masks(linears, masks, zeros=not quantized)
    targeted = _targeted(linears, settings.targets)
    modes = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0,
                        bias="none", target_modules=list(targeted))
    rng_devices = []
    if device.type == "cuda":
        rng_devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(settings.seed)
        with warnings.catch_warnings():  # peft asks the deprecated is_gradient_checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, config)
    losses, adapter_masks = [], []
    trained = False
    try:
        wrapped = dict(peft_model.base_model.model.named_modules())
        adapter_masks = [_AdapterMask(wrapped[name], removed[name], quantized.get(name))
                         for name in targeted]
        params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(params.values(), lr=settings.lr, weight_decay=0.0)
        first = 0
        if checkpoint is not None:
            first, losses = checkpoint.load(params, optimizer)
        peft_model.eval()
        batches = _window_batches(len(windows), settings.batch_size, first, settings.steps,
                                  settings.grad_accum,
                                  torch.Generator().manual_seed(settings.seed))
        bar = tqdm(batches, total=settings.steps, initial=first, desc="lora",
                   disable=not progress)
        for step, micro_batches in bar:
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for idx in micro_batches:
                loss = objective(peft_model, idx, windows[idx].to(device))
                (loss / len(micro_batches)).backward()
                total += loss.item() / len(micro_batches)
            optimizer.step()
            for mask in adapter_masks:
                mask.apply()
            losses.append(total)
            bar.set_postfix(loss=f"{total:.4f}")
            if checkpoint is not None and checkpoint.every and (step + 1) % checkpoint.every == 0 \
                    and step + 1 < settings.steps:
                checkpoint.save(step + 1, params, optimizer, losses)
        trained = True
    finally:  # a plain model again: merged when training finished, adapters dropped otherwise
        for mask in adapter_masks:
            mask.remove()
        if trained:
            peft_model.merge_and_unload()
        else:
            peft_model.unload()
        with torch.no_grad():
            for name, layer in linears.items():
                layer.weight.masked_fill_(removed[name], 0)
        for name, module in model.named_modules():
            module.training = modes[name]
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])
    return losses


def lora_correct(model, windows: torch.Tensor, masks: dict, rank: int = 8, alpha: float = 16,
                 steps: int = 20, lr: float = 1e-4, batch_size: int = 1, seed: int = 0,
                 progress: bool = True) -> dict:
    """The between-shot correction: `lora_train` on every decoder Linear, summarised as the
    mean loss of the first and last few steps, the step count and the adapter size."""
    settings = LoraSettings(rank=rank, alpha=alpha, steps=steps, lr=lr, batch_size=batch_size,
                            seed=seed)
    losses = lora_train(model, windows, masks, settings, progress=progress)
    few = max(1, min(5, steps // 4))
    linears = decoder_linears(model)
    adapter_params = sum(rank * (m.in_features + m.out_features) for m in linears.values())
    return {
        "initial_loss": sum(losses[:few]) / few,
        "final_loss": sum(losses[-few:]) / few,
        "steps": steps,
        "trainable_params": adapter_params,
    }
