"""Pruning shots on a tiny model: exact targets, zeros that stay zero, per-layer magnitude."""

import pytest
import torch

from helpers import curvature_file, random_windows, removed_so_far, tiny_model
from surgeon.evaluate import sparsity_stats
from surgeon.prune import decoder_weights, prune_shot
from surgeon.errors import SurgeonError


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_llm_surgeon_shots_hit_target_and_keep_zeros(arch, tmp_path):
    model = tiny_model(arch)
    windows = random_windows(4, 16)
    total = sparsity_stats(model)["decoder_params"]
    before = {n: W.clone() for n, W in decoder_weights(model).items()}
    masks1 = prune_shot(model, "llm-surgeon", 0.25, removed_so_far(model, tmp_path),
                        curvature_file(model, tmp_path / "c1.h5", windows),
                        progress=False)
    stats = sparsity_stats(model)
    assert stats["decoder_zeros"] == round(0.25 * total)
    after1 = decoder_weights(model)
    # correlated updates changed the weights that were kept
    changed = sum(int(((after1[n] != before[n]) & ~masks1[n]).sum()) for n in before)
    assert changed > 0
    masks2 = prune_shot(model, "llm-surgeon", 0.5, removed_so_far(model, tmp_path),
                        curvature_file(model, tmp_path / "c2.h5", windows),
                        progress=False)
    assert sparsity_stats(model)["decoder_zeros"] == round(0.5 * total)
    after2 = decoder_weights(model)
    for n in masks1:
        assert (after2[n][masks1[n]] == 0).all(), f"{n}: a pruned weight came back"
        assert (masks2[n] >= masks1[n]).all()


def test_llm_surgeon_beats_magnitude_on_the_quadratic_it_optimises(tmp_path):
    """Same sparsity: summed K-FAC loss model 0.5 tr(dW^T G dW A) is lower with OBS."""
    from surgeon.curvature_store import open_curvature, read_factors

    windows = random_windows(4, 32, seed=1)
    surgeon, magnitude = tiny_model("llama", seed=3), tiny_model("llama", seed=3)
    dense = decoder_weights(surgeon)
    path = curvature_file(surgeon, tmp_path / "c.h5", windows)
    prune_shot(surgeon, "llm-surgeon", 0.5, removed_so_far(surgeon, tmp_path), path,
               progress=False)
    prune_shot(magnitude, "magnitude", 0.5, removed_so_far(magnitude, tmp_path), progress=False)

    def quadratic_loss(model):
        total = 0.0
        with open_curvature(path) as f:
            for n, W in decoder_weights(model).items():
                A, G = (m.double() for m in read_factors(f, n))
                dW = (W - dense[n]).double()
                total += 0.5 * torch.trace(dW.T @ G @ dW @ A).item()
        return total

    assert sparsity_stats(surgeon)["sparsity"] == sparsity_stats(magnitude)["sparsity"]
    assert quadratic_loss(surgeon) < 0.5 * quadratic_loss(magnitude)


def test_magnitude_is_per_layer_and_exact(tmp_path):
    model = tiny_model("opt")
    weights = decoder_weights(model)
    masks = prune_shot(model, "magnitude", 0.5, removed_so_far(model, tmp_path), progress=False)
    for n, W in weights.items():
        assert int(masks[n].sum()) == round(0.5 * W.numel())
        kept, gone = W[~masks[n]].abs(), W[masks[n]].abs()
        assert gone.max() <= kept.min()


def test_curvature_of_another_model_is_rejected(tmp_path):
    model = tiny_model("llama")
    path = curvature_file(tiny_model("opt"), tmp_path / "opt.h5", random_windows(1, 8))
    with pytest.raises(SurgeonError, match="missing|another model"):
        prune_shot(model, "llm-surgeon", 0.5, removed_so_far(model, tmp_path), path,
                   progress=False)


def test_streamed_inverses_give_the_same_result_as_cached(tmp_path):
    """Large models recompute inverses per layer instead of caching them: same answer."""
    from surgeon.prune import surgeon_elements

    model = tiny_model("llama", seed=5)
    path = curvature_file(model, tmp_path / "c.h5", random_windows(2, 16))
    weights, removed = decoder_weights(model), removed_so_far(model, tmp_path)
    cached, m1 = surgeon_elements(weights, removed, path, 0.4, 0.1, 0.01, False)
    streamed, m2 = surgeon_elements(weights, removed, path, 0.4, 0.1, 0.01, False,
                                    cache_bytes=0)
    for n in cached:
        assert torch.equal(m1[n], m2[n])
        assert torch.allclose(cached[n], streamed[n], atol=1e-6)


@pytest.mark.parametrize("structure", ["unstructured", "structured"])
def test_streamed_prune_holds_the_factors_of_at_most_two_layers(tmp_path, monkeypatch,
                                                                 structure):
    """Without the inverse cache the prune stage's factor memory does not grow with depth:
    the factors read from curvature.h5 are released before the next layer's are read."""
    import weakref

    from surgeon import prune as prune_module
    from surgeon.curvature_store import read_factors

    def most_alive(layers):
        model = tiny_model("llama", seed=3, layers=layers)
        path = curvature_file(model, tmp_path / f"c{layers}.h5", random_windows(2, 16))
        alive, most = [], [0]

        def spy(f, name):
            alive[:] = [r for r in alive if r() is not None]
            most[0] = max(most[0], len(alive))
            A, G = read_factors(f, name)
            alive.extend([weakref.ref(A), weakref.ref(G)])
            return A, G

        monkeypatch.setattr(prune_module, "read_factors", spy)
        prune_shot(model, "llm-surgeon", 0.3, removed_so_far(model, tmp_path), path,
                   progress=False, structure=structure, units="rows-columns"
                   if structure == "structured" else None, cache_bytes=0)
        return most[0]

    shallow, deep = most_alive(2), most_alive(6)
    assert deep == shallow <= 4  # one layer's A and G, and the previous layer's until rebound
