"""GGUF export of Gemma 2, Gemma 3 (text) and Phi-3: gguf's reader finds llama.cpp's tensor names,
the block types llama-quantize would pick and exactly the quantized weights (Gemma's norms plus
one); transformers' GGUF loader gives the model's logits; llama.cpp, where installed, too."""

import numpy as np
import pytest
import torch

from helpers import SMALL, random_windows
from surgeon.errors import SurgeonError
from surgeon.gguf_export import export_gguf, gguf_name
from surgeon.ggml_plan import ARCHITECTURES, file_type_grids, tensor_types
from surgeon.models import decoder_linears
from surgeon.quantize import quantize_embeddings, quantize_model

FAMILIES = ["gemma2", "gemma3_text", "phi3"]


def config(family: str, **changes):
    """A tiny config of `family` whose every setting shows in the logits: Gemma's query scale
    llama.cpp's (1/sqrt(head_dim)), a sliding window shorter than the windows scored, caps
    that bind, rope bases far from the defaults (Gemma 3: a global layer, the 6th, with a
    base other than its sliding layers'); Phi-3 rotating half of each head."""
    import transformers as tf

    gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
    configs = {
        "gemma2": lambda: tf.Gemma2Config(
            **SMALL, **gemma, attn_logit_softcapping=5.0, final_logit_softcapping=0.2,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
        "gemma3_text": lambda: tf.Gemma3TextConfig(
            **{**SMALL, "num_hidden_layers": 6}, **gemma, final_logit_softcapping=0.2,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 20000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}),
        "phi3": lambda: tf.Phi3Config(
            **SMALL, tie_word_embeddings=False, pad_token_id=0,
            original_max_position_embeddings=128,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                             "partial_rotary_factor": 0.5}),
    }
    cfg = configs[family]()
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


# embedding rows past the tokenizer's ids, as Phi-3 has (32064 rows, 32011 tokens)
PHI3_PADDING = 64


def family_model(family: str, tokenizer, **changes):
    """A random model of config(family) with a row per token of `tokenizer` (Phi-3: and
    PHI3_PADDING more): norms random around their init (Gemma's 0, read as 1 + w; Phi-3's 1),
    q and k rows times 10 (peaked attention shows a wrong rotary layout or window; Phi-3: the
    q and k rows of its fused qkv_proj)."""
    from transformers import AutoModelForCausalLM

    vocab_size = len(tokenizer) + (PHI3_PADDING if family == "phi3" else 0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config(family, vocab_size=vocab_size, **changes)).eval()
    cfg = model.config
    qk_rows = (cfg.num_attention_heads + cfg.num_key_value_heads) * \
        (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
        for name, layer in decoder_linears(model).items():
            if name.endswith(("q_proj", "k_proj")):
                layer.weight.mul_(10)
            elif name.endswith("qkv_proj"):
                layer.weight[:qk_rows].mul_(10)
    return model


@pytest.fixture(scope="module")
def vocabularies(tokenizer):
    """{family: tokenizer}: Gemma's style (SentencePiece-like byte-fallback BPE, no space
    prefix) for Gemma, the tiny byte-level BPE for Phi-3."""
    from test_gguf_export import sentencepiece_tokenizer

    gemma = sentencepiece_tokenizer("gemma")
    return {"gemma2": gemma, "gemma3_text": gemma, "phi3": tokenizer}


def quantized_export(model, tokenizer, path, file_type="Q4_0"):
    """`model` rounded in place to llama.cpp's `file_type` (RTN, as the quantize stage does:
    decoder Linears and embedding tables on the blocks ggml_plan picks) and exported; the
    path."""
    grids, table_grids = file_type_grids(model, file_type)
    removed = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    codes = quantize_model(model, "rtn", grids, removed, progress=False)
    tables = quantize_embeddings(model, table_grids)
    export_gguf(model, tokenizer, codes, path, tables=tables)
    return path


def fields(reader) -> dict:
    """{key: value} of a GGUF file's scalar metadata."""
    out = {}
    for key, f in reader.fields.items():
        if len(f.data) == 1 and not key.startswith("tokenizer.ggml.token"):
            part = f.parts[f.data[0]]
            out[key] = bytes(part).decode() if part.dtype == np.uint8 else part[0].item()
    return out


def expected_metadata(family: str) -> dict:
    """The metadata llama.cpp's converter writes for config(family) (which llama.cpp's graph
    reads)."""
    arch = ARCHITECTURES[family]
    common = {"context_length": 128, "embedding_length": 32, "block_count": 2,
              "feed_forward_length": 64, "attention.head_count": 4,
              "attention.head_count_kv": 2, "attention.layer_norm_rms_epsilon": 1e-6}
    per_family = {
        "gemma2": {"attention.key_length": 16, "attention.value_length": 16,
                   "attention.sliding_window": 8, "attn_logit_softcapping": 5.0,
                   "final_logit_softcapping": 0.2, "rope.freq_base": 500.0},
        "gemma3_text": {"block_count": 6, "attention.key_length": 16,
                        "attention.value_length": 16, "attention.sliding_window": 8,
                        "final_logit_softcapping": 0.2, "rope.freq_base": 20000.0,
                        "rope.freq_base_swa": 500.0},
        "phi3": {"attention.layer_norm_rms_epsilon": 1e-5, "rope.dimension_count": 4,
                 "rope.freq_base": 500.0, "rope.scaling.original_context_length": 128,
                 "attention.sliding_window": 0},
    }
    return {f"{arch}.{k}": v for k, v in {**common, **per_family[family]}.items()}


def llama_cpp_names(model, arch: str) -> dict[str, str]:
    """{transformers tensor: GGUF name} as gguf's own map for `arch` names them, each one a
    tensor llama.cpp's `arch` has (gguf.MODEL_TENSORS); the tied head left out."""
    import gguf

    model_arch = gguf.MODEL_ARCH[arch.upper()]
    names = gguf.get_tensor_name_map(model_arch, model.config.num_hidden_layers)
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[model_arch]}
    out = {}
    for key in model.state_dict():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        assert name is not None, key
        base, suffix = name.rsplit(".", 1)
        layer = base.split(".")[1] if base.startswith("blk.") else None
        assert (base if layer is None else base.replace(f"blk.{layer}.", "blk.{bid}.")) in known
        out[key] = name
    return out


@pytest.mark.parametrize("file_type", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_reader_finds_llama_cpp_names_types_and_the_quantized_weights(
        family, file_type, tmp_path, vocabularies):
    """Every tensor under the name gguf's map for the architecture gives it and nothing else
    (Gemma: post_attention_norm, ffn_norm = pre_feedforward, post_ffw_norm, Gemma 3's q/k
    norms, the tied head once; Phi-3: fused attn_qkv and ffn_up), on the block ggml_plan
    picks and holding exactly the quantized weights; Gemma's norms as 1 + w (float32), the
    metadata llama.cpp's converter writes."""
    from gguf import GGUFReader, TokenType, dequantize

    arch = ARCHITECTURES[family]
    vocab = vocabularies[family]
    model = family_model(family, vocab)
    path = quantized_export(model, vocab, tmp_path / "m.gguf", file_type)
    reader = GGUFReader(str(path))
    meta = fields(reader)
    assert meta["general.architecture"] == arch
    for key, value in expected_metadata(family).items():
        assert meta[key] == pytest.approx(value), key
    if family == "gemma2":  # its rope is shared: no separate base for the sliding layers
        assert "gemma2.rope.freq_base_swa" not in meta
    tensors = {t.name: t for t in reader.tensors}
    names = llama_cpp_names(model, arch)
    assert sorted(tensors) == sorted(names.values())
    plan = tensor_types(model, file_type)
    state = model.state_dict()
    for key, name in names.items():
        assert gguf_name(key, arch) == name, key
        t, value = tensors[name], state[key].detach()
        got = dequantize(t.data, t.tensor_type).reshape(value.shape)
        module = key.removesuffix(".weight")
        if module in plan:
            assert t.tensor_type.name == plan[module], key
            np.testing.assert_array_equal(got, value.numpy(), err_msg=key)
        elif family.startswith("gemma") and key.endswith("norm.weight"):
            assert t.tensor_type.name == "F32"
            np.testing.assert_array_equal(got, (value.float() + 1).numpy(), err_msg=key)
            np.testing.assert_allclose(got - 1, value.numpy(), rtol=0, atol=1e-6)
        else:
            assert t.tensor_type.name == "F32", key
            np.testing.assert_array_equal(got, value.numpy(), err_msg=key)
    if family == "gemma2":  # the head is the embedding, llama-quantize's output block
        assert "output.weight" not in tensors
        assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"  # 32 wide: no Q6_K
    if family == "gemma3_text":
        assert "blk.5.attn_q_norm.weight" in tensors and "output.weight" not in tensors
    if family == "phi3":  # rows past the tokenizer's ids: unused [PAD<id>] tokens
        n = len(vocab)
        f = reader.fields["tokenizer.ggml.tokens"]
        assert len(f.data) == model.config.vocab_size == n + PHI3_PADDING
        assert bytes(f.parts[f.data[n]]).decode() == f"[PAD{n}]"
        types = reader.fields["tokenizer.ggml.token_type"]
        assert {int(types.parts[i][0]) for i in types.data[n:]} == {TokenType.UNUSED}
        assert TokenType.UNUSED not in {int(types.parts[i][0]) for i in types.data[:n]}
        assert list(tensors["blk.0.attn_qkv.weight"].shape) == [32, 64]  # (in, q + k + v)
        assert list(tensors["blk.0.ffn_up.weight"].shape) == [32, 128]  # (in, gate + up)
        assert "blk.0.attn_q.weight" not in tensors and "blk.0.ffn_gate.weight" not in tensors


# settings transformers' GGUF reader does not read (it builds them from its defaults): given
# to the loader as the model has them
UNREAD = {"gemma2": ("query_pre_attn_scalar", "attn_logit_softcapping",
                     "final_logit_softcapping"),
          "gemma3_text": ("query_pre_attn_scalar", "final_logit_softcapping", "rope_parameters"),
          "phi3": ("pad_token_id", "rope_parameters")}


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_the_file(family, tmp_path, vocabularies):
    """transformers' GGUF loader (which takes 1 off Gemma's norms) gives back the quantized
    weights (Gemma's norms up to float32 rounding of (1 + w) - 1), the settings it reads
    (head_dim, window, kv heads, tied head) and the model's logits within 1e-4."""
    from transformers import AutoModelForCausalLM

    vocab = vocabularies[family]
    model = family_model(family, vocab)
    quantized_export(model, vocab, tmp_path / "m.gguf")
    unread = {k: getattr(model.config, k) for k in UNREAD[family]}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32, **unread).eval()
    assert type(loaded) is type(model)
    for key in ("num_key_value_heads", "tie_word_embeddings", "sliding_window", "head_dim",
                "num_hidden_layers"):
        assert getattr(loaded.config, key, None) == getattr(model.config, key, None), key
    theirs = loaded.state_dict()
    for key, value in model.state_dict().items():
        if "norm" in key and family.startswith("gemma"):
            torch.testing.assert_close(theirs[key], value, rtol=0, atol=1e-6)
        else:
            assert torch.equal(theirs[key], value), key
    x = random_windows(2, 32)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


# llama.cpp's 8-bit rounding of activations against a Q8_0 file, RMS of the logits' spread:
# Llama 0.006, Phi-3 0.008, Gemma 0.02 (its post-norms scale each block's small output up to
# the residual's size, rounding error with it); a wrong layout or setting: 0.1 to 1
QUANTIZED_RMS = {"gemma2": 0.05, "gemma3_text": 0.05, "phi3": 0.03}


@pytest.mark.parametrize("family", [*FAMILIES, "gemma3_text-linear"])
def test_llama_cpp_computes_the_models_logits(family, tmp_path, vocabularies):
    """llama.cpp gives the unquantized F32 file the model's logits on 32-token windows (4
    sliding windows, peaked attention, caps that bind) within 0.3% of their spread (measured:
    0.12% or less; files written with the soft-caps, window, rope bases, linear factor or
    Phi-3's rotated dimensions llama.cpp's defaults would give, or without Gemma's norm shift:
    1.2% to 100%), and the Q8_0 file the quantized model's logits up to its 8-bit rounding of
    activations (QUANTIZED_RMS). Gemma 3 also with its global layers' rope scaled linearly
    (factor 8, as Gemma 3 4B and larger)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp)")
    from test_gguf_export import assert_same_logits

    changes = {}
    if family == "gemma3_text-linear":
        family, changes = "gemma3_text", {"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 20000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}}
    vocab = vocabularies[family]
    windows = random_windows(2, 32, seed=5)
    model = family_model(family, vocab, **changes)
    export_gguf(model, vocab, {}, tmp_path / "f32.gguf", tables={}, file_type="F32")
    assert_same_logits(tmp_path / "f32.gguf", model, windows, rms=0.003)
    path = quantized_export(model, vocab, tmp_path / "q8_0.gguf", "Q8_0")
    assert_same_logits(path, model, windows, rms=QUANTIZED_RMS[family])


def wide_model(family, tokenizer):
    """family_model 256 wide (rows of 256: K-quant blocks) with an MLP 96 wide (ffn_down's
    rows fall back to 32-weight blocks)."""
    changes = dict(hidden_size=256, intermediate_size=96)
    if family.startswith("gemma"):
        changes.update(head_dim=64, query_pre_attn_scalar=64)
    return family_model(family, tokenizer, **changes)


@pytest.mark.parametrize("family", ["gemma2", "phi3"])
def test_q4_k_m_plan_is_llama_quantizes(family, tmp_path, vocabularies):
    """ggml_plan's Q4_K_M types: Q6_K for attn_v (Phi-3: the fused attn_qkv) and ffn_down in
    the layers use_more_bits picks (of 2: the second), Q6_K for the head (Gemma 2: the tied
    embedding), fallbacks for 96-wide rows; llama-quantize, where installed, picks the same
    type for every tensor of our F32 file."""
    from gguf import GGUFReader

    arch = ARCHITECTURES[family]
    model = wide_model(family, vocabularies[family])
    plan = {gguf_name(f"{n}.weight", arch): t for n, t in tensor_types(model, "Q4_K_M").items()}
    v = "attn_qkv" if family == "phi3" else "attn_v"
    assert plan[f"blk.0.{v}.weight"] == "Q4_K" and plan[f"blk.1.{v}.weight"] == "Q6_K"
    assert plan["blk.0.ffn_down.weight"] == "Q5_0" and plan["blk.1.ffn_down.weight"] == "Q8_0"
    assert plan["output.weight" if family == "phi3" else "token_embd.weight"] == "Q6_K"
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp)")
    from surgeon import llamacpp

    f32, theirs = tmp_path / "f32.gguf", tmp_path / "theirs.gguf"
    export_gguf(model, vocabularies[family], {}, f32, tables={}, file_type="F32")
    llamacpp.quantize(f32, theirs, "Q4_K_M", 1)
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(theirs)).tensors}
    assert {n: types[n] for n in plan} == plan
    assert {t for n, t in types.items() if n not in plan} == {"F32"}  # norms


@pytest.mark.parametrize("family,change,message", [
    ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar=256: llama.cpp's gemma2"),
    ("gemma2", {"hidden_activation": "gelu"}, "tanh-approximated GELU"),
    ("gemma2", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ("gemma2", {"attn_logit_softcapping": None}, "always caps"),
    ("gemma2", {"tie_word_embeddings": False}, "untied head"),
    ("gemma2", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "not linear"),
    ("gemma3_text", {"attn_logit_softcapping": 50.0}, "does not cap attention"),
    ("gemma3_text", {"rope_parameters": {
        "full_attention": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6,
                           "original_max_position_embeddings": 64},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "not yarn"),
    ("phi3", {"hidden_act": "gelu"}, "llama.cpp's phi3 computes SiLU"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4,
                                  "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                                  "original_max_position_embeddings": 64}}, "not longrope"),
])
def test_settings_llama_cpp_computes_otherwise_are_refused(family, change, message, tmp_path,
                                                           tokenizer):
    """Settings the architecture's llama.cpp graph would compute differently are refused in
    one line before anything is written."""
    model = family_model(family, tokenizer)
    for key, value in change.items():
        setattr(model.config, key, value)
    with pytest.raises(SurgeonError, match=message):
        export_gguf(model, tokenizer, {}, tmp_path / "m.gguf", tables={}, file_type="F32")
    assert not (tmp_path / "m.gguf").exists()
