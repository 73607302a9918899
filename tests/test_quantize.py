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
