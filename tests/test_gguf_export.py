"""GGUF export: gguf's reader gets back exactly the quantized weights; transformers loads it."""

import numpy as np
import pytest
import torch

from helpers import random_windows, tiny_model
from surgeon.curvature import estimate_kfac
from surgeon.errors import SurgeonError
from surgeon.gguf_export import export_gguf, gguf_name, pack_blocks, rope_permute
from surgeon.models import decoder_linears
from surgeon.quantize import Grid, quantize_embeddings, quantize_model, rtn_quantize


class Factors:
    """The open-curvature-file interface quantize_model reads A factors through."""

    def __init__(self, factors):
        self.factors = factors
        self.filename = "in memory"

    def __contains__(self, name):
        return name in self.factors

    def __getitem__(self, name):
        A, G = self.factors[name]
        return {"A": _Dataset(A), "G": _Dataset(G)}


class _Dataset:
    def __init__(self, t):
        self.t = t

    def __getitem__(self, key):
        return self.t.numpy()


def quantized_tiny(bits, method="rtn", tied=False):
    """A tiny Llama quantized in place on the Q4_0/Q8_0 grid, as the quantize stage does it
    (embedding and untied head to Q8_0), and its codes."""
    model = tiny_model("llama")
    if tied:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    curvature = None
    if method == "gptq":
        factors, _ = estimate_kfac(model, random_windows(4, 32), progress=False)
        curvature = Factors(factors)
    codes = quantize_model(model, method, Grid(bits, 32, True), removed, curvature,
                           progress=False)
    quantize_embeddings(model)
    return model, codes


@pytest.mark.parametrize("bits", [4, 8])
def test_blocks_are_ggml_blocks(bits):
    """For RTN codes, our packing equals gguf's reference quantizer byte for byte."""
    from gguf import GGMLQuantizationType, quantize

    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    q = rtn_quantize(W, Grid(bits, 32, True))
    kind = GGMLQuantizationType.Q4_0 if bits == 4 else GGMLQuantizationType.Q8_0
    expected = quantize(q.weight().float().numpy(), kind)
    np.testing.assert_array_equal(pack_blocks(q.codes, q.scales, bits), expected)


@pytest.mark.parametrize("bits,method", [(4, "rtn"), (8, "rtn"), (4, "gptq")])
def test_reader_dequantizes_to_the_quantized_weights(tmp_path, tokenizer, bits, method):
    from gguf import GGUFReader, dequantize

    model, codes = quantized_tiny(bits, method)
    path = tmp_path / "m.gguf"
    info = export_gguf(model, tokenizer, codes, path)
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
    # the embedding and the untied head: Q8_0 blocks holding exactly the evaluated tables
    for key, table in (("token_embd.weight", model.model.embed_tokens),
                       ("output.weight", model.lm_head)):
        assert tensors[key].tensor_type.name == "Q8_0"
        got = dequantize(tensors[key].data, tensors[key].tensor_type)
        np.testing.assert_array_equal(got.reshape(table.weight.shape), table.weight.detach())
    assert info["weights"]["f16"] == 0


def test_a_tied_head_is_stored_once_as_q8_0(tmp_path, tokenizer):
    from gguf import GGUFReader

    model, codes = quantized_tiny(4, tied=True)
    untied, untied_codes = quantized_tiny(4)
    export_gguf(model, tokenizer, codes, tmp_path / "tied.gguf")
    export_gguf(untied, tokenizer, untied_codes, tmp_path / "untied.gguf")
    tensors = {t.name: t for t in GGUFReader(str(tmp_path / "tied.gguf")).tensors}
    assert "output.weight" not in tensors and tensors["token_embd.weight"].tensor_type.name == "Q8_0"
    table = model.model.embed_tokens.weight
    # Q8_0: 34 bytes per 32 weights, against 64 as F16
    assert tensors["token_embd.weight"].n_bytes == table.numel() // 32 * 34
    assert (tmp_path / "untied.gguf").stat().st_size - (tmp_path / "tied.gguf").stat().st_size \
        >= table.numel() // 32 * 34


def test_transformers_loads_the_file(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model, codes = quantized_tiny(4, "gptq")
    export_gguf(model, tokenizer, codes, tmp_path / "m.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32)
    for name, layer in decoder_linears(model).items():
        assert torch.equal(loaded.get_submodule(name).weight, layer.weight), name
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)  # Q8_0 both
    x = random_windows(1, 16)
    with torch.no_grad():  # the norms are exact; only summation order may differ
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


def test_other_grids_are_refused(tmp_path, tokenizer):
    model = tiny_model("llama")
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    codes = quantize_model(model, "rtn", Grid(4, 16, True), removed, progress=False)
    with pytest.raises(SurgeonError, match="one Q4_0/Q8_0 grid"):
        export_gguf(model, tokenizer, codes, tmp_path / "m.gguf")


def test_cli_refuses_models_off_the_llama_cpp_grid(tmp_path, llama_dir):
    import subprocess
    import sys

    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "surgeon", "export-gguf", "--model", str(llama_dir),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "is not a quantized model" in r.stderr.splitlines()[-1]
    assert not out.exists() and list(tmp_path.iterdir()) == []
