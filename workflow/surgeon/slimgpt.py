"""Layer-wise structured OBS in the style of SlimGPT (Ling et al. 2024): the same-family peer of
structured LLM Surgeon (docs/algorithms.md §11).

Block by block (each block's inputs from the blocks before it, already pruned: layerwise.py),
with H = A, the input covariance of the layer alone (no G, no allocation across layers): every
block removes the same number of coupled groups as LLM-Pruner would (llm_pruner.uniform_counts),
chosen greedily one at a time on the output layer of each group (o_proj for attention groups,
down_proj for MLP channels). Removing a set T of columns of W costs tr(W_T (Hi_TT)^-1 W_T^T)
(Hi = H~^-1); the cheapest group goes, the kept columns get the OBS update
W -= W_T (Hi_TT)^-1 Hi[T, :], and Hi is downdated to the inverse over the kept columns,
Hi -= Hi[:, T] (Hi_TT)^-1 Hi[T, :], before the next choice. The group's rows in the input
layers (q, k, v; gate, up) are zeroed without an update, as SlimGPT does.
"""

from __future__ import annotations

import torch

from .linalg import damped, spd_inverse, spd_solve
from .llm_pruner import ATTENTION, MLP, coupled_groups, group_masks, uniform_counts


def greedy_column_groups(W: torch.Tensor, H: torch.Tensor, groups: list[torch.Tensor], k: int,
                         damp: float = 0.01, gone: list[int] | None = None
                         ) -> tuple[torch.Tensor, list[int]]:
    """(W after removing k more column groups greedily, indices of every removed group).

    `gone` groups (earlier shots) are already zero: they are projected out of Hi first and
    never chosen again.
    """
    W = W.double().clone()
    Hi = spd_inverse(damped(H, damp))
    removed = list(gone or [])

    def drop(T):
        if len(T) == 1:  # rank-one: no solve, no gathers
            c = int(T[0])
            M = Hi[c] / Hi[c, c]
            W.sub_(torch.outer(W[:, c], M))
            Hi.sub_(torch.outer(Hi[:, c], M))
        else:
            M = spd_solve(Hi[T][:, T], Hi[T])  # (Hi_TT)^-1 Hi[T, :]
            W.sub_(W[:, T] @ M)
            Hi.sub_(Hi[:, T] @ M)
        W[:, T] = 0.0

    for j in removed:
        drop(groups[j])
    alive = torch.ones(len(groups), dtype=torch.bool)
    alive[removed] = False
    single = all(len(g) == 1 for g in groups)
    cols = torch.stack([g[0] for g in groups]) if single else None
    for _ in range(min(k, int(alive.sum()))):
        if single:  # one column per group: the vectorised cost of every group at once
            cost = W[:, cols].square().sum(dim=0) / Hi.diagonal()[cols]
        else:  # removed groups' Hi blocks are zero after the downdates: not solved
            cost = torch.full((len(groups),), float("inf"), dtype=W.dtype, device=W.device)
            for j in torch.nonzero(alive).flatten().tolist():
                g = groups[j]
                cost[j] = (W[:, g] * spd_solve(Hi[g][:, g], W[:, g].T).T).sum()
        j = int(cost.masked_fill(~alive.to(cost.device), float("inf")).argmin())
        alive[j] = False
        drop(groups[j])
        removed.append(j)
    for j in removed:  # the downdated Hi[T, earlier] is zero only up to rounding
        W[:, groups[j]] = 0.0
    return W, removed


def slimgpt_block(block_groups, layers, factors, counts, damp):
    """Prune one block's attention groups and MLP channels (weights set in place); the
    chosen groups."""
    chosen = []
    for kind in (ATTENTION, MLP):
        members = [g for g in block_groups if g.kind == kind]
        if not members:
            continue
        (out_name,) = members[0].cols
        layer = layers[out_name]
        W = layer.weight.detach()
        spans = [torch.arange(g.cols[out_name].start, g.cols[out_name].stop, device=W.device)
                 for g in members]
        gone = [i for i, s in enumerate(spans) if bool((W[:, s] == 0).all())]
        H = factors[out_name].to(W.device)[: W.shape[1], : W.shape[1]]
        Wn, removed = greedy_column_groups(W, H, spans, counts[kind] - len(gone), damp, gone)
        with torch.no_grad():
            layer.weight.copy_(Wn.to(W.dtype))
        chosen += [members[i] for i in removed]
    return chosen


def slimgpt_masks(model, fraction: float, prune_all_blocks, damp: float = 0.01,
                  block_counts: dict | None = None):
    """Run SlimGPT over the model block by block; (removed_rows, removed_cols) per Linear.

    `prune_all_blocks(prune_block)` drives the sequential pass (layerwise.prune_sequentially
    with the calibration windows bound) and calls prune_block(factors) once per block.
    `block_counts` {(block, kind): groups to remove} replaces LLM-Pruner's uniform counts
    (scripts/structured_allocation.py gives it LLM Surgeon's global allocation).
    """
    from .models import decoder_linears

    groups = coupled_groups(model)
    uniform = uniform_counts(model, groups, fraction)
    layers = decoder_linears(model)
    chosen = []

    def prune_block(factors):
        block_groups = [g for g in groups if set(g.cols) <= set(factors)]
        counts = uniform if block_counts is None else {
            g.kind: block_counts.get((g.block, g.kind), 0) for g in block_groups}
        chosen.extend(slimgpt_block(block_groups, layers, factors, counts, damp))
        masks = group_masks(model, chosen)
        with torch.no_grad():  # the chosen groups' input-layer rows go without an update
            for name, (rows, _) in masks.items():
                if name in factors and rows.any():
                    layers[name].weight[rows.to(layers[name].weight.device)] = 0
                    if layers[name].bias is not None:
                        layers[name].bias[rows.to(layers[name].bias.device)] = 0

    prune_all_blocks(prune_block)
    return group_masks(model, chosen)
