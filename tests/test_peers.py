"""Peer methods and 2:4: each method's defining property on tiny layers and tiny models."""

import pytest
import torch

from helpers import curvature_file, is_nm, random_windows, removed_so_far, tiny_model
from surgeon.evaluate import sparsity_stats
from surgeon.errors import SurgeonError
from surgeon.models import decoder_linears
from surgeon.prune import decoder_weights, prune_shot
from surgeon.selection import select_elements
from surgeon.semi_structured import block_costs
from surgeon.sparsegpt import sparsegpt_prune
from surgeon.wanda import per_row_mask, wanda_scores


def correlated_inputs(n=256, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64)
    return torch.randn(n, c, generator=g, dtype=torch.float64) @ mix


def test_wanda_compares_within_each_row():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 12, generator=g, dtype=torch.float64)
    a_diag = torch.rand(12, generator=g, dtype=torch.float64) * 10
    none = torch.zeros_like(W, dtype=torch.bool)
    mask = per_row_mask(wanda_scores(W, a_diag), 0.5, none)
    assert (mask.sum(dim=1) == 6).all()  # every row loses exactly half
    score = W.abs() * a_diag.sqrt()
    for r in range(6):  # brute force: the 6 lowest scores of the row
        assert set(mask[r].nonzero().flatten().tolist()) == set(score[r].argsort()[:6].tolist())
    # one heavy input column survives in every row even though its weights are small
    W[:, 3] = 0.05
    a_diag[3] = 1e6
    assert not per_row_mask(wanda_scores(W, a_diag), 0.5, none)[:, 3].any()


def test_sparsegpt_reconstructs_outputs_better_than_magnitude():
    X = correlated_inputs()
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    H = X.T @ X / len(X)
    none = torch.zeros_like(W, dtype=torch.bool)
    for nm in (None, (2, 4)):
        Ws, mask = sparsegpt_prune(W, H, 0.5, none, 16, nm, blocksize=8, damp=1e-4)
        assert int(mask.sum()) == W.numel() // 2 and (Ws[mask] == 0).all()
        magnitude = W.clone()
        if nm is None:
            magnitude.view(-1)[W.abs().flatten().argsort()[: W.numel() // 2]] = 0
        else:
            blocks = magnitude.view(8, 4, 4)
            blocks.scatter_(2, blocks.abs().topk(2, dim=2, largest=False).indices, 0.0)
        err = lambda V: (X @ (V - W).T).square().sum().item()  # noqa: E731
        assert err(Ws) < 0.7 * err(magnitude), nm


def test_sparsegpt_lazy_block_propagation_equals_column_by_column():
    """With a 2:4 mask (fixed per 4 columns) the block size must not change the result."""
    X = correlated_inputs(c=32, seed=2)
    W = torch.randn(5, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    none = torch.zeros_like(W, dtype=torch.bool)
    results = [sparsegpt_prune(W, X.T @ X, 0.5, none, 32, (2, 4), blocksize=b)
               for b in (4, 8, 32)]
    for Wb, mb in results[1:]:
        assert torch.equal(mb, results[0][1])
        assert torch.allclose(Wb, results[0][0], atol=1e-10)


def test_sparsegpt_one_column_update_is_the_obs_solution():
    """Zeroing only the first column: the rest move by -w_0 Hinv[0, :] / Hinv[0, 0] (OBS)."""
    X = correlated_inputs(c=8, seed=4)
    H = X.T @ X
    W = torch.randn(3, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    removed = torch.zeros_like(W, dtype=torch.bool)
    removed[:, 0] = True
    W[:, 0] += 5.0  # a "removed" column that is not zero yet: forced into the mask
    Ws, mask = sparsegpt_prune(W, H, 1 / 8, removed, 8, None, blocksize=8, damp=0.0)
    assert torch.equal(mask, removed)
    Hinv = torch.linalg.inv(H)
    expected = W - W[:, :1] * Hinv[0:1, :] / Hinv[0, 0]
    assert torch.allclose(Ws, expected, atol=1e-8)


def test_block_cost_is_the_sum_of_the_two_cheapest():
    cost = torch.tensor([[4.0, 1.0, 3.0, 2.0, 9.0, 8.0, 0.5, 7.0]])
    assert block_costs(cost, 8).tolist() == [[3.0, 7.5]]
    removed = torch.zeros(1, 8, dtype=torch.bool)
    # half the blocks at a global 2:4 fraction of 0.25: the cheaper first block is chosen
    mask = select_elements({"l": cost}, {"l": removed}, 0.25, "2:4", "global", {"l": 8})["l"]
    assert mask.tolist() == [[False, True, False, True, False, False, False, False]]


def test_bias_column_is_never_part_of_a_block():
    cost = torch.zeros(2, 9)  # 8 weight columns + a bias column that costs nothing
    removed = torch.zeros(2, 9, dtype=torch.bool)
    mask = select_elements({"l": cost}, {"l": removed}, 0.5, "2:4", "row", {"l": 8})["l"]
    assert not mask[:, 8].any() and int(mask.sum()) == 8


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("method", ["llm-surgeon", "sparsegpt", "wanda", "magnitude", "k-obd",
                                    "l-obd"])
def test_two_four_holds_in_every_block_of_every_layer(arch, method, tmp_path):
    model = tiny_model(arch)
    torch.manual_seed(0)
    for layer in decoder_linears(model).values():
        if layer.bias is not None:  # OPT starts with zero biases: make them count
            layer.bias.data.uniform_(-0.1, 0.1)
    path = curvature_file(model, tmp_path / "c.h5", random_windows(2, 16))
    masks = prune_shot(model, method, 0.5, removed_so_far(model, tmp_path), path,
                       progress=False, structure="2:4")
    for n, layer in decoder_linears(model).items():
        assert is_nm(layer.weight.detach(), layer.in_features), n
        # at least half: inputs that never fire (dead ReLU columns) are zeros already
        assert int(masks[n][:, : layer.in_features].sum()) >= layer.weight.numel() // 2, n
        if layer.bias is not None:
            assert not masks[n][:, -1].any()


def test_llm_surgeon_two_four_in_two_shots_keeps_the_first_shots_blocks(tmp_path):
    model = tiny_model("llama", seed=1)
    windows = random_windows(2, 16)
    masks1 = prune_shot(model, "llm-surgeon", 0.25, removed_so_far(model, tmp_path),
                        curvature_file(model, tmp_path / "c1.h5", windows),
                        progress=False, structure="2:4")
    total = sparsity_stats(model)["decoder_params"]
    assert sparsity_stats(model)["decoder_zeros"] == total // 4
    masks2 = prune_shot(model, "llm-surgeon", 0.5, removed_so_far(model, tmp_path),
                        curvature_file(model, tmp_path / "c2.h5", windows),
                        progress=False, structure="2:4")
    for n, layer in decoder_linears(model).items():
        assert is_nm(layer.weight.detach(), layer.in_features)
        assert (masks2[n] >= masks1[n]).all() and (layer.weight[masks1[n]] == 0).all()


@pytest.mark.parametrize("method", ["k-obd", "l-obd"])
def test_obd_costs_and_global_count(method, tmp_path):
    from surgeon.curvature_store import open_curvature, read_factors

    model = tiny_model("llama", seed=2)
    path = curvature_file(model, tmp_path / "c.h5", random_windows(2, 16))
    dense = decoder_weights(model)
    masks = prune_shot(model, method, 0.3, removed_so_far(model, tmp_path), path,
                       progress=False)
    total = sum(W.numel() for W in dense.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * total)
    costs = []
    with open_curvature(path) as f:
        for n, W in dense.items():
            A, G = read_factors(f, n)
            g = G.diagonal() if method == "k-obd" else torch.ones(len(G))
            costs.append((0.5 * W.double() ** 2 * g[:, None] * A.diagonal()[None, :]).flatten())
    costs = torch.cat(costs)
    chosen = torch.cat([masks[n].flatten() for n in dense])
    assert costs[chosen].max() <= costs[~chosen].min()  # no update: weights only zeroed
    for n, W in decoder_weights(model).items():
        assert torch.equal(W, dense[n].masked_fill(masks[n], 0.0))


def test_unsupported_combination_is_refused(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(SurgeonError, match="does not support structure"):
        prune_shot(model, "wanda", 0.2, removed_so_far(model, tmp_path), tmp_path / "c.h5",
                   structure="structured")
    with pytest.raises(SurgeonError, match="2:4 removes at most"):
        prune_shot(model, "magnitude", 0.6, removed_so_far(model, tmp_path), structure="2:4")


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_sequential_mode_differs_from_dense_a_only_in_the_inputs_it_sees(method, tmp_path):
    """Layer by layer: block b is pruned with the A factors that K-FAC measures on the model
    whose blocks before b are already pruned (and b itself not yet); the dense-A mode would
    use the dense model's A for every block."""
    from surgeon.curvature import estimate_kfac
    from surgeon.models import decoder_linears, set_weight_with_bias, weight_with_bias
    from surgeon.selection import select_elements
    from surgeon.sparsegpt import sparsegpt_prune
    from surgeon.wanda import wanda_scores

    windows = random_windows(3, 16, seed=4)
    sequential = tiny_model("llama", seed=8)
    prune_shot(sequential, method, 0.5, removed_so_far(sequential, tmp_path), progress=False,
               calibration=windows, sequential=True)
    reference = tiny_model("llama", seed=8)
    layers = decoder_linears(reference)
    for block in range(len(reference.model.layers)):
        factors, _ = estimate_kfac(reference, windows, progress=False)
        for p in reference.parameters():
            p.requires_grad_(False)
        for n, layer in layers.items():
            if f".layers.{block}." not in n:
                continue
            W, A = weight_with_bias(layer), factors[n][0]
            none = torch.zeros_like(W, dtype=torch.bool)
            if method == "sparsegpt":
                W, _ = sparsegpt_prune(W, A, 0.5, none, layer.in_features)
            else:
                mask = select_elements({n: wanda_scores(W, A.diagonal()).float()}, {n: none},
                                       0.5, "unstructured", "row", {n: layer.in_features})[n]
                W = W.masked_fill(mask, 0.0)
            set_weight_with_bias(layer, W)
    for n, layer in decoder_linears(sequential).items():
        assert torch.allclose(layer.weight, layers[n].weight, atol=1e-5), n


@pytest.mark.parametrize("sequential", [False, True])
def test_damping_a_reaches_sparsegpt(sequential, tmp_path):
    """SparseGPT's percdamp is the run's damping_a, in both modes (it was silently 0.01)."""
    windows = random_windows(2, 16, seed=3)
    out = []
    for damp_a in (0.01, 10.0):
        model = tiny_model("llama", seed=2)
        path = None if sequential else curvature_file(model, tmp_path / f"c{damp_a}.h5", windows)
        prune_shot(model, "sparsegpt", 0.5, removed_so_far(model, tmp_path), path,
                   damp_a=damp_a, progress=False, calibration=windows, sequential=sequential)
        out.append(decoder_weights(model))
    assert any(not torch.allclose(out[0][n], out[1][n]) for n in out[0])
