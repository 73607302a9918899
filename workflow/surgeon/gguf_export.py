"""GGUF export of a quantized model for llama.cpp (Llama, Mistral, Qwen2, Qwen3, GPT-2): llama.cpp
block types and metadata.

The quantize stage's grids are llama.cpp's blocks (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K; the mixture of a
file type such as Q4_K_M chosen per tensor as llama-quantize does, ggml_plan). Its codes and
scales are packed into those blocks as they are (ggml_blocks), not re-quantized from the
dequantized weights: after GPTQ's error feedback a group's largest weight need not sit on the
extreme code any more, and re-quantizing would pick another scale. So the file holds exactly
the model that was evaluated. The token embedding and an untied output head get the block
llama.cpp gives them (SmolLM2's 576-wide rows: Q8_0) with the codes the quantize stage saved,
instead of the F16 of llama.cpp's converter. Norms, biases and other tensors without codes
(GPT-2's position embedding) are F32, except in an F16 file. For the llama architecture q_proj
and k_proj rows are permuted into llama.cpp's rotary layout (the inverse of what readers such
as transformers undo); Qwen's rotary layout is transformers' own. GPT-2's layers are written
as the Linears they are in memory (models.linears_for_conv1d), (out, in): llama.cpp's layout,
which its converter gets by transposing the Conv1D weights of a GPT-2 checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch

from .errors import SurgeonError

from .ggml_plan import ARCHITECTURES

# modules inside a decoder block (Llama-style, then GPT-2) -> llama.cpp's tensor names
LAYER_NAMES = {
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}
# tensors outside the blocks
MODEL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
}
BLOCK_LISTS = (["model", "layers"], ["transformer", "h"])


def rope_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


# rope types whose only change is a per-frequency divisor, which llama.cpp's llama
# architecture reads from the rope_freqs tensor
FREQUENCY_ROPE_TYPES = ("llama3", "linear")


def rope_frequency_factors(model, arch: str) -> torch.Tensor | None:
    """llama.cpp's rope_freqs (theta_i = pos * base^(-2i/d) / factor_i) for the model's rope
    scaling: the default inverse frequencies over the ones transformers' rotary embedding
    uses (Llama 3's llama3 type, linear). None without scaling; other types (yarn, dynamic,
    longrope: their attention factor or length-dependence has no such tensor) are refused."""
    params = getattr(model.config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind == "default":
        return None
    if kind not in FREQUENCY_ROPE_TYPES or arch != "llama":
        raise SurgeonError(f"GGUF export writes rope scaling of the types "
                           f"{', '.join(FREQUENCY_ROPE_TYPES)} for the llama architecture only, "
                           f"not {kind} ({arch})")
    inv_freq = next(m.inv_freq for m in model.modules() if hasattr(m, "inv_freq")).double()
    dim = 2 * len(inv_freq)
    default = 1.0 / params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return (default / inv_freq.cpu()).float()


def gguf_name(hf_name: str) -> str:
    if hf_name in MODEL_NAMES:
        return MODEL_NAMES[hf_name]
    parts = hf_name.split(".")  # model.layers.<i>.<module>.<sub>.weight (GPT-2: transformer.h)
    if parts[:2] not in BLOCK_LISTS:
        raise SurgeonError(f"no GGUF name for tensor {hf_name}")
    module = ".".join(parts[3:-1])
    if module not in LAYER_NAMES:
        raise SurgeonError(f"no GGUF name for tensor {hf_name}")
    return f"blk.{parts[2]}.{LAYER_NAMES[module]}.{parts[-1]}"


# The pre-tokenizer regex of a byte-level BPE tokenizer.json (a Split before a ByteLevel that
# applies no regex of its own) -> llama.cpp's name for the same split (llama-vocab.cpp)
SPLIT_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",  # Llama 3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",  # Qwen 1.5-3
}


def pre_tokenizer_name(backend: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` that splits a byte-level BPE tokenizer's text as the
    tokenizer does: "gpt-2" for a lone ByteLevel with GPT-2's regex (SmolLM2 as imported from
    its GGUF), the names of SPLIT_PRE_TOKENIZERS; other splits are refused: llama.cpp would
    tokenize text differently."""
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(parts) == 2 and parts[0]["type"] == "Split" and parts[1]["type"] == "ByteLevel"
            and not parts[1].get("use_regex", True)
            and parts[0]["pattern"].get("Regex") in SPLIT_PRE_TOKENIZERS):
        return SPLIT_PRE_TOKENIZERS[parts[0]["pattern"]["Regex"]]
    raise SurgeonError(
        "GGUF export writes byte-level BPE vocabularies split as GPT-2 (SmolLM2), Llama 3 or "
        f"Qwen2 split them; this tokenizer's pre-tokenizer ({json.dumps(pre)[:60]}) would be "
        "split differently by llama.cpp")


def space_prefix(backend: dict) -> bool:
    """Whether a SentencePiece-style tokenizer.json marks spaces with "▁" and prepends one to
    the text (Llama 2, Mistral: yes; Gemma: no); refused when it does not mark spaces."""
    normalizer, pre = backend.get("normalizer") or {}, backend.get("pre_tokenizer") or {}
    steps = normalizer.get("normalizers", [normalizer])
    if any(n.get("type") == "Replace" and n.get("content") == "▁" for n in steps):
        return any(n.get("type") == "Prepend" and n.get("prepend") == "▁" for n in steps)
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never"
    raise SurgeonError("GGUF export: a byte-fallback BPE tokenizer that does not mark spaces "
                       "with '▁' (SentencePiece-style) is not a vocabulary llama.cpp reads")


def _sentencepiece_metadata(writer, tokenizer, backend: dict, tokens: list[str],
                            merges: list[str]) -> None:
    """llama.cpp's SentencePiece vocabulary (its `llama` tokenizer model) from a byte-fallback
    BPE tokenizer.json: llama.cpp merges the adjacent pair whose merged token scores highest,
    so a merged token's score is minus the rank of its merge (the first merge scores 0), the
    other tokens 0; <0xXX> tokens are byte tokens."""
    from gguf import TokenType

    rank = {m.replace(" ", ""): -float(i) for i, m in reversed(list(enumerate(merges)))}
    special = set(tokenizer.all_special_tokens)

    def kind(token: str):
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            return TokenType.BYTE
        if token == tokenizer.unk_token:
            return TokenType.UNKNOWN
        return TokenType.CONTROL if token in special else TokenType.NORMAL

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([rank.get(t, 0.0) for t in tokens])
    writer.add_token_types([kind(t) for t in tokens])
    writer.add_add_space_prefix(space_prefix(backend))
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)


def _tokenizer_metadata(writer, tokenizer) -> None:
    """The vocabulary as llama.cpp reads it: byte-level BPE (its gpt2 model: merges and the
    pre-tokenizer that splits text as the tokenizer does) or SentencePiece-style byte-fallback
    BPE (its llama model: scores and byte tokens); special token ids."""
    from gguf import TokenType

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise SurgeonError(f"GGUF export writes BPE vocabularies, not "
                           f"{backend['model']['type']}")
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    if backend["model"].get("byte_fallback"):
        _sentencepiece_metadata(writer, tokenizer, backend, tokens, merges)
    else:
        pre = pre_tokenizer_name(backend)
        special = set(tokenizer.all_special_tokens)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL
                                for t in tokens])
        writer.add_token_merges(merges)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)


FLOAT_FILE_TYPES = {"F32": 0, "F16": 1}  # LLAMA_FTYPE_ALL_F32, LLAMA_FTYPE_MOSTLY_F16


def _rotary_metadata(writer, cfg) -> None:
    """The llama/qwen2/qwen3 hyperparameters: MLP width, kv heads, RoPE, RMSNorm."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None)
                                    or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)


# GPT-2 settings llama.cpp's gpt2 graph computes (tanh-approximated GELU, scores scaled by
# 1/sqrt(head_dim) and nothing else); a config with others would give other logits there
GPT2_AS_LLAMA_CPP = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"),
                     "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,)}


def _gpt2_metadata(writer, cfg) -> None:
    """GPT-2's hyperparameters as llama.cpp's gpt2 reads them: MLP width (n_inner, 4 x hidden
    when None), LayerNorm epsilon; one kv head per query head, no RoPE. Settings its graph
    does not compute are refused."""
    for key, supported in GPT2_AS_LLAMA_CPP.items():
        if getattr(cfg, key) not in supported:
            raise SurgeonError(f"GGUF export of GPT-2 with {key}={getattr(cfg, key)}: "
                               f"llama.cpp's gpt2 computes {key}={supported[0]} only")
    writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.hidden_size)
    writer.add_layer_norm_eps(cfg.layer_norm_epsilon)


def export_gguf(model, tokenizer, codes: dict, out: Path, name: str = "model",
                tables: dict | None = None, file_type: str | None = None) -> dict:
    """Write `model` to `out`, its decoder Linears from `codes` and its embedding tables from
    `tables` ({module: Quantized} on llama.cpp block grids, as the quantize stage saved them;
    tables default to Q8_0 codes of the model's tables). `file_type` names the mixture for
    the header (default: the decoder Linears' one block type); F32 or F16 with no codes and
    no tables writes the unquantized model (what llama-quantize starts from)."""
    from gguf import GGMLQuantizationType, GGUFWriter

    from .ggml_blocks import pack
    from .ggml_plan import FILE_TYPES
    from .quantize import embedding_codes, ggml_type

    cfg = model.config
    arch = ARCHITECTURES.get(cfg.model_type)
    if arch is None:
        raise SurgeonError(f"GGUF export supports {', '.join(ARCHITECTURES)} models, not "
                           f"{cfg.model_type}")
    types = {ggml_type(q.grid) for q in codes.values()}
    file_type = file_type or (types.pop() if len(types) == 1 else None)
    unquantized = file_type in FLOAT_FILE_TYPES and not codes and tables == {}
    if file_type not in FILE_TYPES and not unquantized:
        raise SurgeonError(f"GGUF export needs llama.cpp block types with one file type "
                           f"({', '.join(FILE_TYPES)}), got {file_type or sorted(map(str, types))}")
    writer = GGUFWriter(str(out), arch)
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    if arch == "gpt2":
        _gpt2_metadata(writer, cfg)
    else:
        _rotary_metadata(writer, cfg)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type({**FILE_TYPES, **FLOAT_FILE_TYPES}[file_type])
    _tokenizer_metadata(writer, tokenizer)
    rope_factors = None if arch == "gpt2" else rope_frequency_factors(model, arch)
    if rope_factors is not None:
        writer.add_tensor("rope_freqs.weight", rope_factors.numpy())

    tables = {f"{n}.weight": q for n, q in
              (embedding_codes(model) if tables is None else tables).items()}
    state = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    counts: dict[str, int] = {}
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads} \
        if arch == "llama" else {}
    for key, tensor in state.items():
        layer = key.removesuffix(".weight")
        q = codes.get(layer) or tables.get(key)
        rows = heads.get(key.rsplit(".", 2)[-2])  # q/k weights and biases, in llama only
        if q is not None:
            if rows:  # a row order change: every per-row tensor
                q = dataclasses.replace(
                    q, codes=rope_permute(q.codes, rows), scales=rope_permute(q.scales, rows),
                    zeros=rope_permute(q.zeros, rows),
                    supers=None if q.supers is None else rope_permute(q.supers, rows))
            kind, data = pack(q)
            writer.add_tensor(gguf_name(key), data, raw_shape=data.shape,
                              raw_dtype=getattr(GGMLQuantizationType, kind))
        else:
            array = (rope_permute(tensor, rows) if rows else tensor).detach().float().cpu().numpy()
            kind = "F16" if array.ndim == 2 and file_type == "F16" else "F32"
            writer.add_tensor(gguf_name(key), array.astype(np.float16 if kind == "F16"
                                                           else np.float32))
        counts[kind] = counts.get(kind, 0) + tensor.numel()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file_type": file_type, "weights": counts}
