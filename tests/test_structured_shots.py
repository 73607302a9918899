"""Structured shots on tiny models: exact row/column zeros, targets, coupled structures freed."""

import pytest
import torch

from helpers import curvature_file, random_windows, removed_so_far, tiny_model
from surgeon.evaluate import sparsity_stats
from surgeon.models import decoder_linears
from surgeon.prune import decoder_weights, prune_shot
from surgeon.structured import removed_count


def removed_structures(W):
    return (W == 0).all(dim=1), (W == 0).all(dim=0)


@pytest.mark.parametrize("method", ["llm-surgeon", "k-obd", "l-obd", "magnitude"])
def test_structured_shot_removes_whole_rows_and_columns(method, tmp_path):
    model = tiny_model("llama", seed=4)
    dense = decoder_weights(model)
    path = curvature_file(model, tmp_path / "c.h5", random_windows(2, 16))
    masks = prune_shot(model, method, 0.2, removed_so_far(model, tmp_path), path,
                       damp_g=0.01, damp_a=0.01, progress=False, structure="structured",
                       units="rows-columns")
    total = sum(W.numel() for W in dense.values())
    removed = 0
    for n, W in decoder_weights(model).items():
        rows, cols = removed_structures(W)
        # the mask is exactly a union of whole rows and columns, and it is zero
        assert torch.equal(masks[n], rows[:, None] | cols[None, :]), n
        removed += removed_count(int(rows.sum()), int(cols.sum()), *W.shape)
        kept = ~masks[n]
        if method == "llm-surgeon" and masks[n].any() and kept.any():
            assert not torch.equal(W[kept], dense[n][kept]), f"{n}: no OBS update"
        elif method != "llm-surgeon":
            assert torch.equal(W[kept], dense[n][kept]), f"{n}: baselines only zero"
    assert removed == sparsity_stats(model)["decoder_zeros"]
    # at most one structure past the target: globally, or per layer for magnitude
    slack = sum(max(W.shape) for W in dense.values()) if method == "magnitude" else 64
    assert round(0.2 * total) <= removed < round(0.2 * total) + slack


def zero_channel(model, block, channel, which):
    mlp = model.model.layers[block].mlp
    with torch.no_grad():
        if which == "down column":
            mlp.down_proj.weight[:, channel] = 0
        else:
            mlp.up_proj.weight[channel] = 0


@pytest.mark.parametrize("which, freed", [("up row", "down column"),
                                          ("down column", "gate and up rows")])
def test_a_removed_channel_frees_its_coupled_structures_at_the_next_shot(which, freed, tmp_path):
    """Removing an up row makes the down column's input zero (A_cc = 0); removing a down column
    makes the up/gate rows' output gradients zero (G_rr = 0): the next shot removes them."""
    model = tiny_model("llama", seed=6)
    zero_channel(model, block=1, channel=5, which=which)
    path = curvature_file(model, tmp_path / "c.h5", random_windows(2, 16))
    masks = prune_shot(model, "llm-surgeon", 0.02, removed_so_far(model, tmp_path), path,
                       damp_g=0.01, damp_a=0.01, progress=False, structure="structured",
                       units="rows-columns")
    layers = decoder_linears(model)
    down = layers["model.layers.1.mlp.down_proj"].weight
    gate, up = (layers[f"model.layers.1.mlp.{p}_proj"].weight for p in ("gate", "up"))
    if freed == "down column":
        assert masks["model.layers.1.mlp.down_proj"][:, 5].all() and (down[:, 5] == 0).all()
    else:
        assert (gate[5] == 0).all() and (up[5] == 0).all()
    # the unrelated channel next to it survives
    assert (down[:, 6] != 0).any() and (up[6] != 0).any()


def test_llm_pruner_removes_coupled_groups_uniformly(tmp_path):
    model = tiny_model("llama", seed=7)
    windows = random_windows(2, 16)
    prune_shot(model, "llm-pruner", 0.25, removed_so_far(model, tmp_path), progress=False,
               structure="structured", calibration=windows)
    per_block = []
    for b, layer in enumerate(model.model.layers):
        gate_rows = (layer.mlp.gate_proj.weight == 0).all(dim=1)
        up_rows = (layer.mlp.up_proj.weight == 0).all(dim=1)
        down_cols = (layer.mlp.down_proj.weight == 0).all(dim=0)
        assert torch.equal(gate_rows, up_rows) and torch.equal(up_rows, down_cols)
        per_block.append(int(gate_rows.sum()))
    assert len(set(per_block)) == 1 and per_block[0] > 0
    assert abs(sparsity_stats(model)["sparsity"] - 0.25) < 0.05
