"""Coupled units costed on their output layer, chosen by the global greedy (surgeon/unit_greedy.py),
against brute-force solutions of the K-FAC quadratic model."""

import pytest
import torch

from helpers import brute_force_removal, setup
from surgeon import linalg
from surgeon.unit_greedy import OutputLayer, global_greedy


def _layer(W, G, A, spans, ids=None, params=None, damp_g=0.0, damp_a=0.01):
    Gt, At = linalg.damped(G, damp_g), linalg.damped(A, damp_a)
    spans = [torch.tensor(s) for s in spans]
    return OutputLayer.build(W, Gt, linalg.spd_inverse(At), spans,
                             ids or list(range(len(spans))),
                             params or [len(s) for s in spans]), Gt, At


def _joint(W, Gt, At, cols):
    """Brute force: the optimal W and loss with the columns `cols` held at zero (KKT)."""
    remove = torch.zeros_like(W, dtype=torch.bool)
    remove[:, cols] = True
    return brute_force_removal(W, torch.kron(Gt, At), remove)


@pytest.mark.parametrize("spans", [[[0], [1], [2], [3], [4], [5], [6]],
                                   [[0, 1], [2], [3, 4, 5], [6]]])
def test_costs_after_removals_are_the_exact_increments_of_the_joint_removal(spans):
    W, G, A = setup(R=5, C=7, seed=11)
    layer, Gt, At = _layer(W, G, A, spans, damp_g=0.3)
    gone: list[int] = []
    for j in (1, 3):  # remove two units, checking every cost before each step
        _, base = _joint(W, Gt, At, [c for k in gone for c in spans[k]])
        costs = layer.costs()
        for u in range(len(spans)):
            if u in gone:
                assert costs[u] == float("inf")
                continue
            _, loss = _joint(W, Gt, At, [c for k in gone + [u] for c in spans[k]])
            assert float(costs[u]) == pytest.approx(float(loss - base), rel=1e-8)
        layer.remove(j)
        gone.append(j)
        Wopt, _ = _joint(W, Gt, At, [c for k in gone for c in spans[k]])
        # the downdated weights are the joint optimum of everything removed so far
        assert torch.allclose(layer.weights(), Wopt, atol=1e-10)
        assert bool((layer.weights()[:, [c for k in gone for c in spans[k]]] == 0).all())


def test_global_greedy_takes_the_cheapest_unit_per_parameter_across_layers():
    """Each step of the greedy equals a brute-force step: over both layers, the unit whose
    joint removal (with everything its layer lost before) adds the least loss per parameter."""
    W1, G1, A1 = setup(R=4, C=5, seed=1)
    W2, G2, A2 = setup(R=3, C=6, seed=5)
    spans1, spans2 = [[0], [1], [2], [3], [4]], [[0, 1], [2, 3], [4, 5]]
    params1, params2 = [4] * 5, [9, 9, 9]
    l1, Gt1, At1 = _layer(W1, G1, A1, spans1, [0, 1, 2, 3, 4], params1)
    l2, Gt2, At2 = _layer(W2, 4 * G2, A2, spans2, [5, 6, 7], params2)
    chosen = global_greedy([l1, l2], n_params=30, keep_one=True)

    problems = [(W1, Gt1, At1, spans1, params1, 0), (W2, Gt2, At2, spans2, params2, 5)]
    gone: dict[int, list[int]] = {0: [], 1: []}
    expected, total = [], 0
    while total < 30:
        best = None
        for k, (W, Gt, At, spans, params, offset) in enumerate(problems):
            live = [u for u in range(len(spans)) if u not in gone[k]]
            if len(live) <= 1:  # keep_one
                continue
            _, base = _joint(W, Gt, At, [c for u in gone[k] for c in spans[u]])
            for u in live:
                _, loss = _joint(W, Gt, At, [c for v in gone[k] + [u] for c in spans[v]])
                density = float(loss - base) / params[u]
                if best is None or density < best[0]:
                    best = (density, k, u)
        _, k, u = best
        gone[k].append(u)
        expected.append(problems[k][5] + u)
        total += problems[k][4][u]
    assert chosen == expected
    assert len(set(chosen) & {0, 1, 2, 3, 4}) <= 4 and len(set(chosen) & {5, 6, 7}) <= 2


def test_greedy_counts_what_earlier_shots_removed_and_stops_at_the_target():
    W, G, A = setup(R=4, C=6, seed=2)

    def fresh():
        return _layer(W, G, A, [[c] for c in range(6)], params=[10] * 6)[0]

    cheapest = int(fresh().costs().argmin())
    assert global_greedy([fresh()], n_params=25, removed_params=20) == [cheapest]
    assert global_greedy([fresh()], n_params=20, removed_params=20) == []
    assert len(global_greedy([fresh()], n_params=10 ** 6)) == 5  # keep_one: the last stays
    assert len(global_greedy([fresh()], n_params=10 ** 6, keep_one=False)) == 6
