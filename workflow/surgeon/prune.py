"""One pruning shot: costs per layer, one global (or per-layer) threshold, updates, zeroing."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from . import obs
from .coupling import dead_after_removal
from .curvature_store import open_curvature, read_factors
from .errors import SurgeonError
from .methods import COUPLED_COSTS, METHODS, check_method, damping_g_default
from .layerwise import prune_sequentially
from .coupled import layer_spans, select_units, span_costs, unit_removed
from .linalg import damped, spd_inverse
from .llm_pruner import (coupled_groups, group_masks, group_params, group_scores,
                         llm_pruner_masks, span_indices, taylor_importance)
from .models import decoder_linears, set_weight_with_bias, weight_with_bias
from .selection import select_elements
from .slimgpt import slimgpt_masks
from .sparsegpt import sparsegpt_prune
from .structured import (obs_structured_update, removed_count, structure_costs,
                         structured_threshold)
from .threshold import REMOVED
from .unit_greedy import OutputLayer, global_greedy
from .wanda import wanda_scores


# Structured OBS costs 0.5 w^T A~ w / Gi_rr with the DAMPED factor: the exact loss increase of
# the quadratic model that the updates minimise (undamped numerators mix two models; both were
# measured, docs/comparison.md)
DAMPED_COST_NUMERATORS = True
PROBE_TOKENS = 64  # tokens of the window that shows which structures a removal kills
SEQUENTIAL_METHODS = tuple(n for n, m in METHODS.items() if m.sequential)
STRUCTURE_COSTS = {"llm-surgeon": "obs", "k-obd": "k-obd", "l-obd": "l-obd",
                   "magnitude": "magnitude"}


def decoder_weights(model) -> dict[str, torch.Tensor]:
    return {n: weight_with_bias(layer).cpu() for n, layer in decoder_linears(model).items()}


def element_costs(method: str, W: torch.Tensor, A=None, G=None) -> torch.Tensor:
    """Costs of methods that only zero weights (no update); lower = removed first."""
    if method == "magnitude":
        return W.abs().double()
    if method == "wanda":
        return wanda_scores(W, A.diagonal())
    g_diag = G.diagonal() if method == "k-obd" else torch.ones(W.shape[0])
    return obs.obd_element_costs(W, g_diag, A.diagonal())


def zeroing_shot(method, weights, removed, fraction, structure, weight_cols, curvature=None,
                 nm_schedule="blocks"):
    """Magnitude, Wanda, K-OBD, L-OBD: costs, selection, zeroing without any update."""
    costs = {}
    with open_curvature(curvature) if curvature else contextlib.nullcontext() as f:
        for n, W, A, G, _, _ in layer_factors(f, weights):
            cost = element_costs(method, W, A, G).float()
            cost[removed[n]] = REMOVED
            costs[n] = cost
    masks = select_elements(costs, removed, fraction, structure, METHODS[method].scope,
                            weight_cols, nm_schedule)
    return {n: W.masked_fill(masks[n], 0.0) for n, W in weights.items()}, masks


def sparsegpt_shot(weights, removed, fraction, structure, weight_cols, curvature, damp_a,
                   progress=True, device="cpu"):
    """SparseGPT per layer with H = the layer's K-FAC A factor, damped by `damp_a`."""
    new_weights, masks = {}, {}
    nm = (2, 4) if structure == "2:4" else None
    with open_curvature(curvature) as f:
        for n, W, A, _, _, _ in tqdm(layer_factors(f, weights, device), total=len(weights),
                                     desc="sparsegpt", disable=not progress):
            Wn, mask = sparsegpt_prune(W, A, fraction, removed[n].to(device), weight_cols[n], nm,
                                       damp=damp_a)
            new_weights[n], masks[n] = Wn.cpu(), mask.cpu()
    return new_weights, masks


def sequential_shot(model, method, removed, fraction, structure, weight_cols, windows, damp_a,
                    progress=True, device="cpu"):
    """SparseGPT or Wanda layer by layer, each block's A from the outputs of the blocks
    before it as already pruned (layerwise.py); sets the model's weights, returns the masks."""
    sweep = METHODS[method].update == "sweep"
    if windows is None:
        raise SurgeonError(f"sequential {method} needs calibration windows (--calibration)")
    layers = decoder_linears(model)
    nm = (2, 4) if structure == "2:4" else None
    masks = {}

    def prune_block(factors):
        for n, A in factors.items():
            W = weight_with_bias(layers[n])
            gone = removed[n].to(W.device)
            if sweep:
                Wn, mask = sparsegpt_prune(W, A.to(W.device), fraction, gone, weight_cols[n], nm,
                                           damp=damp_a)
            else:
                cost = element_costs(method, W, A.to(W.device)).float().masked_fill(gone, REMOVED)
                mask = select_elements({n: cost}, {n: gone}, fraction, structure, "row",
                                       {n: weight_cols[n]})[n]
                Wn = W.masked_fill(mask, 0.0)
            set_weight_with_bias(layers[n], Wn)
            masks[n] = mask.cpu()

    model.to(device)
    try:
        prune_sequentially(model, windows, prune_block, progress)
    finally:
        model.to("cpu")
    return masks


def layer_factors(f, weights, device: str = "cpu"):
    """Per layer: (name, W, A, G, live rows, live columns) on `device`.

    Without a curvature file (f is None) A and G are None and live means not all zero.
    """
    for n, W in weights.items():
        W = W.to(device)
        if f is None:
            yield n, W, None, None, W.ne(0).any(dim=1), W.ne(0).any(dim=0)
            continue
        A, G = (x.to(device) for x in read_factors(f, n))
        check_shapes(n, W, A, G)
        dead_r, dead_c = obs.dead_structures(W, G, A)
        yield n, W, A, G, ~dead_r, ~dead_c


def fits_in_cache(weights, cache_bytes: float, itemsize: int = 8) -> bool:
    """Whether the inverses Gi, Ai of every layer (`itemsize` bytes per entry) fit in
    `cache_bytes`."""
    return sum(itemsize * (W.shape[0] ** 2 + W.shape[1] ** 2)
               for W in weights.values()) <= cache_bytes


def layer_inverses(f, weights, damp_g: float, damp_a: float, progress: bool = True,
                   device: str = "cpu"):
    """Per layer: (name, W, A, G, live rows, live cols, Gi, Ai) with Gi, Ai the damped inverses
    of the live sub-problem; an A shared by several layers is inverted once."""
    shared: dict[tuple, torch.Tensor] = {}
    for n, W, A, G, lr, lc in tqdm(layer_factors(f, weights, device), total=len(weights),
                                   desc="inverses", disable=not progress):
        key = (f[n].attrs.get("A_shared_with", n), tuple((~lc).nonzero().flatten().tolist()))
        if key not in shared:
            shared.clear()
            shared[key] = obs.spd_inverse(obs.damped(A[lc][:, lc], damp_a))
        Gi = obs.spd_inverse(obs.damped(G[lr][:, lr], damp_g))
        yield n, W, A, G, lr, lc, Gi, shared[key]


def surgeon_elements(weights, removed, curvature: Path, fraction: float, damp_g: float,
                     damp_a: float, progress: bool = True, cg_tol: float = obs.CG_TOL,
                     cache_bytes: float = 6e9, device: str = "cpu",
                     structure: str = "unstructured", weight_cols: dict | None = None,
                     nm_schedule: str = "blocks"):
    """LLM Surgeon, unstructured or 2:4: global OBS threshold over element (or block) costs,
    then the joint correlated update of each layer. Returns (new weights, masks)."""
    masks, cache = surgeon_element_masks(weights, removed, curvature, fraction, damp_g, damp_a,
                                         progress, cache_bytes, device, structure, weight_cols,
                                         nm_schedule)
    return surgeon_element_updates(weights, masks, cache, curvature, damp_g, damp_a, progress,
                                   cg_tol, device), masks


def surgeon_element_masks(weights, removed, curvature: Path, fraction: float, damp_g: float,
                          damp_a: float, progress: bool = True, cache_bytes: float = 6e9,
                          device: str = "cpu", structure: str = "unstructured",
                          weight_cols: dict | None = None, nm_schedule: str = "blocks"):
    """(masks, inverses): the cost pass, 0.5 w^2 / (Gi_rr Ai_cc) per element, and the global
    threshold. The inverses (live rows, live cols, Gi, Ai) are kept for the update pass when
    they fit in `cache_bytes`, else None (the update pass recomputes them). They are kept in
    float32, the update's precision: half the memory of the float64 factors."""
    cache = {} if fits_in_cache(weights, cache_bytes, itemsize=4) else None
    costs, last_a = {}, (None, None)
    with open_curvature(curvature) as f:
        for n, W, _, _, lr, lc, Gi, Ai in layer_inverses(f, weights, damp_g, damp_a, progress,
                                                         device):
            ri, ci = torch.nonzero(lr).flatten().cpu(), torch.nonzero(lc).flatten().cpu()
            cost = torch.full(W.shape, REMOVED, dtype=torch.float32)
            cost[ri[:, None], ci] = obs.element_costs(
                W[ri][:, ci], Gi.diagonal(), Ai.diagonal()
            ).float().cpu()
            cost[removed[n]] = REMOVED
            costs[n] = cost
            if cache is not None:
                if Ai is not last_a[0]:  # an Ai shared by q/k/v (gate/up) is converted once
                    last_a = (Ai, Ai.float())
                cache[n] = (lr, lc, Gi.float(), last_a[1])
    masks = select_elements(costs, removed, fraction, structure, "global", weight_cols,
                            nm_schedule)
    return masks, cache


def surgeon_element_updates(weights, masks, cache, curvature: Path, damp_g: float,
                            damp_a: float, progress: bool = True, cg_tol: float = obs.CG_TOL,
                            device: str = "cpu") -> dict[str, torch.Tensor]:
    """The update pass: every layer's joint OBS update removing all of `masks` (earlier shots'
    zeros included), with the cached inverses or, when `cache` is None, recomputed ones."""

    def update(item):
        n, (lr, lc, Gi, Ai) = item
        W = weights[n]
        ri, ci = torch.nonzero(lr).flatten().cpu(), torch.nonzero(lc).flatten().cpu()
        # every removed element is a constraint, those of earlier shots too: their w is 0,
        # so they add no cost, but without them the update would move them off zero
        Wl = obs.obs_element_prune(W[ri][:, ci].to(device), Gi.float(), Ai.float(),
                                   masks[n][ri][:, ci].to(device), tol=cg_tol)
        out = torch.zeros_like(W)
        out[ri[:, None], ci] = Wl.to("cpu", W.dtype)
        out[masks[n]] = 0.0
        return n, out

    bar = tqdm(total=len(weights), desc="updates", disable=not progress)
    new_weights = {}
    if cache is not None:
        # layers are independent: one single-threaded layer per core (about 20% faster than
        # one layer on all cores with the earlier per-row solver; not re-measured with CG)
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
        with open_curvature(curvature) as f:
            for n, _, _, _, *rest in layer_inverses(f, weights, damp_g, damp_a, False, device):
                new_weights[n] = update((n, rest))[1]
                bar.update()
    bar.close()
    return new_weights


def structured_shot(method, weights, removed, fraction, curvature, damp_g, damp_a,
                    progress=True, device="cpu", cache_bytes: float = 6e9, probe=None):
    """Rows and columns in one pool (global, or per layer for magnitude), then updates.

    LLM Surgeon updates the kept weights (row update, then column update of the result); the
    baselines only zero. Dead rows/columns (zero weights or zero curvature diagonal) cost -1:
    they are taken first and count toward the target. `probe(chosen)` returns the rows and
    columns the chosen ones make dead (coupling.py); they are counted in this shot: taken at
    cost -1 and the threshold moved until the shot's target holds with them, then zeroed
    without an update (their curvature predates the removal that killed them).
    """
    kind = STRUCTURE_COSTS[method]
    cache = {} if kind == "obs" and fits_in_cache(weights, cache_bytes) else None
    row_pools, col_pools = {}, {}
    with open_curvature(curvature) if curvature else contextlib.nullcontext() as f:
        if kind == "obs":
            layers = layer_inverses(f, weights, damp_g, damp_a, progress, device)
        else:
            layers = ((*item, None, None) for item in layer_factors(f, weights, device))
        for n, W, A, G, lr, lc, Gi, Ai in layers:
            if cache is not None:
                cache[n] = (lr, lc, Gi, Ai)
            G = None if G is None else G[lr][:, lr]
            A = None if A is None else A[lc][:, lc]
            if kind == "obs" and DAMPED_COST_NUMERATORS:
                G, A = obs.damped(G, damp_g), obs.damped(A, damp_a)
            rc, cc = structure_costs(kind, W[lr][:, lc], G, A,
                                     None if Gi is None else Gi.diagonal(),
                                     None if Ai is None else Ai.diagonal())
            row_pools[n] = torch.full((W.shape[0],), REMOVED, dtype=torch.float64)
            col_pools[n] = torch.full((W.shape[1],), REMOVED, dtype=torch.float64)
            row_pools[n][lr.cpu()] = rc.double().cpu()
            col_pools[n][lc.cpu()] = cc.double().cpu()
        chosen, killed = select_counting_dead(row_pools, col_pools, weights, fraction,
                                              METHODS[method].scope, probe)
        if kind == "obs" and cache is None:  # too large to keep: a second streamed pass
            cache = {n: rest for n, _, _, _, *rest in layer_inverses(f, weights, damp_g, damp_a,
                                                                     False, device)}
    updated = None
    if kind == "obs":
        updated = {n: (rows & ~killed[n][0], cols & ~killed[n][1])
                   for n, (rows, cols) in chosen.items()}
    return apply_structured(weights, removed, chosen, updated, cache, device)


def apply_structured(weights, removed, chosen, updated=None, inverses=None, device="cpu"):
    """(new weights, masks) with the chosen (rows, columns) of every layer removed; the layers
    in `updated` first get the joint row-then-column OBS update of the (rows, columns) given
    there, with the inverses (live rows, live cols, Gi, Ai) of `inverses`."""
    new_weights, masks = {}, {}
    for n, W in weights.items():
        rows, cols = chosen[n]
        out = W
        if updated is not None:
            lr, lc, Gi, Ai = inverses.pop(n)
            lr, lc = lr.cpu(), lc.cpu()
            upd_rows, upd_cols = updated[n]
            out = torch.zeros_like(W)
            out[lr.nonzero()[:, :1], lc.nonzero()[:, 0]] = obs_structured_update(
                W[lr][:, lc].to(device), Gi, Ai, upd_rows[lr].to(device),
                upd_cols[lc].to(device)
            ).to("cpu", W.dtype)
        masks[n] = rows[:, None] | cols[None, :] | removed[n]
        new_weights[n] = out.masked_fill(masks[n], 0.0)
    return new_weights, masks


def coupled_shot(model, weights, removed, fraction, curvature, damp_g, damp_a, progress=True,
                 device="cpu"):
    """Structured LLM Surgeon on coupled units (coupled.py): the global selection of
    coupled_selection, then every layer's joint row-then-column update. Returns (weights, masks)."""
    groups, chosen, inverses = coupled_selection(model, weights, fraction, curvature, damp_g,
                                                 damp_a, progress, device)
    removal = group_masks(model, [g for g, take in zip(groups, chosen.tolist()) if take])
    removal = {n: (rows, torch.cat([cols, cols.new_zeros(weights[n].shape[1] - len(cols))]))
               for n, (rows, cols) in removal.items()}  # a bias column is never removed
    return apply_structured(weights, removed, removal, removal, inverses, device)


def output_greedy_shot(model, weights, removed, fraction, curvature, damp_g, damp_a,
                       progress=True, device="cpu"):
    """Structured LLM Surgeon on coupled units costed on their output layers (unit_greedy.py):
    one global greedy with exact downdates over every o_proj / down_proj, the input-layer rows
    of the chosen units zeroed. Units removed in earlier shots (no live column left) count
    first. Returns (weights, masks)."""
    groups = coupled_groups(model)
    linears = decoder_linears(model)
    params = [group_params(g, linears) for g in groups]
    by_output: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        (name,) = g.cols  # a unit's columns lie in one output layer
        by_output.setdefault(name, []).append(i)
    pool, gone = [], []
    with open_curvature(curvature) as f:
        for n, ids in tqdm(by_output.items(), desc="inverses", disable=not progress):
            W = weights[n].to(device)
            A, G = (x.to(device) for x in read_factors(f, n))
            check_shapes(n, W, A, G)
            live = ~obs.dead_structures(W, G, A)[1]
            bias = slice(linears[n].in_features, None)  # a zero bias still takes an update
            live[bias] = A.diagonal()[bias] > 0
            pos = torch.cumsum(live.long(), 0) - 1
            spans, kept = [], []
            for i in ids:
                idx = torch.tensor(span_indices(groups[i].cols[n]), device=W.device)
                idx = idx[live[idx]]
                (spans.append(pos[idx]), kept.append(i)) if len(idx) else gone.append(i)
            Ai = spd_inverse(damped(A[live][:, live], damp_a))
            layer = OutputLayer.build(W[:, live], damped(G, damp_g), Ai, spans, kept,
                                      [params[i] for i in kept], dtype=torch.float32)
            pool.append((n, live, layer))
    total = sum(W.numel() for W in weights.values())
    chosen = global_greedy([layer for _, _, layer in pool], round(fraction * total),
                           sum(params[i] for i in gone))
    updated = {}
    for n, live, layer in pool:
        updated[n] = torch.zeros_like(weights[n])
        updated[n][:, live.cpu()] = layer.weights().to("cpu", weights[n].dtype)
    removal = group_masks(model, [groups[i] for i in gone + chosen])
    new_weights, masks = {}, {}
    for n, W in weights.items():
        rows, cols = removal[n]
        cols = torch.cat([cols, cols.new_zeros(W.shape[1] - len(cols))])  # bias column stays
        masks[n] = rows[:, None] | cols[None, :] | removed[n]
        new_weights[n] = updated.get(n, W).masked_fill(masks[n], 0.0)
    return new_weights, masks


def coupled_selection(model, weights, fraction, curvature, damp_g, damp_a, progress=True,
                      device="cpu"):
    """(groups, chosen, inverses): each coupled unit's cost summed over the layers it touches
    (full Gi / Ai sub-blocks of its rows / columns), one global pool by cost per parameter;
    `chosen` marks the units removed at the cumulative `fraction` (earlier shots' included),
    `inverses` the (live rows, live cols, Gi, Ai) of every layer for the update."""
    groups = coupled_groups(model)
    layers = decoder_linears(model)
    params = torch.tensor([group_params(g, layers) for g in groups], dtype=torch.float64)
    spans = layer_spans(groups)
    costs = torch.zeros(len(groups), dtype=torch.float64)
    inverses = {}
    with open_curvature(curvature) as f:
        for n, W, A, G, lr, lc, Gi, Ai in layer_inverses(f, weights, damp_g, damp_a, progress,
                                                         device):
            inverses[n] = (lr, lc, Gi, Ai)
            Gt, At = G[lr][:, lr], A[lc][:, lc]
            if DAMPED_COST_NUMERATORS:
                Gt, At = obs.damped(Gt, damp_g), obs.damped(At, damp_a)
            for axis, (ids, sp) in spans.get(n, {}).items():
                costs[ids] += span_costs(W, Gt, At, Gi, Ai, lr, lc, sp, axis).cpu()
    zero_rows = {n: (W == 0).all(dim=1) for n, W in weights.items()}
    zero_cols = {n: (W == 0).all(dim=0) for n, W in weights.items()}
    gone = torch.tensor([unit_removed(g, zero_rows, zero_cols) for g in groups])
    costs[gone] = REMOVED
    total = sum(W.numel() for W in weights.values())
    return groups, select_units(groups, costs, params, round(fraction * total)), inverses


DEAD_SEARCH_STEPS = 16  # bisection steps on the threshold's fraction (probe passes)


def select_counting_dead(row_pools, col_pools, weights, fraction, scope, probe=None):
    """(removed, killed): per layer boolean (rows, columns) a shot removes at the cumulative
    `fraction`, and the part of them that is removed only because others left it dead.

    Without a probe the threshold runs once. With one, what the chosen structures kill counts
    too: removed(f) = chosen(f) + dead(chosen(f)) grows with the threshold's fraction f, so a
    bisection finds the smallest f whose removed count reaches round(fraction * total).
    """
    total = sum(W.numel() for W in weights.values())

    def threshold(f):
        if scope == "global":
            return structured_threshold(row_pools, col_pools, round(f * total))
        out = {}
        for n, W in weights.items():
            out.update(structured_threshold({n: row_pools[n]}, {n: col_pools[n]},
                                            round(f * W.numel())))
        return out

    def removed_at(f):
        chosen = threshold(f)
        if probe is None:
            return chosen, chosen
        return chosen, probe(chosen)

    def count(removed):
        return sum(removed_count(int(r.sum()), int(c.sum()), len(r), len(c))
                   for r, c in removed.values())

    n_params = round(fraction * total)
    chosen, removed = removed_at(fraction)
    if count(removed) > count(chosen):  # kills beyond the chosen: move the threshold down
        lo, hi = 0.0, fraction
        best = (chosen, removed)
        for _ in range(DEAD_SEARCH_STEPS):
            mid = (lo + hi) / 2
            c_mid, r_mid = removed_at(mid)
            if count(r_mid) >= n_params:
                hi, best = mid, (c_mid, r_mid)
            else:
                lo = mid
        chosen, removed = best
    killed = {n: (removed[n][0] & ~chosen[n][0], removed[n][1] & ~chosen[n][1])
              for n in removed}
    return removed, killed


def slimgpt_shot(model, removed, fraction, windows, damp_a, progress=True, device="cpu"):
    """SlimGPT-style layer-wise structured OBS (slimgpt.py); sets the weights, returns masks."""
    if windows is None:
        raise SurgeonError("slimgpt needs calibration windows (--calibration)")
    model.to(device)
    try:
        chosen = slimgpt_masks(model, fraction,
                               lambda prune_block: prune_sequentially(model, windows, prune_block,
                                                                      progress), damp_a)
    finally:
        model.to("cpu")
    masks = element_masks(model, chosen)
    return {n: mask | removed[n] for n, mask in masks.items()}


def element_masks(model, chosen):
    """Element masks (weight, plus a never-removed bias column) of per-layer (rows, columns)."""
    masks = {}
    for n, layer in decoder_linears(model).items():
        rows, cols = (x.cpu() for x in chosen[n])
        if layer.bias is not None:  # the bias column is never a removable column
            cols = torch.cat([cols, torch.zeros(1, dtype=torch.bool)])
        masks[n] = rows[:, None] | cols[None, :]
    return masks


def llm_pruner_shot(model, fraction, windows, device="cpu"):
    """LLM-Pruner: coupled groups, first-order Taylor importance, uniform per-block counts."""
    if windows is None:
        raise SurgeonError("llm-pruner needs calibration windows for its gradients")
    model.to(device)
    try:
        groups = coupled_groups(model)
        scores = group_scores(groups, taylor_importance(model, windows))
        chosen = llm_pruner_masks(model, groups, scores, fraction)
    finally:
        model.to("cpu")
    return element_masks(model, chosen)


def check_shapes(name, W, A, G):
    if A.shape != (W.shape[1], W.shape[1]) or G.shape != (W.shape[0], W.shape[0]):
        raise SurgeonError(
            f"curvature of {name} has A {tuple(A.shape)}, G {tuple(G.shape)} but the weight is "
            f"{tuple(W.shape)}: the curvature file belongs to another model"
        )


def prune_shot(model, method: str, fraction: float, removed, curvature: Path | None = None,
               damp_g: float | None = None, damp_a: float = 0.01,
               progress: bool = True, device: str = "cpu",
               structure: str = "unstructured",
               calibration: torch.Tensor | None = None,
               sequential: bool = False, nm_schedule: str = "blocks",
               units: str | None = None, cache_bytes: float = 6e9,
               coupled_cost: str = "output") -> dict[str, torch.Tensor]:
    """Prune `model` in place to a cumulative removed `fraction`; returns the masks.

    `calibration` (token windows) is read by methods that need gradients (llm-pruner) and by
    `sequential` SparseGPT / Wanda, which take each layer's A from the inputs it sees after
    the layers before it are pruned instead of from the dense curvature file. The inverses of
    every layer are kept between the cost and the update pass when they fit in `cache_bytes`;
    else each layer's factors are read again, one layer at a time.
    """
    m = check_method(method, structure, fraction, units)
    units = units or m.units[0]
    if coupled_cost not in COUPLED_COSTS:
        raise SurgeonError(f"unknown coupled_cost '{coupled_cost}'; known: "
                           f"{', '.join(COUPLED_COSTS)}")
    if damp_g is None:
        damp_g = damping_g_default(structure)
    if sequential and method not in SEQUENTIAL_METHODS:
        raise SurgeonError(f"sequential mode is for {', '.join(SEQUENTIAL_METHODS)}, "
                           f"not {method}")
    if m.curvature and curvature is None and not sequential:
        raise SurgeonError(f"method {method} needs a curvature file")
    weight_cols = {n: layer.in_features for n, layer in decoder_linears(model).items()}
    if sequential:
        return sequential_shot(model, method, removed, fraction, structure, weight_cols,
                               calibration, damp_a, progress, device)
    weights = decoder_weights(model)
    curvature = curvature if m.curvature else None
    if m.update == "layer-obs":
        masks = slimgpt_shot(model, removed, fraction, calibration, damp_a, progress, device)
        new_weights = decoder_weights(model)
    elif m.calibration:  # selects by its own gradients on the calibration windows
        masks = llm_pruner_shot(model, fraction, calibration, device)
        masks = {n: mask | removed[n] for n, mask in masks.items()}
        new_weights = {n: W.masked_fill(masks[n], 0.0) for n, W in weights.items()}
    elif structure == "structured" and units == "coupled" and coupled_cost == "output":
        new_weights, masks = output_greedy_shot(model, weights, removed, fraction, curvature,
                                                damp_g, damp_a, progress, device)
    elif structure == "structured" and units == "coupled":
        new_weights, masks = coupled_shot(model, weights, removed, fraction, curvature, damp_g,
                                          damp_a, progress, device)
    elif structure == "structured":
        probe = None
        if calibration is not None:  # count the coupled structures a removal kills (coupling.py)
            ids = calibration[:1, :PROBE_TOKENS]
            probe = lambda chosen: dead_after_removal(model, chosen, ids)  # noqa: E731
        new_weights, masks = structured_shot(method, weights, removed, fraction, curvature,
                                             damp_g, damp_a, progress, device, cache_bytes,
                                             probe=probe)
    elif m.update == "obs":
        new_weights, masks = surgeon_elements(
            weights, removed, curvature, fraction, damp_g, damp_a, progress,
            cache_bytes=cache_bytes, device=device, structure=structure, weight_cols=weight_cols,
            nm_schedule=nm_schedule,
        )
    elif m.update == "sweep":
        new_weights, masks = sparsegpt_shot(weights, removed, fraction, structure, weight_cols,
                                            curvature, damp_a, progress, device)
    else:
        new_weights, masks = zeroing_shot(method, weights, removed, fraction, structure,
                                          weight_cols, curvature, nm_schedule)
    for n, layer in decoder_linears(model).items():
        set_weight_with_bias(layer, new_weights[n].to(layer.weight.device, layer.weight.dtype))
    return masks
