"""Coupled units costed where their removal acts, chosen by one global greedy with exact
downdates (docs/algorithms.md §10, `coupled_cost: output`).

Removing an MLP channel i sets its activation h_i to zero: the block then computes exactly
what it computes with column i of down_proj zeroed, and the channel's gate/up rows reach
nothing. Likewise an attention group is exactly the o_proj columns of its query heads. Under
the output layer's K-FAC quadratic model the loss change of removing a set T of its columns,
the kept columns updated optimally, is

    cost(T) = 0.5 tr(G~ W_T (Ai_TT)^-1 W_T^T),     W -= W_T (Ai_TT)^-1 Ai[T, :]

and the input-layer rows are zeroed without an update (no quadratic model of theirs applies
once their outputs are read by nothing; adding their costs counts the same function change
two or three times, and their row updates compensate it twice).

Selection is a budgeted greedy over one pool of every unit of every layer: the unit of least
cost per removed parameter goes, its layer's W, P = G~ W and Ai are downdated
(Ai -= Ai[:, T] (Ai_TT)^-1 Ai[T, :], the inverse over the kept columns), so every later cost
of that layer is the exact increase of the joint removal, and the updated W after the last
choice is the joint optimum for the whole chosen set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .linalg import spd_solve


@dataclass
class OutputLayer:
    """One output layer in the greedy, over its live columns: the weights W (R x C, updated as
    units go), G~, Ai = inverse of A~ over the columns kept so far; per unit its column
    positions, its global id and its parameter count. Where every unit is one column, `num`
    holds the numerators w_c^T G~ w_c, kept current by rank-one updates (no R x C product per
    step)."""

    W: torch.Tensor
    G: torch.Tensor
    Ai: torch.Tensor
    spans: list[torch.Tensor]
    ids: list[int]
    params: torch.Tensor
    alive: torch.Tensor
    num: torch.Tensor | None = None

    @classmethod
    def build(cls, W, G, Ai, spans, ids, params, dtype=torch.float64):
        W, G = W.to(dtype).clone(), G.to(dtype)
        single = all(len(s) == 1 for s in spans)
        return cls(W, G, Ai.to(dtype).clone(), spans, ids,
                   torch.as_tensor(params, dtype=torch.float64),
                   torch.ones(len(spans), dtype=torch.bool),
                   ((G @ W) * W).sum(0) if single else None)

    def costs(self) -> torch.Tensor:
        """cost(T) of removing each live unit alone, given the units removed before."""
        out = torch.full((len(self.spans),), math.inf, dtype=torch.float64)
        if self.num is not None:  # one column per unit: all at once
            cols = torch.cat(self.spans)
            single = 0.5 * self.num[cols] / self.Ai.diagonal()[cols]
            return torch.where(self.alive, single.cpu().double(), out)
        for j in torch.nonzero(self.alive).flatten().tolist():
            T = self.spans[j]
            WT = self.W[:, T].double()
            X = spd_solve(self.Ai[T][:, T], WT.T)  # (Ai_TT)^-1 W_T^T
            out[j] = 0.5 * float((X * (self.G.double() @ WT).T).sum())
        return out

    def best(self, keep_one: bool = True) -> tuple[float, int]:
        """(cost per parameter, unit) of the cheapest live unit; inf when none may go."""
        if not self.alive.any() or (keep_one and int(self.alive.sum()) <= 1):
            return math.inf, -1
        density = self.costs() / self.params
        j = int(density.argmin())
        return float(density[j]), j

    def remove(self, j: int) -> None:
        """Remove unit j with the optimal update of the kept columns; downdate Ai."""
        T = self.spans[j]
        if self.num is not None:  # rank one: w_k -= m_k w_c, so num_k changes by
            c = int(T[0])         # -2 m_k w_c^T G w_k + m_k^2 num_c
            m = self.Ai[c] / self.Ai[c, c]
            w = self.W[:, c].clone()
            cross = (self.G @ w) @ self.W
            self.num.add_(m * (m * self.num[c] - 2 * cross))
            self.W.addr_(w, m, alpha=-1)
            self.Ai.addr_(self.Ai[:, c].clone(), m, alpha=-1)
        else:
            M = spd_solve(self.Ai[T][:, T], self.Ai[T]).to(self.W.dtype)  # (Ai_TT)^-1 Ai[T, :]
            self.W.sub_(self.W[:, T] @ M)
            self.Ai.sub_(self.Ai[:, T] @ M)
        self.W[:, T] = 0.0
        self.alive[j] = False

    def weights(self) -> torch.Tensor:
        """W with every removed unit's columns exactly zero (downdates leave rounding)."""
        W = self.W.clone()
        for j in torch.nonzero(~self.alive).flatten().tolist():
            W[:, self.spans[j]] = 0.0
        return W


def global_greedy(layers: list[OutputLayer], n_params: int, removed_params: float = 0.0,
                  keep_one: bool = True) -> list[int]:
    """Global ids of the units removed, in order: the cheapest unit per parameter of all layers
    (its cost after every earlier removal of its layer) until `removed_params` (what earlier
    shots removed) plus the chosen units reach `n_params`. With `keep_one` a layer never loses
    its last unit (compaction cannot remove a block's last head group or channel)."""
    best = [layer.best(keep_one) for layer in layers]
    chosen = []
    while removed_params < n_params:
        i = min(range(len(layers)), key=lambda k: best[k][0])
        density, j = best[i]
        if math.isinf(density):
            break
        layers[i].remove(j)
        chosen.append(layers[i].ids[j])
        removed_params += float(layers[i].params[j])
        best[i] = layers[i].best(keep_one)
    return chosen
