"""Structured (row / column) OBS maths and the structured global threshold, against brute force."""

import itertools

import pytest
import torch
from helpers import D, brute_force_removal, setup

from surgeon import linalg
from surgeon.structured import (
    col_costs,
    obs_structured_update,
    removed_count,
    row_costs,
    structure_costs,
    structured_threshold,
)


def damped_problem(R=6, C=7, seed=0):
    """W, undamped G and A, damped G~ and A~, and Gi = G~^-1, Ai = A~^-1."""
    W, G, A = setup(R, C, seed)
    Gd, Ad = linalg.damped(G, 0.01), linalg.damped(A, 0.01)
    return W, G, A, Gd, Ad, torch.linalg.inv(Gd), torch.linalg.inv(Ad)


def mask(n, idx):
    m = torch.zeros(n, dtype=torch.bool)
    m[list(idx)] = True
    return m


@pytest.mark.parametrize("removed", [[2], [0, 3, 5]])
def test_row_update_equals_brute_force(removed):
    W, _, _, Gd, Ad, Gi, Ai = damped_problem(seed=1)
    rows, cols = mask(W.shape[0], removed), mask(W.shape[1], [])
    remove = rows[:, None].expand_as(W)
    expected, _ = brute_force_removal(W, torch.kron(Gd, Ad), remove)
    Wn = obs_structured_update(W, Gi, Ai, rows, cols)
    assert torch.allclose(Wn, expected, atol=1e-10)
    assert (Wn[rows] == 0).all()


@pytest.mark.parametrize("removed", [[4], [1, 2, 6]])
def test_column_update_equals_brute_force(removed):
    W, _, _, Gd, Ad, Gi, Ai = damped_problem(seed=2)
    rows, cols = mask(W.shape[0], []), mask(W.shape[1], removed)
    remove = cols[None, :].expand_as(W)
    expected, _ = brute_force_removal(W, torch.kron(Gd, Ad), remove)
    Wn = obs_structured_update(W, Gi, Ai, rows, cols)
    assert torch.allclose(Wn, expected, atol=1e-10)
    assert (Wn[:, cols] == 0).all()


@pytest.mark.parametrize("damping", [0.01, 1.0])
def test_rows_then_columns_equals_the_joint_brute_force_optimum(damping):
    """Removing rows R and columns C at once: row update, then the column update of the updated
    weights, is the KKT solution of the joint problem; summing both updates from the same W
    (the upstream default) is feasible after zeroing but costs more."""
    W, G, A = setup(7, 9, seed=3)
    Gd, Ad = linalg.damped(G, damping), linalg.damped(A, damping)
    Gi, Ai = torch.linalg.inv(Gd), torch.linalg.inv(Ad)
    rows, cols = mask(W.shape[0], [1, 4, 5]), mask(W.shape[1], [0, 5, 8])
    remove = rows[:, None] | cols[None, :]
    H = torch.kron(Gd, Ad)
    expected, best = brute_force_removal(W, H, remove)
    Wn = obs_structured_update(W, Gi, Ai, rows, cols)
    assert torch.allclose(Wn, expected, atol=1e-10)
    assert (Wn[rows] == 0).all() and (Wn[:, cols] == 0).all()
    none_r, none_c = mask(W.shape[0], []), mask(W.shape[1], [])
    summed = (obs_structured_update(W, Gi, Ai, rows, none_c)
              + obs_structured_update(W, Gi, Ai, none_r, cols) - W).masked_fill(remove, 0.0)
    d = (summed - W).reshape(-1)
    assert 0.5 * d @ H @ d > best * (1 + 1e-6)


def test_update_keeps_dtype_and_empty_masks_change_nothing():
    W, _, _, _, _, Gi, Ai = damped_problem(seed=4)
    W32 = W.float()
    out = obs_structured_update(W32, Gi, Ai, mask(W.shape[0], []), mask(W.shape[1], []))
    assert out.dtype == torch.float32 and torch.equal(out, W32)


def test_obs_row_and_column_costs_are_the_brute_force_loss_increase():
    """With H = G~ (x) A~ the identity cost = min 0.5 dw^T H dw holds when the numerator uses
    the same damped factor, so A~ (resp. G~) is passed where the pipeline passes undamped A (G)."""
    W, _, _, Gd, Ad, Gi, Ai = damped_problem(seed=5)
    H = torch.kron(Gd, Ad)
    rc = row_costs(W, Ad, Gi.diagonal())
    cc = col_costs(W, Gd, Ai.diagonal())
    for r in range(W.shape[0]):
        _, loss = brute_force_removal(W, H, mask(W.shape[0], [r])[:, None].expand_as(W))
        assert torch.isclose(rc[r], loss, rtol=1e-9)
    for c in range(W.shape[1]):
        _, loss = brute_force_removal(W, H, mask(W.shape[1], [c])[None, :].expand_as(W))
        assert torch.isclose(cc[c], loss, rtol=1e-9)


def test_baseline_costs_follow_their_formulas():
    W, G, A, _, _, Gi, Ai = damped_problem(seed=6)
    R, C = W.shape
    rq = torch.stack([W[r] @ A @ W[r] for r in range(R)])
    cq = torch.stack([W[:, c] @ G @ W[:, c] for c in range(C)])
    r, c = structure_costs("obs", W, G, A, Gi.diagonal(), Ai.diagonal())
    assert torch.allclose(r, 0.5 * rq / Gi.diagonal())
    assert torch.allclose(c, 0.5 * cq / Ai.diagonal())
    r, c = structure_costs("k-obd", W, G, A)
    assert torch.allclose(r, 0.5 * G.diagonal() * rq) and torch.allclose(c, 0.5 * A.diagonal() * cq)
    r, c = structure_costs("l-obd", W, G, A)
    assert torch.allclose(r, 0.5 * rq)
    assert torch.allclose(c, 0.5 * A.diagonal() * W.square().sum(0))
    r, c = structure_costs("magnitude", W, G, A)
    assert torch.allclose(r, W.norm(dim=1)) and torch.allclose(c, W.norm(dim=0))
    with pytest.raises(ValueError):
        structure_costs("wanda", W, G, A)


# ---- structured threshold --------------------------------------------------------------------


def reference_threshold(row_pools, col_pools, target):
    """Slow loop: walk (cost, layer, kind, index) ascending, add marginal counts, stop at target
    (but always take the negative-cost, already-dead structures)."""
    names = list(row_pools)
    items = []
    for li, n in enumerate(names):
        for kind, pool in ((0, row_pools[n]), (1, col_pools[n])):
            items += [(float(v), li, kind, i) for i, v in enumerate(pool.tolist())]
    items.sort()
    out = {n: [[False] * len(row_pools[n]), [False] * len(col_pools[n])] for n in names}
    counts = {n: [0, 0] for n in names}
    total = 0
    for cost, li, kind, i in items:
        if total >= target and cost >= 0:
            break
        n = names[li]
        R, C = len(row_pools[n]), len(col_pools[n])
        r, c = counts[n]
        total += C - c if kind == 0 else R - r
        counts[n][kind] += 1
        out[n][kind][i] = True
    return {n: (torch.tensor(rw), torch.tensor(cl)) for n, (rw, cl) in out.items()}


def union_count(rows, cols):
    """Brute-force removed count: entries of the R x C matrix in a removed row or column."""
    return int((rows[:, None] | cols[None, :]).sum())


def total_removed(masks):
    return sum(union_count(r, c) for r, c in masks.values())


def test_removed_count_formula_matches_the_union_of_rows_and_columns():
    R, C = 4, 5
    for r, c in itertools.product(range(R + 1), range(C + 1)):
        assert removed_count(r, c, R, C) == union_count(mask(R, range(r)), mask(C, range(c)))


def random_pools(seed, layers=3, ties=False):
    g = torch.Generator().manual_seed(seed)
    rows, cols = {}, {}
    for i in range(layers):
        R, C = (int(x) for x in torch.randint(2, 7, (2,), generator=g))
        draw = (lambda n: torch.randint(0, 4, (n,), generator=g).double()) if ties else \
            (lambda n: torch.rand(n, generator=g, dtype=D))
        rows[f"l{i}"], cols[f"l{i}"] = draw(R), draw(C)
    return rows, cols


@pytest.mark.parametrize("seed", range(30))
def test_threshold_equals_loop_reference_on_random_pools(seed):
    rows, cols = random_pools(seed, ties=seed % 2 == 1)
    if seed % 3 == 0:  # some dead structures
        rows["l0"][0] = cols["l1"][1] = -1.0
    total = sum(len(rows[n]) * len(cols[n]) for n in rows)
    for target in [0, 1, total // 3, total // 2, total - 1, total, total + 5]:
        got = structured_threshold(rows, cols, target)
        ref = reference_threshold(rows, cols, target)
        for n in rows:
            assert torch.equal(got[n][0], ref[n][0]) and torch.equal(got[n][1], ref[n][1])


@pytest.mark.parametrize("seed", range(10))
def test_threshold_reaches_the_target_with_the_minimal_prefix(seed):
    rows, cols = random_pools(seed)
    total = sum(len(rows[n]) * len(cols[n]) for n in rows)
    for target in range(1, total + 1, 3):
        masks = structured_threshold(rows, cols, target)
        assert total_removed(masks) >= target
        # dropping the most expensive chosen structure falls below the target
        chosen = [(float(p[i]), n, k, i) for n in rows for k, p in enumerate((rows[n], cols[n]))
                  for i in torch.nonzero(masks[n][k]).flatten().tolist()]
        _, n, k, i = max(chosen)
        masks[n][k][i] = False
        assert total_removed(masks) < target


def test_threshold_tie_order_is_layer_then_rows_then_index():
    rows = {"a": torch.zeros(2, dtype=D), "b": torch.zeros(2, dtype=D)}
    cols = {"a": torch.zeros(3, dtype=D), "b": torch.zeros(3, dtype=D)}
    # all costs tie: walk a's rows (3 each), a's columns (0 each once both rows are gone), b's rows
    m = structured_threshold(rows, cols, 3)
    assert m["a"][0].tolist() == [True, False] and not m["a"][1].any()
    m = structured_threshold(rows, cols, 4)
    assert m["a"][0].all() and not m["a"][1].any() and not m["b"][0].any()
    m = structured_threshold(rows, cols, 7)
    assert m["a"][0].all() and m["a"][1].all()
    assert m["b"][0].tolist() == [True, False] and not m["b"][1].any()
    again = structured_threshold(rows, cols, 7)
    assert all(torch.equal(again[n][k], m[n][k]) for n in rows for k in (0, 1))
    # a cheaper column beats every row, whatever the layer order
    rows = {n: r + 1.0 for n, r in rows.items()}
    cols = {n: c + 1.0 for n, c in cols.items()}
    cols["b"][2] = 0.5
    m = structured_threshold(rows, cols, 2)
    assert m["b"][1].tolist() == [False, False, True] and not m["a"][0].any()


def test_threshold_takes_dead_structures_first_and_always():
    rows = {"a": torch.tensor([0.5, -1.0, 0.1], dtype=D)}
    cols = {"a": torch.tensor([-1.0, 0.2, 0.3, 0.05], dtype=D)}
    m = structured_threshold(rows, cols, 1)
    assert m["a"][0].tolist() == [False, True, False]
    assert m["a"][1].tolist() == [True, False, False, False]
    # target 0 still keeps the dead ones; one more structure (column 3) once they do not suffice
    assert structured_threshold(rows, cols, 0)["a"][0].tolist() == [False, True, False]
    m = structured_threshold(rows, cols, 7)  # dead give 4 + 3 - 1 = 6
    assert m["a"][1].tolist() == [True, False, False, True]
    assert union_count(*m["a"]) == 8


def test_threshold_empty_and_mismatched_pools():
    assert structured_threshold({}, {}, 5) == {}
    with pytest.raises(ValueError):
        structured_threshold({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, 1)
