"""Multi-shot correctness: earlier zeros stay constraints, dead coupled structures count in
the shot that kills them."""

import torch

from helpers import (brute_force_removal, curvature_file, random_windows, removed_so_far,
                     setup, tiny_model)
from surgeon import linalg
from surgeon.curvature_store import write_curvature
from surgeon.prune import surgeon_elements


def one_layer_curvature(path, name, G, A):
    R, C = len(G), len(A)
    write_curvature(path, {name: (A.float(), G.float())}, {"fisher": "empirical"},
                    {name: {"weight_shape": [R, C], "tokens": 1}})
    return path


def test_second_shot_equals_brute_force_with_every_removed_weight_held_at_zero(tmp_path):
    """Shot 2 of an element prune is the constrained least-squares optimum from the shot-1
    weights with ALL removed elements (shot 1's and shot 2's) held at zero."""
    W, G, A = setup(R=6, C=8, seed=11)
    G, A = G.float().double(), A.float().double()  # what the float32 file stores
    name = "layer"
    path = one_layer_curvature(tmp_path / "c.h5", name, G, A)
    H = torch.kron(linalg.damped(G, 0.1), linalg.damped(A, 0.01))
    removed = {name: torch.zeros(W.shape, dtype=torch.bool)}
    weights = {name: W.float()}
    for fraction in (0.25, 0.5):
        before = weights[name].double()
        weights, masks = surgeon_elements(weights, removed, path, fraction, 0.1, 0.01,
                                          progress=False, cg_tol=1e-12)
        assert masks[name].sum() == round(fraction * W.numel())
        assert (masks[name] >= removed[name]).all()
        expected, _ = brute_force_removal(before, H, masks[name])
        assert torch.allclose(weights[name].double(), expected, atol=1e-4), fraction
        removed = masks


def test_one_structured_shot_counts_the_structures_its_removals_kill(tmp_path):
    """Every row/column the shot leaves dead (zero input or zero output gradient) is zeroed and
    counted: the removed parameters meet the target within one structure, and a probe of the
    pruned model finds no dead structure that still holds weights."""
    from surgeon.coupling import dead_after_removal
    from surgeon.evaluate import sparsity_stats
    from surgeon.prune import decoder_weights, prune_shot

    model = tiny_model("llama", seed=4)
    windows = random_windows(2, 16)
    path = curvature_file(model, tmp_path / "c.h5", windows)
    total = sparsity_stats(model)["decoder_params"]
    prune_shot(model, "llm-surgeon", 0.3, removed_so_far(model, tmp_path), path, damp_g=0.1,
               damp_a=0.01, progress=False, structure="structured", calibration=windows,
               units="rows-columns")
    weights = decoder_weights(model)
    none = {n: (torch.zeros(W.shape[0], dtype=torch.bool),
                torch.zeros(W.shape[1], dtype=torch.bool)) for n, W in weights.items()}
    dead = dead_after_removal(model, none, windows[:1])
    killed_somewhere = False
    for n, W in weights.items():
        rows, cols = dead[n]
        assert (W[rows] == 0).all() and (W[:, cols] == 0).all(), f"{n}: dead but not removed"
        killed_somewhere |= bool(rows.any() or cols.any())
    assert killed_somewhere
    zeros = sparsity_stats(model)["decoder_zeros"]
    largest = max(max(W.shape) for W in weights.values())
    assert round(0.3 * total) <= zeros < round(0.3 * total) + largest
