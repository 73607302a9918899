"""Quantization grids, RTN and GPTQ: llama.cpp-compatible grids, zeros kept, GPTQ beats RTN."""

import numpy as np
import pytest
import torch

from surgeon.errors import SurgeonError
from surgeon.quantize import Grid, gptq_quantize, rtn_quantize


def layer(rows=16, cols=64, tokens=512, seed=0):
    """Weights and correlated inputs X (tokens x cols); H = X^T X / tokens."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ (torch.eye(cols) + mix)
    return W, X, X.T @ X / tokens


def output_error(W, Q, X):
    return ((X @ (W - Q).T) ** 2).sum().item()


@pytest.mark.parametrize("grid", [Grid(4, 32, True), Grid(8, 32, True), Grid(4, 16, False),
                                  Grid(3, 64, False)])
def test_rtn_is_nearest_on_the_grid(grid):
    W, _, _ = layer()
    q = rtn_quantize(W, grid)
    lo, hi = grid.code_range
    assert int(q.codes.min()) >= lo and int(q.codes.max()) <= hi
    assert torch.equal(q.scales.half().float(), q.scales)  # float16 scales
    Q = q.weight()
    g = grid.group_size
    d = q.scales.double().repeat_interleave(g, dim=1)
    z = q.zeros.double().repeat_interleave(g, dim=1)
    # brute force: every code of the range, pick the nearest
    candidates = torch.arange(lo, hi + 1, dtype=torch.float64)
    values = (candidates[None, None, :] - z[..., None]) * d[..., None]
    best = values.gather(2, (values - W[..., None]).abs().argmin(dim=2, keepdim=True))[..., 0]
    assert torch.allclose((Q - W).abs(), (best - W).abs(), atol=1e-12)


@pytest.mark.parametrize("qtype,grid", [("Q4_0", Grid(4, 32, True)), ("Q8_0", Grid(8, 32, True))])
def test_symmetric_grids_are_llama_cpp_blocks(qtype, grid):
    """Requantizing our dequantized weights with gguf's reference code changes nothing."""
    from gguf import GGMLQuantizationType, dequantize, quantize

    W, _, _ = layer()
    Q = rtn_quantize(W, grid).weight().float().numpy()
    kind = getattr(GGMLQuantizationType, qtype)
    back = dequantize(quantize(Q, kind), kind)
    np.testing.assert_array_equal(back, Q)


@pytest.mark.parametrize("grid", [Grid(4, 32, True), Grid(4, 16, False), Grid(8, 32, True)])
def test_gptq_reduces_output_error_versus_rtn(grid):
    W, X, H = layer()
    rtn = rtn_quantize(W, grid).weight()
    gptq = gptq_quantize(W, H, grid).weight()
    assert output_error(W, gptq, X) < 0.8 * output_error(W, rtn, X)


def test_gptq_single_group_column_by_column_matches_definition():
    """With H = I there is no error feedback: GPTQ equals RTN."""
    W, _, _ = layer()
    grid = Grid(4, 32, True)
    gptq = gptq_quantize(W, torch.eye(W.shape[1], dtype=torch.float64), grid, damp=0.0)
    rtn = rtn_quantize(W, grid)
    assert torch.equal(gptq.codes, rtn.codes) and torch.equal(gptq.scales, rtn.scales)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("grid", [Grid(4, 32, True), Grid(4, 32, False)])
def test_zeros_stay_zeros(method, grid):
    W, _, H = layer()
    removed = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    W = W.masked_fill(removed, 0)
    q = rtn_quantize(W, grid, removed) if method == "rtn" else gptq_quantize(W, H, grid, removed)
    Q = q.weight()
    assert torch.equal(Q[removed], torch.zeros(int(removed.sum()), dtype=Q.dtype))


def test_bad_grids_are_refused():
    W, _, _ = layer(cols=48)
    with pytest.raises(SurgeonError, match="does not divide"):
        rtn_quantize(W, Grid(4, 32, True))
    with pytest.raises(SurgeonError, match="Q4_0, Q5_0 and Q8_0"):
        rtn_quantize(W, Grid(3, 16, True))


def weighted_error(W, d, h, levels):
    """sum_j h_j (w_j - d q_j)^2 per row, q the nearest code of d."""
    q = torch.clamp(torch.round(W / d[:, None]), -levels, levels - 1)
    return (h * (W - q * d[:, None]) ** 2).sum(dim=1)


@pytest.mark.parametrize("levels", [8, 16])
def test_searched_scale_is_the_best_candidate(levels):
    """Brute force over llama.cpp's candidates: codes of m / -(levels + k/10), then their
    weighted least-squares scale; the search returns the candidate of least error, which
    is never worse than the largest weight's scale."""
    from surgeon.quantize import SEARCH_STEPS, searched_scale, signed_max_scale

    g = torch.Generator().manual_seed(3)
    W = torch.randn(64, 32, generator=g, dtype=torch.float64)
    h = torch.rand(64, 32, generator=g, dtype=torch.float64)
    d = searched_scale(W, h, levels)
    m = -signed_max_scale(W, levels) * levels  # signed largest weight
    for r in range(len(W)):
        errors = []
        for k in SEARCH_STEPS:
            q = torch.clamp(torch.round(W[r] * -(levels + k / 10) / m[r]), -levels, levels - 1)
            s = (h[r] * W[r] * q).sum() / (h[r] * q * q).sum()
            errors.append(((h[r] * (W[r] - s * q) ** 2).sum(), s))
        assert torch.isclose(d[r], min(errors)[1])
    absmax = weighted_error(W, signed_max_scale(W, levels), h, levels)
    assert (weighted_error(W, d, h, levels) <= absmax + 1e-12).all()
    assert weighted_error(W, d, h, levels).sum() < 0.95 * absmax.sum()


def test_searched_scale_follows_the_importance():
    """One important column: its weight is rounded (nearly) exactly, whatever the others."""
    from surgeon.quantize import searched_scale

    W = torch.tensor([[1.0, 0.37, -0.2, 0.9] * 8], dtype=torch.float64)
    h = torch.full_like(W, 1e-6)
    h[0, 1] = 1.0
    d = searched_scale(W, h, 8)
    assert abs(W[0, 1] - torch.round(W[0, 1] / d) * d) < 1e-3


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_scale_search_lowers_the_output_error_and_keeps_the_grid(method):
    from surgeon.quantize import quantize_codes

    W, X, H = layer(rows=64, cols=128)
    removed = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    W = W.masked_fill(removed, 0)
    grid = Grid(4, 32, True)
    if method == "rtn":
        plain = rtn_quantize(W, grid, removed)
        searched = rtn_quantize(W, grid, removed, importance=H.diagonal())
    else:
        plain = gptq_quantize(W, H, grid, removed)
        searched = gptq_quantize(W, H, grid, removed, search=True)
    assert output_error(W, searched.weight(), X) < output_error(W, plain.weight(), X)
    Q = searched.weight()
    assert torch.equal(Q[removed], torch.zeros(int(removed.sum()), dtype=Q.dtype))
    assert torch.equal(searched.scales.half().float(), searched.scales)
    lo, hi = grid.code_range
    assert int(searched.codes.min()) >= lo and int(searched.codes.max()) <= hi
    if method == "rtn":  # codes are the nearest of their (searched) scale
        d = searched.scales.double().repeat_interleave(32, dim=1)
        zero = torch.zeros_like(d)
        assert torch.equal(searched.codes.double(),
                           quantize_codes(W, d, zero, grid, removed))


def test_scale_search_needs_the_curvature():
    from transformers import LlamaConfig, LlamaForCausalLM

    from surgeon.quantize import quantize_model

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2))
    removed = {n: torch.zeros_like(m.weight, dtype=torch.bool)
               for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with pytest.raises(SurgeonError, match="scale search needs the curvature"):
        quantize_model(model, "rtn", Grid(4, 32, True), removed, scale_search=True,
                       progress=False)


def test_gptq_shrink_spans_gptq_to_searched_rtn():
    """shrink 0 is plain GPTQ; shrink 1 leaves H diagonal, so there is no error feedback and
    GPTQ with the scale search is RTN with the search weighted by diag(H); between the two
    the layer's output error on the calibration inputs lies between theirs."""
    W, X, H = layer(rows=32, cols=128)
    grid = Grid(4, 32, True)
    plain = gptq_quantize(W, H, grid, search=True)
    assert torch.equal(gptq_quantize(W, H, grid, search=True, shrink=0.0).codes, plain.codes)
    full = gptq_quantize(W, H, grid, search=True, shrink=1.0, damp=0.0)
    rtn = rtn_quantize(W, grid, importance=H.diagonal())
    assert torch.equal(full.codes, rtn.codes) and torch.equal(full.scales, rtn.scales)
    half = gptq_quantize(W, H, grid, search=True, shrink=0.5)
    errors = [output_error(W, q.weight(), X) for q in (plain, half, full)]
    assert errors[0] < errors[1] < errors[2]
    with pytest.raises(SurgeonError, match="shrink must be in"):
        gptq_quantize(W, H, grid, shrink=1.5)


def test_schema_default_shrink_is_the_librarys():
    import yaml

    from helpers import REPO
    from surgeon.quantize import GPTQ_SHRINK

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    entry = schema["properties"]["quantization"]["additionalProperties"]["properties"]
    assert entry["shrink"]["default"] == GPTQ_SHRINK


def test_gptq_settings_per_layer_are_each_layers_own():
    """quantize_model's damp and shrink given per layer (as for a llama.cpp type mixture):
    every layer gets the codes gptq_quantize gives it with its own values."""
    from helpers import random_windows, tiny_model
    from test_gguf_export import Factors

    from surgeon.curvature import estimate_kfac
    from surgeon.models import decoder_linears
    from surgeon.quantize import quantize_model

    model = tiny_model("llama")
    layers = decoder_linears(model)
    factors, _ = estimate_kfac(model, random_windows(4, 32), progress=False)
    grid = Grid(4, 32, True)
    removed = {n: torch.zeros_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
    names = sorted(layers)
    damp = {n: (0.01, 0.5)[i % 2] for i, n in enumerate(names)}
    shrink = {n: (0.75, 0.0)[i % 2] for i, n in enumerate(names)}
    expected = {n: gptq_quantize(layers[n].weight.detach().clone(), factors[n][0], grid,
                                 removed[n], damp[n], shrink=shrink[n]).codes for n in names}
    uniform = gptq_quantize(layers[names[1]].weight.detach().clone(), factors[names[1]][0],
                            grid, removed[names[1]], 0.01, shrink=0.75).codes
    assert not torch.equal(uniform, expected[names[1]])  # the settings matter here
    codes = quantize_model(model, "gptq", grid, removed, Factors(factors), damp=damp,
                           shrink=shrink, progress=False)
    for n in names:
        assert torch.equal(codes[n].codes, expected[n]), n
