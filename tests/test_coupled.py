"""Structured LLM Surgeon on coupled units (surgeon/coupled.py) against brute force and compaction."""

import pytest
import torch

from helpers import D, brute_force_removal, curvature_file, random_windows, setup, tiny_model
from surgeon import linalg
from surgeon.compact import compact_model
from surgeon.coupled import multi_col_cost, multi_row_cost, select_units, span_costs
from surgeon.curvature_store import open_curvature, read_factors
from surgeon.llm_pruner import ATTENTION, MLP, coupled_groups, group_params
from surgeon.models import decoder_linears
from surgeon.prune import decoder_weights, prune_shot
from surgeon.structured import obs_structured_update
from surgeon.threshold import REMOVED


@pytest.mark.parametrize("axis", ["rows", "cols"])
def test_multi_row_and_column_costs_equal_the_brute_force_optimum(axis):
    W, G, A = setup(R=6, C=7, seed=3)
    idx = torch.tensor([1, 2, 4])
    remove = torch.zeros_like(W, dtype=torch.bool)
    if axis == "rows":
        remove[idx] = True
        cost = multi_row_cost(W, A, torch.linalg.inv(G), idx)
    else:
        remove[:, idx] = True
        cost = multi_col_cost(W, G, torch.linalg.inv(A), idx)
    _, loss = brute_force_removal(W, torch.kron(G, A), remove)
    # the set's joint cost, not the sum of single-row costs
    singles = sum(multi_row_cost(W, A, torch.linalg.inv(G), idx[i:i + 1]) if axis == "rows"
                  else multi_col_cost(W, G, torch.linalg.inv(A), idx[i:i + 1])
                  for i in range(len(idx)))
    assert cost == pytest.approx(float(loss), rel=1e-9)
    assert abs(singles - cost) > 1e-6 * cost


@pytest.fixture(scope="module")
def llama_with_curvature(tmp_path_factory):
    model = tiny_model("llama", seed=4)
    path = curvature_file(model, tmp_path_factory.mktemp("coupled") / "c.h5",
                          random_windows(4, 24, seed=2))
    return model, path


def _quadratic_loss(dW, G, A):
    return 0.5 * float(torch.trace(dW.T @ G @ dW @ A))


def test_a_units_cost_is_the_loss_change_of_its_removal_with_update(llama_with_curvature):
    model, path = llama_with_curvature
    weights = decoder_weights(model)
    damp_g, damp_a = 0.1, 0.01
    groups = coupled_groups(model)
    for kind in (MLP, ATTENTION):
        group = next(g for g in groups if g.kind == kind and g.block == 1)
        predicted = actual = 0.0
        with open_curvature(path) as f:
            for n in set(group.rows) | set(group.cols):
                W = weights[n].double()
                A, G = read_factors(f, n)
                Gt, At = linalg.damped(G, damp_g), linalg.damped(A, damp_a)
                Gi, Ai = linalg.spd_inverse(Gt), linalg.spd_inverse(At)
                live_r = torch.ones(W.shape[0], dtype=torch.bool)
                live_c = torch.ones(W.shape[1], dtype=torch.bool)
                rows, cols = torch.zeros_like(live_r), torch.zeros_like(live_c)
                for axis, spans, mask in (("rows", group.rows, rows), ("cols", group.cols, cols)):
                    if n in spans:
                        predicted += float(span_costs(W, Gt, At, Gi, Ai, live_r, live_c,
                                                      [spans[n]], axis)[0])
                        mask[spans[n].start:spans[n].stop] = True
                Wn = obs_structured_update(W, Gi, Ai, rows, cols)
                assert bool((Wn[rows] == 0).all()) and bool((Wn[:, cols] == 0).all())
                actual += _quadratic_loss(Wn - W, Gt, At)
        assert predicted == pytest.approx(actual, rel=1e-8), kind


def test_selection_by_cost_per_parameter_keeps_one_unit_of_each_kind_per_block():
    model = tiny_model("llama", seed=0)
    groups = coupled_groups(model)
    params = torch.tensor([group_params(g, decoder_linears(model)) for g in groups], dtype=D)
    costs = torch.arange(len(groups), dtype=D)
    costs[5] = REMOVED  # an earlier shot's unit: counted and kept first
    chosen = select_units(groups, costs, params, int(params.sum()))  # ask for everything
    assert bool(chosen[5])
    for block in (0, 1):
        for kind in (MLP, ATTENTION):
            kept = [not c for g, c in zip(groups, chosen.tolist())
                    if g.block == block and g.kind == kind]
            assert sum(kept) == 1
    # the removed unit counts toward the target; one parameter more takes the unit with the
    # lowest cost per parameter
    density = costs / params
    assert int(select_units(groups, costs, params, int(params[5])).sum()) == 1
    chosen = select_units(groups, costs, params, int(params[5]) + 1)
    assert int(chosen.sum()) == 2 and bool(chosen[5])
    cheapest = min((i for i in range(len(groups)) if i != 5), key=lambda i: float(density[i]))
    assert bool(chosen[cheapest])


@pytest.mark.parametrize("coupled_cost", ["output", "summed"])
@pytest.mark.parametrize("shots", [1, 2])
def test_every_removed_unit_disappears_in_compaction(tmp_path, shots, coupled_cost):
    model = tiny_model("llama", seed=5).double()
    windows = random_windows(4, 24, seed=1)
    total = sum(W.numel() for W in decoder_weights(model).values())
    removed = {n: W == 0 for n, W in decoder_weights(model).items()}
    for shot in range(1, shots + 1):
        path = curvature_file(model, tmp_path / f"c{shot}.h5", windows)
        fraction = 0.3 * shot / shots
        masks = prune_shot(model, "llm-surgeon", fraction, removed, path, 0.1, 0.01,
                           progress=False, structure="structured", units="coupled",
                           coupled_cost=coupled_cost)
        assert all(bool((removed[n] <= masks[n]).all()) for n in masks)  # earlier stay removed
        removed = masks
    zeros = sum(int((W == 0).sum()) for W in decoder_weights(model).values())
    unit = max(group_params(g, decoder_linears(model)) for g in coupled_groups(model))
    assert 0.3 * total <= zeros < 0.3 * total + unit
    small, summary = compact_model(model)
    assert summary["zero_weights_left"] == 0 and summary["padded_heads"] == 0
    assert summary["removed_weights"] == zeros
    ids = windows[:2]
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, model(ids).logits, rtol=0, atol=1e-10)
        fp32 = small.float()(ids).logits
        dense32 = model.float()(ids).logits
    assert float((fp32 - dense32).abs().max() / dense32.abs().max()) < 1e-4


def test_coupled_is_refused_for_methods_without_it(llama_with_curvature):
    from surgeon.errors import SurgeonError

    model, path = llama_with_curvature
    removed = {n: W == 0 for n, W in decoder_weights(model).items()}
    with pytest.raises(SurgeonError, match="units"):
        prune_shot(model, "k-obd", 0.2, removed, path, structure="structured", units="coupled")


def test_slimgpt_greedy_step_is_the_best_single_group_removal():
    """Each greedy step removes the group whose optimal removal (KKT, H = I (x) A per row)
    costs least, and leaves the kept columns exactly at that optimum."""
    from surgeon.slimgpt import greedy_column_groups

    W, _, A = setup(R=4, C=6, seed=8)
    groups = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3, 4, 5])]
    H = torch.kron(torch.eye(4, dtype=D), linalg.damped(A, 0.01))
    best = None
    for j, T in enumerate(groups):
        remove = torch.zeros_like(W, dtype=torch.bool)
        remove[:, T] = True
        Wopt, loss = brute_force_removal(W, H, remove)
        if best is None or loss < best[1]:
            best = (j, float(loss), Wopt)
    Wn, removed = greedy_column_groups(W, A, groups, 1, damp=0.01)
    assert removed == [best[0]]
    assert torch.allclose(Wn, best[2], atol=1e-10)
    # a second step continues from the downdated inverse: the same as removing both at once
    Wn2, removed2 = greedy_column_groups(W, A, groups, 2, damp=0.01)
    remove = torch.zeros_like(W, dtype=torch.bool)
    remove[:, torch.cat([groups[j] for j in removed2])] = True
    assert torch.allclose(Wn2, brute_force_removal(W, H, remove)[0], atol=1e-10)


def test_slimgpt_prunes_uniform_coupled_groups_that_compaction_removes(tmp_path):
    from surgeon.llm_pruner import uniform_counts

    model = tiny_model("llama", seed=9)
    windows = random_windows(3, 16, seed=4)
    total = sum(W.numel() for W in decoder_weights(model).values())
    removed = {n: W == 0 for n, W in decoder_weights(model).items()}
    masks = prune_shot(model, "slimgpt", 0.25, removed, progress=False, structure="structured",
                       calibration=windows)
    counts = uniform_counts(model, coupled_groups(model), 0.25)
    for layer in model.model.layers:
        assert int((layer.mlp.gate_proj.weight == 0).all(dim=1).sum()) == counts[MLP]
        assert int((layer.mlp.down_proj.weight == 0).all(dim=0).sum()) == counts[MLP]
    zeros = sum(int(m.sum()) for m in masks.values())
    assert zeros == sum(int((W == 0).sum()) for W in decoder_weights(model).values())
    assert abs(zeros - 0.25 * total) <= max(group_params(g, decoder_linears(model))
                                            for g in coupled_groups(model))
    _, summary = compact_model(model)
    assert summary["zero_weights_left"] == 0


def test_slimgpt_removes_the_given_per_block_counts():
    """block_counts (LLM Surgeon's allocation, scripts/structured_allocation.py) replace the
    uniform counts block by block; a block and kind it does not name loses nothing."""
    from surgeon.layerwise import prune_sequentially
    from surgeon.slimgpt import slimgpt_masks

    model = tiny_model("llama", seed=9)
    windows = random_windows(3, 16, seed=4)
    counts = {(0, MLP): 3, (1, MLP): 1, (1, ATTENTION): 1}
    slimgpt_masks(model, 0.25, lambda prune_block: prune_sequentially(model, windows,
                                                                      prune_block, False),
                  block_counts=counts)
    for b, layer in enumerate(model.model.layers):
        assert int((layer.mlp.down_proj.weight == 0).all(dim=0).sum()) == counts.get((b, MLP), 0)
    kv = model.model.layers[1].self_attn.k_proj.weight
    assert int((kv == 0).all(dim=1).sum()) == model.config.head_dim
    assert not (model.model.layers[0].self_attn.k_proj.weight == 0).all(dim=1).any()


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_output_costs_update_only_the_output_layers_to_their_joint_optimum(tmp_path, arch):
    """coupled_cost output: every o_proj / down_proj (out_proj / fc2) ends at the optimal
    column removal of the units it lost (W - W_T (Ai_TT)^-1 Ai[T, :] with the shot's damped A,
    the bias column of OPT's fc2 updated too); the input layers keep every weight of the kept
    units and lose exactly the rows of the removed ones."""
    model = tiny_model(arch, seed=6).double()
    with torch.no_grad():  # a random OPT's biases are zero: give them values, as trained ones
        for layer in decoder_linears(model).values():
            if layer.bias is not None:
                layer.bias.normal_(0.0, 0.02)
    windows = random_windows(4, 24, seed=3)
    path = curvature_file(model, tmp_path / "c.h5", windows)
    before = decoder_weights(model)
    removed = {n: W == 0 for n, W in before.items()}
    masks = prune_shot(model, "llm-surgeon", 0.3, removed, path, 1.0, 0.01, progress=False,
                       structure="structured", units="coupled")
    after = decoder_weights(model)
    outputs = {n for g in coupled_groups(model) for n in g.cols}
    rows_removed = 0
    with open_curvature(path) as f:
        for n, W in before.items():
            if n in outputs:
                A, _ = read_factors(f, n)
                live = A.diagonal() > 0  # OPT's ReLU leaves channels with no input: dead
                cols = masks[n].all(dim=0)[live]
                Ai = linalg.spd_inverse(linalg.damped(A[live][:, live], 0.01))
                Wl = W[:, live]
                expected = torch.zeros_like(W)
                expected[:, live] = Wl - linalg.spd_solve(Ai[cols][:, cols],
                                                          Wl[:, cols].T).T @ Ai[cols]
                expected[:, masks[n].all(dim=0)] = 0.0
                assert torch.allclose(after[n], expected, atol=1e-4 * float(W.abs().max())), n
                assert not bool(masks[n].all(dim=1).any())  # no output row removed
            else:
                rows = masks[n].all(dim=1)
                rows_removed += int(rows.sum())
                assert bool((after[n][rows] == 0).all())
                assert torch.equal(after[n][~rows], before[n][~rows]), n
    assert rows_removed > 0
    if arch == "opt":  # the bias column of fc2 takes part in the update
        fc2 = "model.decoder.layers.0.fc2"
        assert not torch.equal(after[fc2][:, -1], before[fc2][:, -1])


def test_the_prune_stage_records_which_coupled_costs_it_used(tmp_path, llama_dir):
    import json
    import subprocess
    import sys

    model = tiny_model("llama")
    path = curvature_file(model, tmp_path / "c.h5", random_windows(2, 16, seed=1))

    def prune(*extra):
        out = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        r = subprocess.run([sys.executable, "-m", "surgeon", "prune", "--model", str(llama_dir),
                            "--structure", "structured", "--target", "0.2", "--curvature",
                            str(path), "--out", str(out), *extra],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads((out / "manifest.json").read_text())["config"]

    assert prune("--method", "llm-surgeon", "--units", "coupled")["coupled_cost"] == "output"
    config = prune("--method", "llm-surgeon", "--units", "coupled", "--coupled-cost", "summed")
    assert config["coupled_cost"] == "summed"
    assert "coupled_cost" not in prune("--method", "llm-surgeon", "--units", "rows-columns")
