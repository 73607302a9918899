"""Sequential (layer-by-layer) pruning, as the SparseGPT and Wanda papers run it.

Block by block, each decoder block's Linears are pruned with the input covariance
A = mean(a a^T) of the inputs that block sees when every block before it is ALREADY pruned:
the calibration windows' hidden states enter block 0, the block's A factors are accumulated,
the block is pruned, and its outputs (from the pruned weights) feed the next block. Within a
block every Linear sees the block's unpruned inputs. The only difference from the dense-A mode
(one K-FAC A per layer from the dense model) is which inputs A is computed from.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from tqdm import tqdm

from .curvature import KFACAccumulator
from .models import decoder_blocks


class _Stop(Exception):
    """Raised by the hook on block 0 once its inputs are captured."""


@torch.no_grad()
def block_inputs(model, windows: torch.Tensor, device) -> list[tuple[torch.Tensor, dict]]:
    """Per window: the hidden states entering block 0 and the keyword arguments the model
    passes to its blocks (positions, rotary embeddings, attention mask). Arguments passed by
    position are kept under their names: GPT-2 passes its causal mask positionally, and a
    block run without it attends to later tokens (eager attention)."""
    captured = []

    def hook(module, args, kwargs):
        names = list(inspect.signature(module.forward).parameters)
        kwargs = {**dict(zip(names, args)), **kwargs}
        hidden = kwargs.pop(names[0])
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache",
                                                              "past_key_value")}
        captured.append((hidden.detach(), kwargs))
        raise _Stop

    handle = decoder_blocks(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in windows:
            try:  # no KV cache: a block run twice would attend to the keys of its first run
                model(ids[None].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _run(block, hidden, kwargs):
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def block_input_factors(block, prefix: str, inputs) -> dict[str, torch.Tensor]:
    """A = mean(a a^T) of every Linear in `block` over `inputs` (a bias adds a column of 1)."""
    layers = {f"{prefix}.{n}": m for n, m in block.named_modules()
              if isinstance(m, torch.nn.Linear)}
    device = next(block.parameters()).device
    acc = KFACAccumulator(layers, device)
    with acc:
        for hidden, kwargs in inputs:
            _run(block, hidden, kwargs)
    return {n: A for n, (A, _) in acc.factors().items()}


@torch.no_grad()
def prune_sequentially(model, windows: torch.Tensor,
                       prune_block: Callable[[dict[str, torch.Tensor]], None],
                       progress: bool = True) -> None:
    """For each decoder block in order: A factors of its Linears from the current inputs,
    `prune_block(factors)` (which sets the block's weights), then the pruned block's outputs
    become the next block's inputs."""
    device = next(model.parameters()).device
    blocks = decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    inputs = block_inputs(model, windows, device)
    for i, block in enumerate(tqdm(blocks, desc="blocks", disable=not progress)):
        prune_block(block_input_factors(block, f"{prefix}.{i}", inputs))
        inputs = [(_run(block, hidden, kwargs), kwargs) for hidden, kwargs in inputs]
