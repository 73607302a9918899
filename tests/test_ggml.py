"""llama.cpp block types: K-quant grids, byte layouts read back by gguf, llama-quantize's mixture."""

import itertools

import numpy as np
import pytest
import torch

from surgeon.errors import SurgeonError
from surgeon.ggml_blocks import pack
from surgeon.ggml_plan import tensor_types, use_more_bits
from surgeon.quantize import (GGML_GRIDS, Grid, bits_per_weight, gptq_quantize,
                              kquant_group_scales, rtn_quantize, super_scales)


def pruned_layer(rows=16, cols=512, seed=0):
    """Weights with half removed (exact zeros), skewed first columns (asymmetric groups),
    and H = X^T X / tokens of correlated inputs."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.05
    W[:, :40] += 0.2
    removed = torch.rand(rows, cols, generator=g) < 0.5
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5
    X = torch.randn(1024, cols, generator=g, dtype=torch.float64) @ (torch.eye(cols) + mix)
    return torch.where(removed, 0.0, W), removed, X, X.T @ X / len(X)


@pytest.mark.parametrize("kind,method", list(itertools.product(
    GGML_GRIDS, ["rtn", "gptq", "rtn-searched", "gptq-searched-shrunk"])))
def test_gguf_reads_back_exactly_our_weights(kind, method):
    """Packed blocks, dequantized by gguf's reference code, are the weights we evaluate, and
    removed weights are exact zeros (searched scales and a shrunk H included)."""
    from gguf import GGMLQuantizationType, dequantize

    W, removed, _, H = pruned_layer()
    grid = GGML_GRIDS[kind]
    q = {"rtn": lambda: rtn_quantize(W, grid, removed),
         "gptq": lambda: gptq_quantize(W, H, grid, removed),
         "rtn-searched": lambda: rtn_quantize(W, grid, removed, importance=H.diagonal()),
         "gptq-searched-shrunk": lambda: gptq_quantize(W, H, grid, removed, search=True,
                                                       shrink=0.75)}[method]()
    name, data = pack(q)
    assert name == kind
    got = dequantize(data, getattr(GGMLQuantizationType, kind)).reshape(W.shape)
    np.testing.assert_array_equal(got, q.weight().float().numpy())
    assert (got[removed.numpy()] == 0).all()
    assert data.nbytes * 8 == bits_per_weight(grid) * W.numel()


@pytest.mark.parametrize("kind", ["Q4_0", "Q5_0", "Q8_0"])
def test_legacy_blocks_equal_gguf_reference_quantizer(kind):
    """RTN codes on the 32-weight grids are byte for byte what gguf's quantizer writes."""
    from gguf import GGMLQuantizationType, quantize

    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    q = rtn_quantize(W, GGML_GRIDS[kind])
    expected = quantize(q.weight().float().numpy(), getattr(GGMLQuantizationType, kind))
    np.testing.assert_array_equal(pack(q)[1], expected)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_kquant_scales_are_small_integers_of_the_super_scale(kind):
    W, removed, _, _ = pruned_layer()
    q = rtn_quantize(W, GGML_GRIDS[kind], removed)
    D = q.supers[..., 0].double().repeat_interleave(256 // q.grid.group_size, dim=1)
    s = q.scales.double() / D
    assert torch.equal(s, s.round())
    assert torch.equal(q.supers.half().float(), q.supers)  # float16 D and Dmin
    if kind == "Q6_K":
        assert s.min() >= -128 and s.max() <= 127
        return
    assert s.min() >= 1 and s.max() <= 63
    Dmin = q.supers[..., 1].double().repeat_interleave(8, dim=1)
    m = q.zeros.double() * q.scales.double() / Dmin  # Dmin m = D s z: zero on the grid
    assert torch.equal(m, m.round()) and m.min() >= 0 and m.max() <= 63
    r = (q.supers[..., 1] / q.supers[..., 0]).double()
    assert torch.equal(torch.log2(r), torch.log2(r).round())  # a power of two, exact


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_kquant_importance_weighs_the_group_choice(kind):
    """With an importance the sub-scale (and Q4_K's zero point) of least weighted rounding
    error is chosen among the same candidates: never worse by that measure than the
    unweighted choice, better overall, and still on the packable grid."""
    W, removed, _, H = pruned_layer(seed=2)
    grid = GGML_GRIDS[kind]
    g = grid.group_size
    groups = W.reshape(-1, g)
    supers = super_scales(W.reshape(-1, 256), grid).repeat_interleave(256 // g, dim=0)
    h = torch.rand(groups.shape, generator=torch.Generator().manual_seed(5),
                   dtype=torch.float64) ** 4

    def weighted_error(d, z):
        lo, hi = grid.code_range
        q = torch.clamp(torch.round(groups / d[:, None]) + z[:, None], lo, hi)
        return (h * ((q - z[:, None]) * d[:, None] - groups).square()).sum(dim=1)

    plain = weighted_error(*kquant_group_scales(groups, grid, supers))
    weighted = weighted_error(*kquant_group_scales(groups, grid, supers, h))
    assert (weighted <= plain + 1e-15).all() and weighted.sum() < 0.99 * plain.sum()


def test_q4_k_group_search_is_the_best_valid_pair_by_brute_force():
    """Among (z, s) within 2 and 4 of the group's ideal and (0, ideal s), the search returns
    the pair of least squared rounding error that keeps zero on the grid."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 256, generator=g, dtype=torch.float64) * 0.1 + 0.03
    w[:, :32] = w[:, :32].abs()  # a group with no negative weights (z = 0)
    grid = GGML_GRIDS["Q4_K"]
    supers = super_scales(w, grid)
    groups = w.reshape(-1, 32)
    per_group = supers.repeat_interleave(8, dim=0)
    d, z = kquant_group_scales(groups, grid, per_group)
    for i, x in enumerate(groups):
        D, Dmin = per_group[i].tolist()
        r = Dmin / D
        lo, hi = min(x.min().item(), 0), max(x.max().item(), 0)
        s0 = min(max(round((hi - lo) / 15 / D), 1), 63)
        z0 = min(max(round(-lo / (D * s0)), 0), 15)
        best = None
        pairs = [(z0 + a, s0 + b) for a in range(-2, 3) for b in range(-4, 5)] + [(0, s0)]
        for zc, sc in pairs:
            if not (0 <= zc <= 15 and 1 <= sc <= 63 and (zc * sc) % r == 0
                    and zc * sc <= 63 * r):
                continue
            codes = torch.clamp(torch.round(x / (D * sc)) + zc, 0, 15)
            err = ((codes - zc) * D * sc - x).square().sum().item()
            if best is None or err < best[0] - 1e-15:
                best = (err, D * sc, zc)
        got = ((torch.clamp(torch.round(x / d[i]) + z[i], 0, 15) - z[i]) * d[i] - x)
        assert got.square().sum().item() == pytest.approx(best[0], rel=1e-12, abs=1e-18)


def test_q4_k_beats_q4_0_at_the_same_size():
    """Q4_K (asymmetric, 6-bit scales and mins) and Q4_0 both store 4.5 bits per weight; on
    skewed groups the asymmetric grid rounds better."""
    W, removed, _, _ = pruned_layer()
    err = {k: (rtn_quantize(W, GGML_GRIDS[k], removed).weight() - W).square().sum()
           for k in ("Q4_0", "Q4_K")}
    assert bits_per_weight(GGML_GRIDS["Q4_0"]) == bits_per_weight(GGML_GRIDS["Q4_K"]) == 4.5
    assert err["Q4_K"] < err["Q4_0"]


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K", "Q5_0"])
def test_gptq_beats_rtn_on_llama_cpp_grids(kind):
    W, removed, X, H = pruned_layer()
    grid = GGML_GRIDS[kind]
    out = {m: ((X @ (W - q.weight()).T) ** 2).sum()
           for m, q in (("rtn", rtn_quantize(W, grid, removed)),
                        ("gptq", gptq_quantize(W, H, grid, removed)))}
    assert out["gptq"] < 0.9 * out["rtn"]


def test_grids_off_llama_cpp_blocks_are_refused():
    with pytest.raises(SurgeonError, match="super-block grids"):
        rtn_quantize(torch.randn(4, 256), Grid(4, 32, False, 128))
    with pytest.raises(SurgeonError, match="does not divide"):
        rtn_quantize(torch.randn(4, 96), GGML_GRIDS["Q4_K"])


def smollm2_shaped():
    """SmolLM2-135M's shapes (30 layers, rows of 576 and 1536, tied head) on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      tie_word_embeddings=True)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def test_q4_k_m_mixture_follows_llama_quantize():
    """llama.cpp's rules written out: rows of 576 cannot hold 256-weight super-blocks (Q4_K ->
    Q5_0, Q6_K -> Q8_0); ffn_down (1536) keeps Q4_K, Q6_K where use_more_bits picks the layer."""
    types = tensor_types(smollm2_shaped(), "Q4_K_M")
    more = [i for i in range(30) if use_more_bits(i, 30)]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    for i in range(30):
        layer = f"model.layers.{i}"
        assert types[f"{layer}.mlp.down_proj"] == ("Q6_K" if i in more else "Q4_K")
        assert types[f"{layer}.self_attn.v_proj"] == ("Q8_0" if i in more else "Q5_0")
        for kind in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj",
                     "mlp.up_proj"):
            assert types[f"{layer}.{kind}"] == "Q5_0"
    assert types["model.embed_tokens"] == "Q8_0" and "lm_head" not in types
    assert set(tensor_types(smollm2_shaped(), "Q4_0").values()) == {"Q4_0", "Q8_0"}
    with pytest.raises(SurgeonError, match="unknown GGUF file type"):
        tensor_types(smollm2_shaped(), "Q3_K_S")
