"""GGUF export: gguf's reader gets back exactly the quantized weights; transformers loads it."""

import json

import numpy as np
import pytest
import torch

from helpers import random_windows, tiny_model
from surgeon.curvature import estimate_kfac
from surgeon.errors import SurgeonError
from surgeon.gguf_export import export_gguf, gguf_name, rope_permute
from surgeon.ggml_plan import file_type_grids
from surgeon.models import decoder_linears
from surgeon.quantize import Grid, quantize_embeddings, quantize_model


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


@pytest.mark.parametrize("bits,method", [(4, "rtn"), (8, "rtn"), (4, "gptq")])
def test_reader_dequantizes_to_the_quantized_weights(tmp_path, tokenizer, bits, method):
    from gguf import GGUFReader, dequantize

    model, codes = quantized_tiny(bits, method)
    path = tmp_path / "m.gguf"
    info = export_gguf(model, tokenizer, codes, path)
    assert info["file_type"] == ("Q4_0" if bits == 4 else "Q8_0")
    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    heads = {"q_proj": 4, "k_proj": 2}
    for name, layer in decoder_linears(model).items():
        t = tensors[gguf_name(name + ".weight")]
        assert t.tensor_type.name == info["file_type"]
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
    assert "F16" not in info["weights"]


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


def test_import_parses_the_file_once(tmp_path, tokenizer, monkeypatch):
    """import-model's GGUF load parses the file once (transformers alone: three times) and
    gives the model and tokenizer that transformers' own load gives."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgeon.models import load_source

    model, codes = quantized_tiny(4, "gptq")
    export_gguf(model, tokenizer, codes, tmp_path / "m.gguf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32)
    their_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    parsed, reader_class = [], gguf.GGUFReader

    def counting_reader(*args, **kwargs):
        parsed.append(args[0])
        return reader_class(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    ours, our_tokenizer = load_source(str(tmp_path / "m.gguf"))
    assert len(parsed) == 1
    assert gguf.GGUFReader is counting_reader  # the load's own patch is undone
    theirs_sd = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs_sd[name]), name
    text = "def f(x):\n    return x + 1"
    assert our_tokenizer(text).input_ids == their_tokenizer(text).input_ids


def test_other_grids_are_refused(tmp_path, tokenizer):
    model = tiny_model("llama")
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    codes = quantize_model(model, "rtn", Grid(4, 16, True), removed, progress=False)
    with pytest.raises(SurgeonError, match="llama.cpp block types"):
        export_gguf(model, tokenizer, codes, tmp_path / "m.gguf")


def test_cli_refuses_models_off_the_llama_cpp_grid(tmp_path, llama_dir):
    import subprocess
    import sys

    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "surgeon", "export-gguf", "--model", str(llama_dir),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "is not a quantized model" in r.stderr.splitlines()[-1]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def surgeon(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "surgeon", *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def q4_k_m_export(tmp_path_factory, tokenizer):
    """A tiny Llama with rows of 256 (attention, gate, up, the untied embedding and head) and
    of 96 (down_proj), half of its weights removed, GPTQ-quantized as Q4_K_M by the quantize
    stage and exported: every block type of the mixture appears."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import VOCAB, curvature_file, prune_randomly

    tmp = tmp_path_factory.mktemp("q4km")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = peaked_attention(LlamaForCausalLM(cfg).eval())
    prune_randomly(model, 0.5)
    model.save_pretrained(tmp / "pruned")
    tokenizer.save_pretrained(tmp / "pruned")
    curvature_file(model, tmp / "curvature.h5", random_windows(4, 32))
    surgeon("quantize", "--model", tmp / "pruned", "--method", "gptq", "--curvature",
            tmp / "curvature.h5", "--gguf-type", "Q4_K_M", "--out", tmp / "quantized")
    surgeon("export-gguf", "--model", tmp / "quantized", "--out", tmp / "model.gguf")
    return tmp


def test_q4_k_m_file_holds_the_evaluated_model_on_llama_quantize_types(q4_k_m_export):
    from gguf import GGUFReader, dequantize

    from surgeon.ggml_plan import tensor_types
    from surgeon.models import load_model

    model = load_model(q4_k_m_export / "quantized", "cpu")
    pruned = load_model(q4_k_m_export / "pruned", "cpu")
    tensors = {t.name: t for t in GGUFReader(str(q4_k_m_export / "model.gguf")).tensors}
    plan = tensor_types(model, "Q4_K_M")
    assert set(plan.values()) == {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}
    heads = {"q_proj": 4, "k_proj": 2}
    for name, kind in plan.items():
        t = tensors[gguf_name(name + ".weight")]
        assert t.tensor_type.name == kind, name
        expected = model.get_submodule(name).weight.detach()
        if name.rsplit(".", 1)[-1] in heads:
            expected = rope_permute(expected, heads[name.rsplit(".", 1)[-1]])
        got = dequantize(t.data, t.tensor_type).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected.numpy())
    for name, layer in decoder_linears(model).items():  # pruned weights stay exact zeros
        removed = decoder_linears(pruned)[name].weight == 0
        assert (layer.weight[removed] == 0).all()


def test_llama_cpp_scores_our_file_as_we_do(q4_k_m_export):
    """llama.cpp (llama-cpp-python, optional) gives our file the perplexity our evaluation gives
    the quantized model folder, within 1%; and its own quantizer picks the same type for every
    tensor (its F32 input written by our export)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp)")
    from gguf import GGUFReader

    from surgeon import llamacpp
    from surgeon.evaluate import perplexity
    from surgeon.models import load_model, load_tokenizer

    from surgeon.data import save_windows

    folder = q4_k_m_export / "quantized"
    windows = random_windows(4, 64, seed=3)
    save_windows(q4_k_m_export / "windows.safetensors", windows, {})
    surgeon("--threads", "1", "evaluate", "--model", folder, "--evaluation",
            q4_k_m_export / "windows.safetensors", "--exports", q4_k_m_export / "model.gguf",
            "--llama-cpp", "--out", q4_k_m_export / "eval.json")
    scores = json.loads((q4_k_m_export / "eval.json").read_text())
    assert abs(scores["ppl_llamacpp"] / scores["ppl"] - 1) < 0.01, scores
    # 4-bit K-quant weights meet 8-bit activations (Q8_K) in llama.cpp: measured 0.039
    assert_same_logits(q4_k_m_export / "model.gguf", load_model(folder, "cpu"), windows, 0.08)
    assert scores["ppl"] == pytest.approx(perplexity(load_model(folder, "cpu"), windows,
                                                     progress=False), rel=1e-9)

    dense = load_model(q4_k_m_export / "pruned", "cpu")
    export_gguf(dense, load_tokenizer(folder), {}, q4_k_m_export / "f32.gguf", tables={},
                file_type="F32")
    assert llamacpp.perplexity(q4_k_m_export / "f32.gguf", windows, threads=1) == \
        pytest.approx(perplexity(dense, windows, progress=False), rel=1e-3)
    llamacpp.quantize(q4_k_m_export / "f32.gguf", q4_k_m_export / "theirs.gguf", "Q4_K_M", 1)
    types = {t.name: t.tensor_type.name
             for t in GGUFReader(str(q4_k_m_export / "model.gguf")).tensors}
    assert types == {t.name: t.tensor_type.name
                     for t in GGUFReader(str(q4_k_m_export / "theirs.gguf")).tensors}


@pytest.mark.parametrize("family", ["llama-bias", "mistral", "qwen2", "qwen3"])
def test_other_families_export_as_llama_cpp_reads_them(family, tmp_path, tokenizer):
    """A Llama with attention biases, Mistral (as llama.cpp's llama), Qwen2 (q/k/v biases) and
    Qwen3 (q/k norms) on Q8_0: gguf's reader returns the quantized weights in the family's
    rotary layout (q/k weights and biases permuted for llama only), biases and norms;
    transformers' GGUF loader gives back those weights and the model's logits; llama.cpp,
    where installed, gives the file the model's logits."""
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from helpers import SMALL, family_model

    if family == "llama-bias":
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMALL, attention_bias=True,
                                             tie_word_embeddings=False)).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("proj.bias"):
                    p.normal_(0, 0.5)
    else:
        model = family_model(family)
    model = peaked_attention(model)
    path = q8_0_export(model, tokenizer, tmp_path / "m.gguf")
    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    llama = family in ("llama-bias", "mistral")
    assert bytes(arch.parts[arch.data[0]]).decode() == ("llama" if llama else family)
    tensors = {t.name: t for t in reader.tensors}
    heads = {"q_proj": 4, "k_proj": 2} if llama else {}
    for key, value in model.state_dict().items():
        t = tensors[gguf_name(key)]
        expected = value.detach()
        kind = key.rsplit(".", 2)[-2]
        if kind in heads:
            expected = rope_permute(expected, heads[kind])
        got = dequantize(t.data, t.tensor_type).reshape(expected.shape)
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=0)
    if family in ("qwen2", "llama-bias"):
        assert "blk.0.attn_q.bias" in tensors
    if family == "qwen3":
        assert "blk.1.attn_k_norm.weight" in tensors
    # transformers' GGUF loader: the model's weights (in transformers' layout again) and logits
    # (Mistral comes back as a Llama: llama.cpp's architecture of the file). Settings its
    # config mapping does not read from the file (which holds them for llama.cpp) are given:
    # llama's attention biases, Qwen3's head_dim (qwen3.attention.key_length)
    unread = ({"attention_bias": True} if family == "llama-bias" else
              {"head_dim": model.config.head_dim} if family == "qwen3" else {})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32, **unread).eval()
    theirs = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(theirs[key], value), key
    x = random_windows(2, 32, seed=6)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4
    try:
        from surgeon import llamacpp

        llamacpp.llama_cpp()
    except SurgeonError:
        return  # llama.cpp's own reading: tested where llama-cpp-python is installed
    windows = random_windows(2, 32, seed=5)
    assert_same_logits(path, model, windows)


def test_gpt2_exports_as_llama_cpp_reads_it(tmp_path, tokenizer):
    """GPT-2 on Q8_0 as llama.cpp's gpt2 architecture: every tensor has the name gguf's own
    GPT-2 map gives it (fused attn_qkv, position_embd, biases, LayerNorm biases), gguf's
    reader returns the exported weights exactly (the Linears in llama.cpp's (out, in) layout,
    the position embedding in F32), transformers' GGUF reader gives the model's logits, and
    llama.cpp, where installed, too."""
    import gguf
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM

    from helpers import family_model

    model = family_model("gpt2")
    path = q8_0_export(model, tokenizer, tmp_path / "m.gguf")
    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields[key]
        return f.parts[f.data[0]]

    assert bytes(field("general.architecture")).decode() == "gpt2"
    assert [int(field(f"gpt2.{k}")[0]) for k in ("context_length", "embedding_length",
                                                 "feed_forward_length", "attention.head_count",
                                                 "block_count")] == [1024, 32, 128, 4, 2]
    tensors = {t.name: t for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, 2)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    assert len(tensors) == len(state) == 28
    for key, value in state.items():
        assert gguf_name(key) == names.get_name(key, try_suffixes=(".weight", ".bias")), key
        t = tensors[gguf_name(key)]
        got = dequantize(t.data, t.tensor_type).reshape(value.shape)
        np.testing.assert_array_equal(got, value.numpy(), err_msg=key)
    assert tensors["blk.0.attn_qkv.weight"].tensor_type.name == "Q8_0"
    assert tensors["position_embd.weight"].tensor_type.name == "F32"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32)
    x = random_windows(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    try:
        from surgeon import llamacpp

        llamacpp.llama_cpp()
    except SurgeonError:
        return  # llama.cpp's own reading: tested where llama-cpp-python is installed
    assert_same_logits(path, peaked_attention(model), random_windows(2, 32, seed=5))


def test_gpt2_q4_k_m_is_llama_quantizes_plan_and_reads_back(tmp_path, tokenizer):
    """GPT-2 at Q4_K_M: the fused attn_qkv is llama-quantize's attn_v (Q6_K in the layers
    use_more_bits picks, of 2 the second), mlp.c_proj its ffn_down (96-wide rows: Q5_0 / Q8_0),
    the tied embedding its output (Q6_K); gguf's reader returns our RTN weights exactly, and
    llama-quantize, where installed, picks the same type for every tensor of our F32 file."""
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM, GPT2Config

    from helpers import VOCAB
    from surgeon.ggml_plan import tensor_types
    from surgeon.models import linears_for_conv1d

    torch.manual_seed(0)
    model = linears_for_conv1d(AutoModelForCausalLM.from_config(GPT2Config(
        vocab_size=VOCAB, n_embd=256, n_inner=96, n_layer=2, n_head=4, n_positions=1024,
        bos_token_id=0, eos_token_id=0)).eval())
    plan = {gguf_name(f"{n}.weight"): t for n, t in tensor_types(model, "Q4_K_M").items()}
    assert plan["blk.0.attn_qkv.weight"] == "Q4_K" and plan["blk.1.attn_qkv.weight"] == "Q6_K"
    assert plan["blk.0.ffn_down.weight"] == "Q5_0" and plan["blk.1.ffn_down.weight"] == "Q8_0"
    assert plan["blk.1.attn_output.weight"] == plan["blk.1.ffn_up.weight"] == "Q4_K"
    assert plan["token_embd.weight"] == "Q6_K"
    path = tmp_path / "ours.gguf"
    grids, table_grids = file_type_grids(model, "Q4_K_M")
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    codes = quantize_model(model, "rtn", grids, removed, progress=False)
    export_gguf(model, tokenizer, codes, path, tables=quantize_embeddings(model, table_grids),
                file_type="Q4_K_M")
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    assert {n: tensors[n].tensor_type.name for n in plan} == plan
    for name, layer in decoder_linears(model).items():
        t = tensors[gguf_name(f"{name}.weight")]
        got = dequantize(t.data, t.tensor_type).reshape(layer.weight.shape)
        np.testing.assert_array_equal(got, layer.weight.detach().numpy(), err_msg=name)
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp)")
    from surgeon import llamacpp

    f32, theirs = tmp_path / "f32.gguf", tmp_path / "theirs.gguf"
    export_gguf(model, tokenizer, {}, f32, tables={}, file_type="F32")
    llamacpp.quantize(f32, theirs, "Q4_K_M", 1)
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(theirs)).tensors}
    assert {n: types[n] for n in plan} == plan
    assert {t for n, t in types.items() if n not in plan} == {"F32"}  # norms, biases, positions


def test_gpt2_settings_llama_cpp_does_not_compute_are_refused(tmp_path, tokenizer):
    """An exact GELU is refused in one line."""
    from helpers import family_model

    model = family_model("gpt2")
    model.config.activation_function = "gelu"
    with pytest.raises(SurgeonError, match="activation_function=gelu: llama.cpp's gpt2"):
        q8_0_export(model, tokenizer, tmp_path / "m.gguf")


def q8_0_export(model, tokenizer, path):
    """`model` rounded to llama.cpp's Q8_0 file type (as the quantize stage does) and exported
    to `path`."""
    grids, table_grids = file_type_grids(model, "Q8_0")
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    codes = quantize_model(model, "rtn", grids, removed, progress=False)
    tables = quantize_embeddings(model, table_grids)
    export_gguf(model, tokenizer, codes, path, tables=tables)
    return path


def peaked_attention(model, scale=10.0):
    """q and k weights times `scale`: random tiny models attend almost uniformly, which hides a
    wrong rotary layout; peaked attention does not (measured on Mistral: logits off by 0.006 of
    their spread with the right layout, 0.27 with q/k rows left unpermuted)."""
    with torch.no_grad():
        for name, layer in decoder_linears(model).items():
            if name.endswith(("q_proj", "k_proj")):
                layer.weight.mul_(scale)
    return model


def assert_same_logits(gguf, model, windows, rms=0.03):
    """llama.cpp's logits of the file are the model's, up to its CPU kernels' 8-bit rounding of
    activations: RMS difference under `rms` of the logits' spread (Q8_0 weights: 0.006; a
    wrong layout: about 0.27)."""
    from surgeon import llamacpp

    with torch.no_grad():
        ours = model(windows).logits.double().numpy()
    for i, theirs in enumerate(llamacpp.window_logits(gguf, windows, threads=1)):
        spread = ours[i].std()
        assert np.sqrt(((theirs - ours[i]) ** 2).mean()) < rms * spread, i
        assert np.abs(theirs - ours[i]).max() < 7 * rms * spread, i


@pytest.mark.parametrize("float_type", ["F16", "F32"])
def test_unquantized_export_keeps_pruned_zeros(float_type, tmp_path, tokenizer):
    """export-gguf --float-type writes a pruned, unquantized model for llama.cpp's own tools:
    every matrix in that float type (q/k rows in llama.cpp's order), zeros exactly zero."""
    from gguf import GGUFReader

    from helpers import prune_randomly

    model = tiny_model("llama")
    prune_randomly(model, 0.5)
    model.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    surgeon("export-gguf", "--model", tmp_path / "pruned", "--float-type", float_type,
            "--out", tmp_path / "m.gguf")
    tensors = {t.name: t for t in GGUFReader(str(tmp_path / "m.gguf")).tensors}
    heads = {"q_proj": 4, "k_proj": 2}
    for name, layer in decoder_linears(model).items():
        t = tensors[gguf_name(name + ".weight")]
        assert t.tensor_type.name == float_type
        expected = layer.weight.detach()
        kind = name.rsplit(".", 1)[-1]
        if kind in heads:
            expected = rope_permute(expected, heads[kind])
        got = np.asarray(t.data, dtype=np.float32).reshape(expected.shape)
        dtype = np.float16 if float_type == "F16" else np.float32
        np.testing.assert_array_equal(got, expected.numpy().astype(dtype).astype(np.float32))
        assert (got[expected.numpy() == 0] == 0).all()


def test_float_type_is_refused_for_a_quantized_model(q4_k_m_export):
    import subprocess
    import sys

    out = q4_k_m_export / "float.gguf"
    r = subprocess.run([sys.executable, "-m", "surgeon", "export-gguf", "--model",
                        str(q4_k_m_export / "quantized"), "--float-type", "F16", "--out",
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "is quantized" in r.stderr.splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize("rope_type", ["llama3", "linear"])
def test_rope_scaling_is_written_as_llama_cpp_reads_it(rope_type, tmp_path, tokenizer):
    """Llama 3's rope scaling (and linear) as llama.cpp's rope_freqs tensor: theta_i / factor_i
    with factor_i = default frequency / transformers' scaled one (llama3 with a 16-token
    original context: 1.74 for the fastest pair, 8 for the others); llama.cpp, where
    installed, gives the file the model's logits on 32-token windows. yarn is refused."""
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import SMALL

    params = {"rope_type": rope_type, "rope_theta": 10000.0, "factor": 8.0}
    if rope_type == "llama3":
        params.update(low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=16)
    torch.manual_seed(0)
    model = peaked_attention(LlamaForCausalLM(LlamaConfig(
        **SMALL, rope_parameters=params, tie_word_embeddings=False)).eval())
    path = q8_0_export(model, tokenizer, tmp_path / "m.gguf")
    factors = {t.name: t for t in GGUFReader(str(path)).tensors}["rope_freqs.weight"].data
    expected = [8.0] * 4 if rope_type == "linear" else [1 / 0.576, 8.0, 8.0, 8.0]
    np.testing.assert_allclose(factors, expected, rtol=1e-3)
    yarn = LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 32}))
    with pytest.raises(SurgeonError, match="not yarn"):
        export_gguf(yarn, tokenizer, {}, tmp_path / "yarn.gguf", tables={}, file_type="F32")
    try:
        from surgeon import llamacpp

        llamacpp.llama_cpp()
    except SurgeonError:
        return  # llama.cpp's own reading: tested where llama-cpp-python is installed
    assert_same_logits(path, model, random_windows(2, 32, seed=5))


TEXTS = ["Hello world 12345 it's", "x = [1, 2, 3]  # comment!!", "I'M SHOUTING don't WON'T",
         "def f(a,b):\n    return a**2+b\n\n\n", "Numbers: 2024-11-28, $5.99; e.g. 'quoted'",
         "  leading spaces\t\ttabs ünïcödé 日本語"]


def split_tokenizer(pattern):
    """A byte-level BPE tokenizer like Llama 3's or Qwen2's: a regex Split, then ByteLevel."""
    from pydoc_data.topics import topics
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from helpers import VOCAB

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def sentencepiece_tokenizer(style):
    """A byte-fallback BPE tokenizer as transformers converts SentencePiece models: spaces as
    "▁" with one prepended (llama2: normalizers, as Llama 2 / Mistral; metaspace: the
    Metaspace pre-tokenizer of newer conversions) or none prepended (gemma), <0xXX> tokens."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from helpers import VOCAB

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if style == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    elif style == "gemma":
        tok.normalizer = normalizers.Replace(" ", "▁")
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


@pytest.mark.parametrize("style", ["gpt-2", "llama-bpe", "qwen2", "llama2", "gemma",
                                   "metaspace"])
def test_llama_cpp_tokenizes_text_as_the_tokenizer_does(style, tmp_path, tokenizer):
    """The vocabulary as llama.cpp reads it. Byte-level BPE: tokenizer.ggml.pre names the split
    llama.cpp applies (GPT-2's regex for SmolLM2: llama.cpp's "default" split punctuation
    differently; Llama 3's and Qwen2's Split regexes). SentencePiece-style byte-fallback BPE:
    llama.cpp's llama model with merge ranks as scores, byte tokens, the space prefix or not.
    llama.cpp, where installed, tokenizes text exactly as the tokenizer does (Metaspace: except
    text that starts with a space, where llama.cpp prepends one more, as SentencePiece does)."""
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import SMALL
    from surgeon.gguf_export import SPLIT_PRE_TOKENIZERS

    if style in ("llama-bpe", "qwen2"):
        tokenizer = split_tokenizer(next(p for p, n in SPLIT_PRE_TOKENIZERS.items()
                                         if n == style))
    elif style in ("llama2", "gemma", "metaspace"):
        tokenizer = sentencepiece_tokenizer(style)
    model = LlamaForCausalLM(LlamaConfig(**{**SMALL, "vocab_size": len(tokenizer)})).eval()
    path = tmp_path / "m.gguf"
    export_gguf(model, tokenizer, {}, path, tables={}, file_type="F32")
    fields = GGUFReader(str(path)).fields

    def field(key):
        return bytes(fields[key].parts[fields[key].data[0]]).decode()

    if style in ("llama2", "gemma", "metaspace"):
        assert field("tokenizer.ggml.model") == "llama"
        assert bool(fields["tokenizer.ggml.add_space_prefix"].parts[-1][0]) == (style != "gemma")
    else:
        assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == style
    try:
        from surgeon import llamacpp

        llama_cpp = llamacpp.llama_cpp()
    except SurgeonError:
        return  # llama.cpp's own tokenizer: tested where llama-cpp-python is installed
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in TEXTS:
        if style == "metaspace" and text.startswith(" "):
            continue
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
            tokenizer(text, add_special_tokens=False).input_ids, text


def test_importance_matrix_from_the_curvature(q4_k_m_export):
    """llama.cpp's importance matrix from our curvature file: per GGUF tensor, the diagonal
    of the layer's A over its weight columns (the mean squared input of each column); given
    to llama-quantize (where installed) it changes the Q4_0 codes it picks."""
    import h5py

    from surgeon import llamacpp
    from surgeon.models import load_model, load_tokenizer

    names = {n: gguf_name(f"{n}.weight")
             for n in decoder_linears(load_model(q4_k_m_export / "pruned", "cpu"))}
    with h5py.File(q4_k_m_export / "curvature.h5", "r") as f:
        importance = llamacpp.importance_matrix(f, names)
        for layer, tensor in names.items():
            A = f[layer]["A"][()]
            assert importance[tensor].dtype == np.float32
            np.testing.assert_array_equal(importance[tensor],
                                          A.diagonal()[: f[layer].attrs["weight_shape"][1]])
    assert importance["blk.0.ffn_down.weight"].shape == (96,)
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp)")
    from gguf import GGUFReader

    f32 = q4_k_m_export / "f32-imatrix-test.gguf"
    export_gguf(load_model(q4_k_m_export / "pruned", "cpu"),
                load_tokenizer(q4_k_m_export / "pruned"), {}, f32, tables={}, file_type="F32")
    plain, weighted = q4_k_m_export / "q4_0.gguf", q4_k_m_export / "q4_0-imatrix.gguf"
    llamacpp.quantize(f32, plain, "Q4_0", 1)
    llamacpp.quantize(f32, weighted, "Q4_0", 1, importance)
    a = {t.name: bytes(t.data) for t in GGUFReader(str(plain)).tensors}
    b = {t.name: bytes(t.data) for t in GGUFReader(str(weighted)).tensors}
    assert a.keys() == b.keys() and a["blk.0.attn_q.weight"] != b["blk.0.attn_q.weight"]
