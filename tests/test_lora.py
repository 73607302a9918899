"""LoRA corrections: exact sparsity after merge, masked training, a plain model back."""

import pytest
import torch
import torch.nn.functional as F

from helpers import evaluate_loss, prune_randomly, random_windows, tiny_model
from surgeon.errors import SurgeonError
from surgeon.lora import ADAPTER, _AdapterMask, lora_correct
from surgeon.models import decoder_linears


def no_peft(model):
    return not any(type(m).__module__.startswith("peft") for m in model.modules())


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_sparsity_exact_and_model_plain(arch):
    model = tiny_model(arch)
    masks = prune_randomly(model)
    names = list(masks)
    # a zero the mask does not list counts as removed; a listed element that is not zero goes
    extra = names[1]
    model.get_submodule(extra).weight.data[0, :3] = 0
    expected = {n: m.clone() for n, m in masks.items()}
    expected[extra][0, :3] = True
    masks[names[2]][1, 1] = True
    model.get_submodule(names[2]).weight.data[1, 1] = 0.5
    expected[names[2]][1, 1] = True

    model.train()
    model.get_submodule(names[0]).weight.requires_grad_(False)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cls = type(model)

    stats = lora_correct(model, random_windows(4, 16), masks, rank=4, steps=5, lr=1e-2,
                         progress=False)

    assert type(model) is cls and no_peft(model)
    assert list(model.state_dict()) == list(before)
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    for name, layer in decoder_linears(model).items():
        w = layer.weight.detach()
        assert torch.equal(w == 0, expected[name]), name
        kept = ~expected[name]
        assert not torch.equal(w[kept], before[f"{name}.weight"][kept]), name
    assert stats["steps"] == 5 and stats["trainable_params"] > 0
    # parameters outside the decoder Linears are untouched
    for key, value in model.state_dict().items():
        if not any(key == f"{n}.weight" for n in masks):
            assert torch.equal(value, before[key]), key


def test_loss_decreases():
    model = tiny_model("llama")
    masks = prune_randomly(model)
    windows = random_windows(3, 24, seed=1)
    loss_before = evaluate_loss(model, windows)
    stats = lora_correct(model, windows, masks, steps=30, lr=1e-2, progress=False)
    assert stats["final_loss"] < stats["initial_loss"]
    assert evaluate_loss(model, windows) < loss_before


def test_deterministic():
    weights = []
    for _ in range(2):
        model = tiny_model("opt")
        masks = prune_randomly(model)
        lora_correct(model, random_windows(4, 16), masks, steps=4, lr=1e-2, batch_size=2,
                     progress=False)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_removed_row_and_column_not_revived():
    model = tiny_model("llama")
    up, down = "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"
    masks = {n: torch.zeros_like(l.weight, dtype=torch.bool)
             for n, l in decoder_linears(model).items()}
    masks[up][3] = True
    masks[down][:, 5] = True
    with torch.no_grad():
        model.get_submodule(up).weight[3] = 0
        model.get_submodule(down).weight[:, 5] = 0
    lora_correct(model, random_windows(2, 16), masks, steps=10, lr=0.5, progress=False)
    assert torch.all(model.get_submodule(up).weight[3] == 0)
    assert torch.all(model.get_submodule(down).weight[:, 5] == 0)
    assert (model.get_submodule(up).weight == 0).sum() == model.config.hidden_size


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft asks is_gradient_checkpointing
def test_training_forward_is_masked_elementwise():
    """During training a layer computes base(x) + x (s B A * keep)^T, on every element."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    name = "model.layers.0.self_attn.q_proj"
    layer = model.get_submodule(name)
    removed = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    removed[2] = True  # a whole row as well
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[name]))
    module = peft_model.base_model.model.get_submodule(name)
    with torch.no_grad():
        module.lora_B[ADAPTER].weight.normal_()
    mask = _AdapterMask(module, removed)
    x = torch.randn(3, layer.in_features)
    a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
    delta = (b @ a) * module.scaling[ADAPTER] * ~removed
    torch.testing.assert_close(module(x), F.linear(x, layer.weight + delta))
    mask.remove()


def test_bad_mask_rejected():
    model = tiny_model("llama")
    with pytest.raises(SurgeonError, match="shape"):
        lora_correct(model, random_windows(1, 8), {"model.layers.0.mlp.up_proj":
                                                   torch.zeros(2, 2, dtype=torch.bool)})
    with pytest.raises(SurgeonError, match="not decoder Linears"):
        lora_correct(model, random_windows(1, 8), {"lm_head": torch.zeros(1, dtype=torch.bool)})


def test_failed_training_leaves_plain_unchanged_model():
    model = tiny_model("opt")
    masks = prune_randomly(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = torch.full((1, 8), 10**6)  # token ids beyond the vocabulary
    with pytest.raises(IndexError):
        lora_correct(model, bad, masks, steps=2, progress=False)
    assert no_peft(model) and not model.training
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
