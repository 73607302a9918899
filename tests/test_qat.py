"""Quantization-aware LoRA: fixed grid, straight-through gradients, zeros kept, re-quantized."""

import torch

from helpers import prune_randomly, random_windows, tiny_model
from surgeon.lora import LoraSettings, lora_train
from surgeon.models import decoder_linears
from surgeon.qat import fake_quantize, requantize
from surgeon.quantize import Grid, rtn_quantize


def test_fake_quantize_is_the_grid_forward_and_identity_backward():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, generator=g)
    removed = torch.rand(4, 64, generator=g) < 0.3
    q = rtn_quantize(w.masked_fill(removed, 0), Grid(4, 32, True), removed)
    moved = (w + 0.05 * torch.randn(4, 64, generator=g)).requires_grad_(True)
    out = fake_quantize(moved, q, removed)
    requantized = requantize(moved, q, removed)
    torch.testing.assert_close(out.detach(), requantized.weight().float())
    assert torch.equal(requantized.scales, q.scales) and torch.all(out[removed] == 0)
    (out * torch.arange(64.0)).sum().backward()
    torch.testing.assert_close(moved.grad, torch.arange(64.0).expand(4, 64))


def test_qat_keeps_grid_and_zeros_and_changes_codes():
    model = tiny_model("llama")
    masks = prune_randomly(model, 0.5)
    grid = Grid(4, 32, False)
    codes = {}
    with torch.no_grad():
        for name, layer in decoder_linears(model).items():
            codes[name] = rtn_quantize(layer.weight, grid, masks[name])
            layer.weight.copy_(codes[name].weight())
    rounded_to_zero = sum(int(((layer.weight == 0) & ~masks[n]).sum())
                          for n, layer in decoder_linears(model).items())
    assert rounded_to_zero > 0  # weights that QAT may move off zero
    losses = lora_train(model, random_windows(4, 24, seed=1), masks,
                        LoraSettings(rank=4, steps=20, lr=1e-2), progress=False,
                        quantized=codes)
    assert sum(losses[-4:]) < sum(losses[:4])
    changed = 0
    for name, layer in decoder_linears(model).items():
        new = requantize(layer.weight, codes[name], masks[name])
        assert torch.equal(new.scales, codes[name].scales)
        assert torch.equal(new.zeros, codes[name].zeros)
        lo, hi = grid.code_range
        assert new.codes.min() >= lo and new.codes.max() <= hi
        zero_code = codes[name].zeros.repeat_interleave(32, dim=1)
        assert torch.equal(new.codes[masks[name]], zero_code[masks[name]])
        assert torch.all(new.weight()[masks[name]] == 0)
        changed += int((new.codes != codes[name].codes).sum())
    assert changed > 0
