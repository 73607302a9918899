"""GGUF export: gguf's reader gets back exactly the quantized weights; transformers loads it."""

import numpy as np
import pytest
import torch

from conftest import random_windows, tiny_model
from surgeon.gguf_export import export_gguf, gguf_name, rope_permute
from surgeon.models import decoder_linears
from surgeon.quantize import Grid, quantize_model


def quantized_tiny(bits):
    model = tiny_model("llama")
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    quantize_model(model, "rtn", Grid(bits, 32, True), removed, progress=False)
    return model


@pytest.mark.parametrize("bits", [4, 8])
def test_reader_dequantizes_to_the_quantized_weights(tmp_path, tokenizer, bits):
    from gguf import GGUFReader, dequantize

    model = quantized_tiny(bits)
    path = tmp_path / "m.gguf"
    info = export_gguf(model, tokenizer, bits, path)
    assert info["tensor_type"] == ("Q4_0" if bits == 4 else "Q8_0")
    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    heads = {"q_proj": 4, "k_proj": 2}
    for name, layer in decoder_linears(model).items():
        t = tensors[gguf_name(name + ".weight")]
        assert t.tensor_type.name == info["tensor_type"]
        expected = layer.weight.detach()
        kind = name.rsplit(".", 1)[-1]
        if kind in heads:
            expected = rope_permute(expected, heads[kind])
        got = dequantize(t.data, t.tensor_type).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected.numpy())


def test_transformers_loads_the_file(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model = quantized_tiny(4)
    export_gguf(model, tokenizer, 4, tmp_path / "m.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32)
    for name, layer in decoder_linears(model).items():
        assert torch.equal(loaded.get_submodule(name).weight, layer.weight), name
    x = random_windows(1, 16)
    with torch.no_grad():  # embeddings and head went through float16
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-2


def test_cli_refuses_models_off_the_llama_cpp_grid(tmp_path, llama_dir):
    import subprocess
    import sys

    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "surgeon", "export-gguf", "--model", str(llama_dir),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "is not a quantized model" in r.stderr.splitlines()[-1]
    assert not out.exists() and list(tmp_path.iterdir()) == []
