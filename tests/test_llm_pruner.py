"""LLM-Pruner on tiny models: coupled groups, Taylor importance, uniform per-block masks."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import apply_structured_masks, random_windows, removed_params, tiny_model
from surgeon.errors import SurgeonError
from surgeon.evaluate import sparsity_stats
from surgeon.llm_pruner import (
    ATTENTION, MLP, coupled_groups, group_masks, group_params,
    group_scores, llm_pruner_masks, taylor_importance, uniform_counts,
)
from surgeon.models import decoder_linears


def llama_with_kv_heads(n_kv: int):
    """The tiny Llama with another number of kv heads (4 query heads: MHA, GQA or MQA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = tiny_model("llama").config.to_dict() | {"num_key_value_heads": n_kv}
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def kept(n: int, removed) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in set(removed)])


def sliced(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A smaller copy of `layer` holding only the given rows / columns (None: all)."""
    W = layer.weight.detach()
    rows = torch.arange(W.shape[0]) if rows is None else rows
    cols = torch.arange(W.shape[1]) if cols is None else cols
    out = nn.Linear(len(cols), len(rows), bias=layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(W[rows][:, cols])
        if layer.bias is not None:
            out.bias.copy_(layer.bias.detach()[rows])
    return out


def masked_copy(model, groups):
    out = copy.deepcopy(model)
    apply_structured_masks(out, group_masks(out, groups))
    return out


@pytest.mark.parametrize("arch,n_kv", [("llama", None), ("llama", 1), ("llama", 4), ("opt", None)])
def test_groups_partition_every_block(arch, n_kv):
    model = tiny_model(arch) if n_kv is None else llama_with_kv_heads(n_kv)
    layers = decoder_linears(model)
    groups = coupled_groups(model)
    cfg = model.config
    for b in range(cfg.num_hidden_layers):
        for kind in (MLP, ATTENTION):
            mine = [g for g in groups if g.block == b and g.kind == kind]
            assert [g.index for g in mine] == list(range(len(mine)))
            for side, size in (("rows", "out_features"), ("cols", "in_features")):
                names = {n for g in mine for n in getattr(g, side)}
                for name in names:
                    assert f".{b}." in name
                    covered = sorted(i for g in mine for i in getattr(g, side)[name])
                    assert covered == list(range(getattr(layers[name], size)))  # exact cover
        n_mlp = sum(g.kind == MLP for g in groups if g.block == b)
        n_att = sum(g.kind == ATTENTION for g in groups if g.block == b)
        assert n_mlp == getattr(cfg, "intermediate_size", getattr(cfg, "ffn_dim", None))
        assert n_att == getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    # Llama: every decoder-Linear parameter belongs to exactly one group
    if arch == "llama":
        owned = sum(group_params(g, layers) for g in groups)
        assert owned == sparsity_stats(model)["decoder_params"]


def test_attention_group_is_one_kv_head_and_its_query_heads():
    model = tiny_model("llama")  # 4 query heads, 2 kv heads, head_dim 8
    g = [g for g in coupled_groups(model) if g.block == 0 and g.kind == ATTENTION][1]
    p = "model.layers.0.self_attn."
    assert g.rows == {p + "q_proj": range(16, 32), p + "k_proj": range(8, 16),
                      p + "v_proj": range(8, 16)}
    assert g.cols == {p + "o_proj": range(16, 32)}


def test_taylor_importance_matches_autograd_and_leaves_model_alone():
    model = tiny_model("llama")
    windows = random_windows(2, 12)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    one = taylor_importance(model, windows[:1])
    both = taylor_importance(model, windows, batch_size=1)
    both_batched = taylor_importance(model, windows, batch_size=2)

    for n, p in model.named_parameters():
        assert p.grad is None
        assert p.requires_grad == flags[n]
        assert torch.equal(p.detach(), before[n])
    assert not model.training

    layer_name = "model.layers.1.mlp.down_proj"
    layer = decoder_linears(model)[layer_name]
    for ids, imp in ((windows[:1], one), (windows, both), (windows, both_batched)):
        out = model(ids).logits[:, :-1]
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
        (grad,) = torch.autograd.grad(loss, layer.weight)
        expected = (layer.weight.detach() * grad).abs()
        assert torch.allclose(imp[layer_name], expected, rtol=1e-4, atol=1e-9)
    assert set(one) == set(decoder_linears(model))  # Llama: no biases
    assert all(p.grad is None for p in model.parameters())


def test_taylor_importance_covers_opt_biases():
    model = tiny_model("opt")
    imp = taylor_importance(model, random_windows(1, 8))
    for name, layer in decoder_linears(model).items():
        assert imp[name].shape == layer.weight.shape
        assert imp[f"{name}.bias"].shape == layer.bias.shape


def test_group_scores_sum_owned_elements():
    model = tiny_model("opt")
    layers = decoder_linears(model)
    gen = torch.Generator().manual_seed(0)
    imp = {}
    for name, layer in layers.items():
        imp[name] = torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64)
        imp[f"{name}.bias"] = torch.rand(layer.bias.shape, generator=gen, dtype=torch.float64)
    groups = coupled_groups(model)
    scores = group_scores(groups, imp)
    for k in (0, 5, len(groups) - 1, len(groups) - 3):
        g = groups[k]
        expected = sum(float(imp[n][list(s)].sum() + imp[f"{n}.bias"][list(s)].sum())
                       for n, s in g.rows.items())
        expected += sum(float(imp[n][:, list(s)].sum()) for n, s in g.cols.items())
        assert scores[k].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_masked_mlp_channel_equals_physically_removed_channel(arch):
    model = tiny_model(arch)
    ids = random_windows(2, 10, seed=3)
    block, channel = 1, 5
    group = next(g for g in coupled_groups(model)
                 if (g.block, g.kind, g.index) == (block, MLP, channel))

    small = copy.deepcopy(model)
    layer = small.model.layers[block] if arch == "llama" else small.model.decoder.layers[block]
    if arch == "llama":
        keep = kept(layer.mlp.gate_proj.out_features, [channel])
        layer.mlp.gate_proj = sliced(layer.mlp.gate_proj, rows=keep)
        layer.mlp.up_proj = sliced(layer.mlp.up_proj, rows=keep)
        layer.mlp.down_proj = sliced(layer.mlp.down_proj, cols=keep)
    else:
        keep = kept(layer.fc1.out_features, [channel])
        layer.fc1 = sliced(layer.fc1, rows=keep)
        layer.fc2 = sliced(layer.fc2, cols=keep)

    reference = logits(small, ids)
    assert not torch.allclose(reference, logits(model, ids), atol=1e-5)  # the channel mattered
    assert torch.allclose(logits(masked_copy(model, [group]), ids), reference, atol=1e-5)


@pytest.mark.parametrize("arch,n_kv", [("llama", 2), ("llama", 4), ("opt", None)])
def test_masked_attention_group_equals_model_with_fewer_heads(arch, n_kv):
    """Slice out the query heads j*g .. j*g+g-1, kv head j and the matching o columns.

    The smaller attention keeps head_dim and g query heads per kv head (Llama reads the head
    count from the q/k/v shapes, OPT from `num_heads`, set here), so it is exactly the model with
    those heads removed. A wrong coupling (another kv head, missing q rows) would change outputs.
    """
    model = tiny_model(arch) if n_kv is None else llama_with_kv_heads(n_kv)
    ids = random_windows(2, 10, seed=4)
    n_q = model.config.num_attention_heads
    n_kv = n_kv or n_q
    d = model.config.hidden_size // n_q
    per_kv = n_q // n_kv
    block, j = 0, n_kv - 1
    group = next(g for g in coupled_groups(model)
                 if (g.block, g.kind, g.index) == (block, ATTENTION, j))

    small = copy.deepcopy(model)
    blocks = small.model.layers if arch == "llama" else small.model.decoder.layers
    attn = blocks[block].self_attn
    q_heads = range(j * per_kv, (j + 1) * per_kv)
    q_keep = kept(n_q * d, [h * d + t for h in q_heads for t in range(d)])
    kv_keep = kept(n_kv * d, [j * d + t for t in range(d)])
    attn.q_proj = sliced(attn.q_proj, rows=q_keep)
    attn.k_proj = sliced(attn.k_proj, rows=kv_keep)
    attn.v_proj = sliced(attn.v_proj, rows=kv_keep)
    if arch == "llama":
        attn.o_proj = sliced(attn.o_proj, cols=q_keep)
    else:
        attn.out_proj = sliced(attn.out_proj, cols=q_keep)
        attn.num_heads -= 1

    reference = logits(small, ids)
    assert not torch.allclose(reference, logits(model, ids), atol=1e-5)
    assert torch.allclose(logits(masked_copy(model, [group]), ids), reference, atol=1e-5)


@pytest.mark.parametrize("target", [0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
def test_uniform_masks_hit_target_with_lowest_scores(target):
    model = tiny_model("llama")
    layers = decoder_linears(model)
    groups = coupled_groups(model)
    scores = torch.rand(len(groups), generator=torch.Generator().manual_seed(7))
    masks = llm_pruner_masks(model, groups, scores, target)
    total = sparsity_stats(model)["decoder_params"]
    blocks = model.config.num_hidden_layers
    mlp_size = group_params(next(g for g in groups if g.kind == MLP), layers)

    removed = removed_params(model, masks)
    assert abs(removed - target * total) <= blocks * mlp_size / 2

    counts = uniform_counts(model, groups, target)
    for b in range(blocks):
        for kind in (MLP, ATTENTION):
            mine = [(s, g) for s, g in zip(scores.tolist(), groups)
                    if g.block == b and g.kind == kind]
            # a group is removed when all its rows and columns are masked
            removed_groups = {g.index for _, g in mine
                              if all(masks[n][0][s.start:s.stop].all() for n, s in g.rows.items())
                              and all(masks[n][1][s.start:s.stop].all() for n, s in g.cols.items())}
            assert len(removed_groups) == counts[kind]  # same count in every block
            lowest = {g.index for _, g in sorted(mine, key=lambda sg: sg[0])[: counts[kind]]}
            assert removed_groups == lowest

    apply_structured_masks(model, masks)
    assert sparsity_stats(model)["decoder_zeros"] == removed


def test_ratio_rule_attention_at_the_mlp_ratio_or_mlp_only():
    model = tiny_model("llama")  # per block: 64 channels of 96 params, 2 attention groups of 1536
    groups = coupled_groups(model)
    assert uniform_counts(model, groups, 0.5) == {MLP: 32, ATTENTION: 1}  # same ratio
    assert uniform_counts(model, groups, 0.3) == {MLP: 29, ATTENTION: 0}  # a group is too coarse
    assert uniform_counts(model, groups, 1.0) == {MLP: 64, ATTENTION: 2}
    with pytest.raises(SurgeonError, match="target fraction"):
        uniform_counts(model, groups, 1.5)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_end_to_end_on_calibration_windows(arch):
    model = tiny_model(arch)
    with torch.no_grad():  # OPT starts with zero biases: make every zero one we wrote
        for layer in decoder_linears(model).values():
            if layer.bias is not None:
                layer.bias.uniform_(0.1, 0.2)
    windows = random_windows(2, 12)
    groups = coupled_groups(model)
    scores = group_scores(groups, taylor_importance(model, windows))
    masks = llm_pruner_masks(model, groups, scores, 0.25)
    apply_structured_masks(model, masks)
    stats = sparsity_stats(model)
    assert stats["decoder_zeros"] == removed_params(model, masks)
    assert abs(stats["sparsity"] - 0.25) < 0.05
    assert torch.isfinite(logits(model, windows)).all()


def test_unsupported_architecture_is_a_surgeon_error():
    """GPT-NeoX interleaves q, k and v per head in query_key_value: no layout here."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=64, max_position_embeddings=16, hidden_size=16,
                        intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = GPTNeoXForCausalLM(cfg)
    with pytest.raises(SurgeonError, match="coupled heads and channels support.*query_key_value"):
        coupled_groups(model)
