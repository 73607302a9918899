"""One pruning shot: costs per layer, one global (or per-layer) threshold, updates, zeroing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import obs
from .artifacts import MASK_FILE
from .curvature_store import open_curvature, read_factors
from .errors import SurgeonError
from .models import decoder_linears, set_weight_with_bias, weight_with_bias
from .threshold import global_threshold, smallest_k_mask

METHODS = {"llm-surgeon": True, "magnitude": False}  # method -> needs curvature
REMOVED = -1.0  # cost of an already-removed element: always chosen first


def load_mask(model_dir: Path, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removed elements so far: the previous shot's mask (if any) plus exact zeros."""
    saved = {}
    path = Path(model_dir) / MASK_FILE
    if path.is_file():
        saved = {k: v.bool() for k, v in load_file(path).items()}
    return {n: (w == 0) | saved.get(n, torch.zeros_like(w, dtype=torch.bool))
            for n, w in weights.items()}


def decoder_weights(model) -> dict[str, torch.Tensor]:
    return {n: weight_with_bias(layer).cpu() for n, layer in decoder_linears(model).items()}


def magnitude_masks(weights, removed, fraction: float) -> dict[str, torch.Tensor]:
    """Per layer: remove the smallest |W| until `fraction` of the layer is removed."""
    out = {}
    for n, W in weights.items():
        cost = W.abs().double()
        cost[removed[n]] = REMOVED
        out[n] = smallest_k_mask(cost, round(fraction * W.numel()))
    return out


def layer_inverses(f, weights, damp_g: float, damp_a: float, progress: bool = True,
                   device: str = "cpu"):
    """Per layer: live rows/cols and damped inverses (Gi, Ai); a shared A is inverted once."""
    shared: dict[tuple, torch.Tensor] = {}
    for n, W in tqdm(weights.items(), desc="inverses", disable=not progress):
        A, G = (x.to(device) for x in read_factors(f, n))
        W = W.to(device)
        check_shapes(n, W, A, G)
        dead_r, dead_c = obs.dead_structures(W, G, A)
        key = (f[n].attrs.get("A_shared_with", n), tuple(dead_c.nonzero().flatten().tolist()))
        if key not in shared:
            shared.clear()
            shared[key] = obs.spd_inverse(obs.damped(A[~dead_c][:, ~dead_c], damp_a))
        Gi = obs.spd_inverse(obs.damped(G[~dead_r][:, ~dead_r], damp_g))
        yield n, ~dead_r, ~dead_c, Gi, shared[key]


def surgeon_unstructured(weights, removed, curvature: Path, fraction: float, damp_g: float,
                         damp_a: float, group_elements: int, progress: bool = True,
                         cache_bytes: float = 6e9, device: str = "cpu"):
    """LLM Surgeon, unstructured: global OBS threshold, then row-grouped correlated updates.

    Inverses from the cost pass are kept for the update pass when they fit in `cache_bytes`.
    """
    total = sum(W.numel() for W in weights.values())
    inverse_bytes = sum(8 * (W.shape[0] ** 2 + W.shape[1] ** 2) for W in weights.values())
    cache = {} if inverse_bytes <= cache_bytes else None
    costs = {}
    with open_curvature(curvature) as f:
        for n, lr, lc, Gi, Ai in layer_inverses(f, weights, damp_g, damp_a, progress, device):
            W = weights[n].to(device)
            ri, ci = torch.nonzero(lr).flatten().cpu(), torch.nonzero(lc).flatten().cpu()
            cost = torch.full(W.shape, REMOVED, dtype=torch.float32)
            cost[ri[:, None], ci] = obs.element_costs(
                W[ri][:, ci], Gi.diagonal(), Ai.diagonal()
            ).float().cpu()
            cost[removed[n]] = REMOVED
            costs[n] = cost
            if cache is not None:
                cache[n] = (lr, lc, Gi, Ai)
        masks = global_threshold(costs, round(fraction * total))
        del costs

        def update(item):
            n, (lr, lc, Gi, Ai) = item
            W = weights[n]
            ri, ci = torch.nonzero(lr).flatten().cpu(), torch.nonzero(lc).flatten().cpu()
            new = masks[n] & ~removed[n]
            Wl = obs.obs_element_prune(W[ri][:, ci].to(device), Gi.float(), Ai.float(),
                                       new[ri][:, ci].to(device), group_elements)
            out = torch.zeros_like(W)
            out[ri[:, None], ci] = Wl.to("cpu", W.dtype)
            out[masks[n]] = 0.0
            return n, out

        bar = tqdm(total=len(weights), desc="updates", disable=not progress)
        new_weights = {}
        if cache is not None:
            # layers are independent: one single-threaded layer per core beats one layer
            # on all cores (the per-group ops are too small to parallelise well)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    for n, out in pool.map(update, list(cache.items())):
                        new_weights[n] = out
                        bar.update()
            finally:
                torch.set_num_threads(threads)
        else:
            for n, *rest in layer_inverses(f, weights, damp_g, damp_a, False, device):
                new_weights[n] = update((n, rest))[1]
                bar.update()
        bar.close()
    return new_weights, masks


def check_shapes(name, W, A, G):
    if A.shape != (W.shape[1], W.shape[1]) or G.shape != (W.shape[0], W.shape[0]):
        raise SurgeonError(
            f"curvature of {name} has A {tuple(A.shape)}, G {tuple(G.shape)} but the weight is "
            f"{tuple(W.shape)}: the curvature file belongs to another model"
        )


def prune_shot(model, method: str, fraction: float, removed, curvature: Path | None = None,
               damp_g: float = 0.1, damp_a: float = 0.01, group_elements: int = 256,
               progress: bool = True, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Prune `model` in place to a cumulative removed `fraction`; returns the masks."""
    if method not in METHODS:
        raise SurgeonError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    weights = decoder_weights(model)
    if method == "magnitude":
        masks = magnitude_masks(weights, removed, fraction)
        new_weights = {n: W.masked_fill(masks[n], 0.0) for n, W in weights.items()}
    else:
        if curvature is None:
            raise SurgeonError(f"method {method} needs a curvature file")
        new_weights, masks = surgeon_unstructured(
            weights, removed, curvature, fraction, damp_g, damp_a, group_elements, progress,
            device=device,
        )
    for n, layer in decoder_linears(model).items():
        set_weight_with_bias(layer, new_weights[n].to(layer.weight.device, layer.weight.dtype))
    return masks


def save_mask(path: Path, masks: dict[str, torch.Tensor]) -> None:
    save_file({n: m.to(torch.uint8).contiguous() for n, m in masks.items()}, str(path))
