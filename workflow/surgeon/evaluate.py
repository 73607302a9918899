"""Perplexity (docs/algorithms.md §9), sparsity of decoder Linears, stored size."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .artifacts import MASK_FILE, QUANT_FILE
from .models import decoder_linears


@torch.no_grad()
def window_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each window (batch x tokens x vocab logits, batch x tokens ids).
    Tokens flattened to rows of logits: cross_entropy on (N, vocab) is 5x faster on the CPU
    than on the transposed (batch, vocab, tokens) view."""
    batch, tokens, vocab = logits.shape
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1),
                          reduction="none")
    return nll.view(batch, tokens - 1).mean(dim=1)


def perplexity_of(nlls: list[torch.Tensor]) -> float:
    """exp(mean over windows of the mean next-token NLL of the window)."""
    return math.exp(torch.cat(nlls).double().mean().item())


def perplexity(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = True) -> float:
    device = next(model.parameters()).device
    nlls = []
    for i in tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress):
        ids = windows[i : i + batch_size].to(device)
        nlls.append(window_nll(model(ids).logits.float(), ids).cpu())
    return perplexity_of(nlls)


def sparsity_stats(model) -> dict:
    """Zeros among decoder-Linear parameters (weights + biases), overall and per layer."""
    total = zeros = 0
    per_layer = {}
    for name, layer in decoder_linears(model).items():
        params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        n = sum(p.numel() for p in params)
        z = sum(int((p == 0).sum()) for p in params)
        per_layer[name] = z / n
        total += n
        zeros += z
    return {
        "decoder_params": total,
        "decoder_zeros": zeros,
        "sparsity": zeros / total,
        "per_layer_sparsity": per_layer,
    }


def stored_size(model_dir: Path) -> int:
    """Bytes of the weight files (the pruning mask and quantization codes beside them are
    bookkeeping; a quantized model's stored bits per weight are reported separately)."""
    return sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors")
               if f.name not in (MASK_FILE, QUANT_FILE))


def export_sizes(paths: list[str | Path]) -> dict[str, int]:
    """Bytes of each exported form of a quantized model, keyed by format: a .gguf file, a
    compressed-tensors folder (every file in it: what a user copies to serve it)."""
    sizes = {}
    for path in map(Path, paths):
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        sizes["gguf" if path.suffix == ".gguf" else path.name] = sum(
            f.stat().st_size for f in files)
    return sizes


def parameter_counts(model) -> dict:
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    return {
        "params": sum(p.numel() for p in params),
        "nonzero_params": sum(int((p != 0).sum()) for p in params),
    }


@torch.no_grad()
def tokens_per_second(model, prompt: torch.Tensor, new_tokens: int, repeats: int = 3) -> float:
    """Greedy decoding speed: exactly `new_tokens` generated after `prompt` (1-D ids) with the
    KV cache, after one warm-up run; the median over `repeats` of new_tokens / seconds."""
    import time

    ids = prompt[None].to(next(model.parameters()).device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=0)
    model.generate(ids, **kwargs)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        rates.append(new_tokens / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]
