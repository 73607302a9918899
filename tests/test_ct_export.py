"""compressed-tensors export: the library's own decompression gives back exactly the quantized
weights, config.json declares pack-quantized group quantization (and 2:4 sparsity on request),
and transformers loads the folder."""

import json

import pytest
import torch

from helpers import random_windows, tiny_model
from surgeon.ct_export import export_compressed_tensors
from surgeon.errors import SurgeonError
from surgeon.models import decoder_linears
from surgeon.quantize import Grid, quantize_model

GRIDS = [Grid(4, 32, True), Grid(4, 32, False), Grid(8, 32, True), Grid(8, 32, False)]


def quantized_tiny(grid, removed_of=lambda w: w == 0):
    model = tiny_model("llama")
    removed = {n: removed_of(layer.weight) for n, layer in decoder_linears(model).items()}
    return model, quantize_model(model, "rtn", grid, removed, progress=False)


@pytest.fixture(scope="module", params=GRIDS,
                ids=lambda g: f"{g.bits}bit-{'sym' if g.symmetric else 'asym'}")
def exported(request, tmp_path_factory, tokenizer):
    grid = request.param
    model, quantized = quantized_tiny(grid)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("ct")
    info = export_compressed_tensors(model, tokenizer, quantized, out)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    return grid, model, quantized, out, info


def quant_config(out):
    return json.loads((out / "config.json").read_text())["quantization_config"]


def test_library_decompression_is_exact(exported):
    """ModelCompressor decompresses a fresh model loaded from the folder to Quantized.weight()."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config
    from safetensors.torch import load_file
    from transformers import CompressedTensorsConfig

    _, _, quantized, out, _ = exported
    compressor = ModelCompressor.from_compression_config(
        CompressedTensorsConfig.from_dict(quant_config(out)))
    fresh = tiny_model("llama", seed=1)
    apply_quantization_config(fresh, compressor.quantization_config)
    compressor.compress_model(fresh)  # the compressed layout: weight_packed, weight_scale, ...
    fresh.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    compressor.decompress_model(fresh)
    layers = decoder_linears(fresh)
    for name, q in quantized.items():
        assert torch.equal(layers[name].weight.double(), q.weight()), name


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`")
def test_transformers_dequantize_on_load(exported):
    """transformers' dequantize=True path decodes with the stored float16 scales in float16."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    _, _, quantized, out, _ = exported
    loaded = AutoModelForCausalLM.from_pretrained(
        out, quantization_config=CompressedTensorsConfig(dequantize=True))
    layers = decoder_linears(loaded)
    for name, q in quantized.items():
        assert torch.equal(layers[name].weight, q.weight().half().float()), name


def test_transformers_compressed_load_runs_the_quantized_model(exported):
    """Default load keeps the packed weights and decompresses them on the first forward."""
    from transformers import AutoModelForCausalLM

    grid, model, quantized, out, _ = exported
    if not grid.symmetric:
        pytest.skip("compressed-tensors 0.20 does not pack the zero point of meta-device "
                    "modules, so transformers cannot load asymmetric pack-quantized folders")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert decoder_linears(loaded)["model.layers.0.mlp.down_proj"].weight_packed.dtype \
        == torch.int32
    x = random_windows(2, 16)
    with torch.no_grad():
        got, want = loaded(x).logits, model(x).logits
    layers = decoder_linears(loaded)
    assert all(torch.equal(layers[n].weight.double(), q.weight()) for n, q in quantized.items())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_config_declares_group_pack_quantized(exported):
    grid, _, _, out, info = exported
    cfg = quant_config(out)
    assert cfg["quant_method"] == "compressed-tensors"
    assert cfg["format"] == "pack-quantized" == info["format"]
    assert cfg["quantization_status"] == "compressed"
    assert cfg["ignore"] == ["lm_head"]
    (group,) = cfg["config_groups"].values()
    assert group["targets"] == ["Linear"]
    w = group["weights"]
    assert (w["num_bits"], w["group_size"], w["strategy"], w["type"], w["symmetric"]) \
        == (grid.bits, grid.group_size, "group", "int", grid.symmetric)
    assert (info["bits"], info["group_size"]) == (grid.bits, grid.group_size)
    assert not cfg["sparsity_config"]


def test_packed_tensors_in_the_file(exported):
    from safetensors import safe_open

    grid, _, quantized, out, info = exported
    per_word = 32 // grid.bits
    stored_bits = 0
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        for name, q in quantized.items():
            R, C = q.codes.shape
            assert f"{name}.weight" not in keys
            packed = f.get_tensor(f"{name}.weight_packed")
            assert packed.dtype == torch.int32 and packed.shape == (R, C // per_word)
            scale = f.get_tensor(f"{name}.weight_scale")
            assert scale.dtype == torch.float16 and torch.equal(scale.float(), q.scales)
            assert f.get_tensor(f"{name}.weight_shape").tolist() == [R, C]
            stored_bits += R * C * grid.bits + R * C // grid.group_size * 16 + 2 * 64
            if grid.symmetric:
                assert f"{name}.weight_zero_point" not in keys
            else:
                zp = f.get_tensor(f"{name}.weight_zero_point")
                assert zp.dtype == torch.int32 and zp.shape == (R // per_word, C // grid.group_size)
                stored_bits += R * C // grid.group_size * grid.bits
    weights = sum(q.codes.numel() for q in quantized.values())
    assert info["bits_per_weight"] == pytest.approx(stored_bits / weights)
    assert info["weight_file_bytes"] == (out / "model.safetensors").stat().st_size


def two_of_four(w):
    """Prune the last two weights of every 4 consecutive inputs."""
    return (torch.arange(w.shape[1]) % 4 >= 2).expand_as(w)


def test_sparsity_2of4_metadata(tmp_path, tokenizer):
    from compressed_tensors.config import SparsityCompressionConfig
    from transformers import AutoModelForCausalLM

    model, quantized = quantized_tiny(Grid(4, 32, True), two_of_four)
    info = export_compressed_tensors(model, tokenizer, quantized, tmp_path, sparsity_2of4=True)
    assert info["sparsity_2of4"]
    sparsity = quant_config(tmp_path)["sparsity_config"]
    assert sparsity["sparsity_structure"] == "2:4" and sparsity["format"] == "dense"
    assert sparsity["targets"] == ["Linear"] and sparsity["ignore"] == ["lm_head"]
    assert sparsity["global_sparsity"] >= 0.5
    parsed = SparsityCompressionConfig.model_validate(sparsity)  # as vLLM parses it
    assert parsed.sparsity_structure == "2:4"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # config still loads
    x = random_windows(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=1e-6)


def test_sparsity_2of4_refuses_a_dense_model(tmp_path, tokenizer):
    model, quantized = quantized_tiny(Grid(4, 32, True))
    with pytest.raises(SurgeonError, match="not 2:4"):
        export_compressed_tensors(model, tokenizer, quantized, tmp_path, sparsity_2of4=True)


def test_gpt2_is_refused(tmp_path, tokenizer):
    """GPT-2's checkpoint layers are Conv1D: transformers' compressed-tensors loader would leave
    them randomly initialised, so no folder is written."""
    from helpers import family_model

    model = family_model("gpt2")
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    quantized = quantize_model(model, "rtn", Grid(4, 32, True), removed, progress=False)
    with pytest.raises(SurgeonError, match="compressed-tensors export of gpt2: .* Conv1D"):
        export_compressed_tensors(model, tokenizer, quantized, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
