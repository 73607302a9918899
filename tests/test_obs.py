"""OBS maths against brute force on small matrices with H = G (x) A."""

import torch

from helpers import D, brute_force_removal, setup, spd
from surgeon import linalg, obs

def test_kronecker_quadratic_form():
    W, G, A = setup()
    dW = torch.randn_like(W)
    H = torch.kron(G, A)
    assert torch.allclose(dW.reshape(-1) @ H @ dW.reshape(-1), torch.trace(dW.T @ G @ dW @ A))


def test_element_prune_equals_the_joint_brute_force_optimum():
    W, G, A = setup(R=6, C=8, seed=5)
    remove = torch.rand(W.shape, generator=torch.Generator().manual_seed(9)) < 0.4
    remove[3] = False  # a row with nothing removed
    Gi, Ai = torch.linalg.inv(G), torch.linalg.inv(A)
    expected, _ = brute_force_removal(W, torch.kron(G, A), remove)
    out = obs.obs_element_prune(W, Gi, Ai, remove, tol=1e-13)
    assert torch.allclose(out, expected, atol=1e-9)
    assert (out[remove] == 0).all()


def test_one_removed_row_is_the_rank_one_solution():
    W, G, A = setup(seed=3)
    remove = torch.zeros_like(W, dtype=torch.bool)
    remove[1, [0, 2, 3]] = True
    expected, _ = brute_force_removal(W, torch.kron(G, A), remove)
    Wn = obs.obs_element_prune(W, torch.linalg.inv(G), torch.linalg.inv(A), remove, tol=1e-13)
    assert torch.allclose(Wn, expected, atol=1e-10)
    assert torch.linalg.matrix_rank(Wn - W) == 1


def test_loose_tolerance_stays_feasible_and_close_to_optimal():
    W, G, A = setup(R=12, C=10, seed=8)
    remove = torch.rand(W.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    Gi, Ai = torch.linalg.inv(G), torch.linalg.inv(A)
    _, best = brute_force_removal(W, torch.kron(G, A), remove)
    out = obs.obs_element_prune(W, Gi, Ai, remove)  # default tol
    dW = out - W
    loss = 0.5 * torch.trace(dW.T @ G @ dW @ A)
    assert (out[remove] == 0).all() and best <= loss <= 1.01 * best


def test_element_cost_is_the_loss_increase_of_the_optimal_single_removal():
    W, G, A = setup(seed=7)
    Gi, Ai = torch.linalg.inv(G), torch.linalg.inv(A)
    costs = obs.element_costs(W, Gi.diagonal(), Ai.diagonal())
    H = torch.kron(G, A)
    for r, c in [(0, 0), (3, 5), (4, 2)]:
        remove = torch.zeros_like(W, dtype=torch.bool)
        remove[r, c] = True
        _, loss = brute_force_removal(W, H, remove)
        assert torch.isclose(costs[r, c], loss)


def test_damping_is_relative_to_the_mean_diagonal():
    M = torch.diag(torch.tensor([1.0, 3.0], dtype=D))
    assert torch.allclose(linalg.damped(M, 0.5), torch.diag(torch.tensor([2.0, 4.0], dtype=D)))


def test_spd_inverse_matches_inverse():
    M = spd(7, 11)
    assert torch.allclose(linalg.spd_inverse(M) @ M, torch.eye(7, dtype=D), atol=1e-10)


def test_dead_structures_from_zero_weights_and_zero_curvature():
    W, G, A = setup()
    W[1] = 0.0
    A[3, :] = A[:, 3] = 0.0
    dead_r, dead_c = obs.dead_structures(W, G, A)
    assert dead_r.tolist() == [False, True, False, False, False]
    assert dead_c.tolist() == [False, False, False, True, False, False]
