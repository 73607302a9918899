"""K-FAC factors equal a direct computation from per-token inputs and output gradients."""

import pytest
import torch

from helpers import direct_factors, random_windows, tiny_model
from surgeon import curvature
from surgeon.curvature import estimate_kfac
from surgeon.models import decoder_linears


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_kfac_equals_direct_computation(arch):
    model = tiny_model(arch)
    windows = random_windows(3, 16)
    factors, acc = estimate_kfac(model, windows, progress=False)
    expected = direct_factors(tiny_model(arch), windows)
    assert set(factors) == set(expected)
    n_linear = 7 if arch == "llama" else 6
    assert len(factors) == 2 * n_linear
    for n, (A, G) in factors.items():
        A_ref, G_ref = expected[n]
        assert torch.allclose(A.double(), A_ref, rtol=1e-4, atol=1e-5 * A_ref.abs().max()), n
        assert torch.allclose(G.double(), G_ref, rtol=1e-4, atol=1e-5 * G_ref.abs().max()), n
        assert acc.tokens[n] == 3 * 16
    # no parameter ever received a .grad buffer
    assert all(p.grad is None for p in model.parameters())


def test_sampled_fisher_differs_from_empirical_but_keeps_A():
    windows = random_windows(2, 16)
    emp, _ = estimate_kfac(tiny_model("llama"), windows, fisher="empirical", progress=False)
    smp, _ = estimate_kfac(tiny_model("llama"), windows, fisher="sampled", progress=False)
    name = next(iter(emp))
    assert torch.allclose(emp[name][0], smp[name][0])
    assert not torch.allclose(emp[name][1], smp[name][1])


class Killed(Exception):
    pass


def die_at_window_call(monkeypatch, die_at: int) -> dict:
    """Make the `die_at`-th window's loss raise Killed (a job killed mid-estimate); the
    returned counter's "n" counts calls, "die_at" None lets every call through."""
    calls = {"n": 0, "die_at": die_at}
    real_loss = curvature.window_loss

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise Killed("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(curvature, "window_loss", dying_loss)
    return calls


def test_interrupted_estimation_resumes_from_checkpoint(tmp_path, monkeypatch):
    windows = random_windows(6, 16)
    full, _ = estimate_kfac(tiny_model("opt"), windows, progress=False)
    ckpt = tmp_path / "kfac.ckpt"
    calls = die_at_window_call(monkeypatch, 5)
    with pytest.raises(Killed):
        estimate_kfac(tiny_model("opt"), windows, checkpoint=ckpt, checkpoint_every=2,
                      fingerprint="f", progress=False)
    assert torch.load(ckpt, weights_only=False)["windows_done"] == 4
    calls["n"], calls["die_at"] = 0, None
    resumed, acc = estimate_kfac(tiny_model("opt"), windows, checkpoint=ckpt,
                                 checkpoint_every=2, fingerprint="f", progress=False)
    assert calls["n"] == 2  # only the two windows after the checkpoint were processed
    for n in full:
        assert torch.equal(full[n][0], resumed[n][0]) and torch.equal(full[n][1], resumed[n][1])
    # a checkpoint with another fingerprint (other model or data) is ignored
    calls["n"] = 0
    estimate_kfac(tiny_model("opt"), windows, checkpoint=ckpt, fingerprint="other",
                  progress=False)
    assert calls["n"] == 6


@pytest.mark.parametrize("arch,fisher", [("llama", "empirical"), ("opt", "sampled")])
def test_multi_pass_estimate_equals_one_pass_bit_for_bit(arch, fisher):
    windows = random_windows(3, 16)
    one, run1 = estimate_kfac(tiny_model(arch), windows, fisher=fisher, progress=False)
    layers = decoder_linears(tiny_model(arch))
    per_block = curvature.curvature_bytes({n: m for n, m in layers.items() if ".0." in n})
    passes = curvature.factor_passes(layers, per_block)
    assert len(passes) == 2 and all(curvature.block_of(n) == curvature.block_of(p[0])
                                    for p in passes for n in p)
    multi, run2 = estimate_kfac(tiny_model(arch), windows, fisher=fisher, progress=False,
                                max_factor_bytes=per_block)
    assert run2.passes == 2 and run1.passes == 1 and list(multi) == list(one)
    for n in one:
        assert torch.equal(one[n][0], multi[n][0]) and torch.equal(one[n][1], multi[n][1]), n
        assert run1.tokens[n] == run2.tokens[n]


def test_multi_pass_accumulates_only_its_own_blocks(monkeypatch):
    """Each pass's accumulator holds one block's factors: the device never holds them all."""
    sizes = []
    real_init = curvature.KFACAccumulator.__init__

    def spy(self, layers, device):
        real_init(self, layers, device)
        sizes.append(sorted({curvature.block_of(n) for n in layers}))

    monkeypatch.setattr(curvature.KFACAccumulator, "__init__", spy)
    model = tiny_model("llama")
    one_block = curvature.curvature_bytes(
        {n: m for n, m in decoder_linears(model).items() if ".1." in n})
    estimate_kfac(model, random_windows(2, 8), progress=False, max_factor_bytes=one_block)
    assert sizes == [["model.layers.0"], ["model.layers.1"]]
    with pytest.raises(curvature.SurgeonError, match="do not fit"):
        estimate_kfac(model, random_windows(2, 8), progress=False, max_factor_bytes=one_block // 2)


def test_multi_pass_estimate_resumes_inside_its_second_pass(tmp_path, monkeypatch):
    windows = random_windows(4, 16)
    model_factors = decoder_linears(tiny_model("opt"))
    budget = curvature.curvature_bytes({n: m for n, m in model_factors.items() if ".0." in n})
    full, _ = estimate_kfac(tiny_model("opt"), windows, progress=False)
    ckpt = tmp_path / "kfac.ckpt"
    calls = die_at_window_call(monkeypatch, 7)  # pass 1: calls 1-4; pass 2 dies on its third
    with pytest.raises(Killed):
        estimate_kfac(tiny_model("opt"), windows, checkpoint=ckpt, checkpoint_every=2,
                      fingerprint="f", progress=False, max_factor_bytes=budget)
    state = torch.load(ckpt, weights_only=False)
    assert (state["pass"], state["windows_done"]) == (1, 2)
    assert curvature.finished_passes_file(ckpt).is_file()
    calls["n"], calls["die_at"] = 0, None
    resumed, run = estimate_kfac(tiny_model("opt"), windows, checkpoint=ckpt, checkpoint_every=2,
                                 fingerprint="f", progress=False, max_factor_bytes=budget)
    assert calls["n"] == 2  # the first pass and half the second were not redone
    for n in full:
        assert torch.equal(full[n][0], resumed[n][0]) and torch.equal(full[n][1], resumed[n][1])
        assert run.tokens[n] == 4 * 16
