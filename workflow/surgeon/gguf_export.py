"""GGUF export of a quantized model for llama.cpp (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3,
Phi-3, GPT-2): llama.cpp block types and metadata.

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
as transformers undo); Qwen's, Gemma's and Phi-3's rotary layout (llama.cpp's NEOX rope) is
transformers' own. Gemma's RMSNorms scale by 1 + weight in transformers and by the weight in
llama.cpp, so their weights are written plus one, as llama.cpp's converter does. Phi-3's fused
qkv_proj and gate_up_proj are written as they are (attn_qkv, ffn_up: llama.cpp splits them in
the same order). GPT-2's layers are written as the Linears they are in memory
(models.linears_for_conv1d), (out, in): llama.cpp's layout, which its converter gets by
transposing the Conv1D weights of a GPT-2 checkpoint.
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
    "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up",  # Phi-3's fused Linears
}
# Gemma 2/3 norm both ends of the attention and of the MLP: their post_attention_layernorm is
# llama.cpp's post-attention norm, not the pre-MLP ffn_norm it is in Llama
GEMMA_NORM_NAMES = {"post_attention_layernorm": "post_attention_norm",
                    "pre_feedforward_layernorm": "ffn_norm",
                    "post_feedforward_layernorm": "post_ffw_norm"}
ARCH_LAYER_NAMES = {"gemma2": GEMMA_NORM_NAMES, "gemma3": GEMMA_NORM_NAMES}
# llama.cpp architectures whose RMSNorm weights transformers applies as 1 + weight
SHIFTED_NORMS = ("gemma2", "gemma3")
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
# the architectures whose rope scaling rope_frequency_factors writes or refuses (Gemma's and
# Phi-3's: their metadata functions)
ROPE_FREQS_ARCHES = ("llama", "qwen2", "qwen3")


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


def gguf_name(hf_name: str, arch: str = "llama") -> str:
    """llama.cpp's name of a transformers tensor in a file of llama.cpp architecture `arch`."""
    if hf_name in MODEL_NAMES:
        return MODEL_NAMES[hf_name]
    parts = hf_name.split(".")  # model.layers.<i>.<module>.<sub>.weight (GPT-2: transformer.h)
    if parts[:2] not in BLOCK_LISTS:
        raise SurgeonError(f"no GGUF name for tensor {hf_name}")
    module = ".".join(parts[3:-1])
    names = {**LAYER_NAMES, **ARCH_LAYER_NAMES.get(arch, {})}
    if module not in names:
        raise SurgeonError(f"no GGUF name for tensor {hf_name}")
    return f"blk.{parts[2]}.{names[module]}.{parts[-1]}"


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


def vocabulary(tokenizer, rows: int) -> tuple[list[str], set[int]]:
    """(the tokens by id, the ids no token has), as many as the embedding has rows, which is
    how many tokens llama.cpp expects: ids the tokenizer leaves unused (Phi-3's 53 rows past
    its 32011 tokens, Qwen2's 271) become "[PAD<id>]" tokens, as llama.cpp's converter writes
    them. A tokenizer with ids past the embedding is refused."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= rows:
        raise SurgeonError(f"GGUF export: the tokenizer has ids up to {max(by_id)}, the "
                           f"model's embedding {rows} rows")
    return [by_id.get(i, f"[PAD{i}]") for i in range(rows)], set(range(rows)) - set(by_id)


def _sentencepiece_metadata(writer, tokenizer, backend: dict, tokens: list[str],
                            merges: list[str], padding: set[int]) -> None:
    """llama.cpp's SentencePiece vocabulary (its `llama` tokenizer model) from a byte-fallback
    BPE tokenizer.json: llama.cpp merges the adjacent pair whose merged token scores highest,
    so a merged token's score is minus the rank of its merge (the first merge scores 0), the
    other tokens 0; <0xXX> tokens are byte tokens, `padding` ids unused ones."""
    from gguf import TokenType

    rank = {m.replace(" ", ""): -float(i) for i, m in reversed(list(enumerate(merges)))}
    special = set(tokenizer.all_special_tokens)

    def kind(i: int, token: str):
        if i in padding:
            return TokenType.UNUSED
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            return TokenType.BYTE
        if token == tokenizer.unk_token:
            return TokenType.UNKNOWN
        return TokenType.CONTROL if token in special else TokenType.NORMAL

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([rank.get(t, 0.0) for t in tokens])
    writer.add_token_types([kind(i, t) for i, t in enumerate(tokens)])
    writer.add_add_space_prefix(space_prefix(backend))
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)


def _tokenizer_metadata(writer, tokenizer, rows: int) -> None:
    """The vocabulary as llama.cpp reads it, one token per embedding row (`rows`, vocabulary):
    byte-level BPE (its gpt2 model: merges and the pre-tokenizer that splits text as the
    tokenizer does) or SentencePiece-style byte-fallback BPE (its llama model: scores and byte
    tokens); special token ids."""
    from gguf import TokenType

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise SurgeonError(f"GGUF export writes BPE vocabularies, not "
                           f"{backend['model']['type']}")
    tokens, padding = vocabulary(tokenizer, rows)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    if backend["model"].get("byte_fallback"):
        _sentencepiece_metadata(writer, tokenizer, backend, tokens, merges, padding)
    else:
        pre = pre_tokenizer_name(backend)
        special = set(tokenizer.all_special_tokens)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types([TokenType.UNUSED if i in padding else TokenType.CONTROL
                                if t in special else TokenType.NORMAL
                                for i, t in enumerate(tokens)])
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


# the layer count of the Gemma whose queries llama.cpp scales by 1/sqrt(hidden / heads) (27B)
# instead of 1/sqrt(head_dim), and the period of its sliding/global layer pattern
GEMMA_WIDE_QUERY_LAYERS = {"gemma2": 46, "gemma3": 62}
GEMMA_PATTERN = {"gemma2": 2, "gemma3": 6}


def _gemma_refusals(cfg, arch: str) -> None:
    """Gemma settings llama.cpp's gemma2/gemma3 graphs compute otherwise, refused: its query
    scale (1/sqrt(head_dim), the 27B's 1/sqrt(hidden / heads), against transformers'
    query_pre_attn_scalar), its fixed sliding/global layer pattern (every 2nd / 6th layer
    global), tanh-approximated GELU, no attention biases, soft-capping (gemma2: always both,
    gemma3: no attention soft-capping), a tied head in gemma2 (it reads no output.weight)."""
    heads, layers = cfg.num_attention_heads, cfg.num_hidden_layers
    scalar = cfg.hidden_size // heads if layers == GEMMA_WIDE_QUERY_LAYERS[arch] else cfg.head_dim
    period = GEMMA_PATTERN[arch]
    pattern = ["sliding_attention" if i % period < period - 1 else "full_attention"
               for i in range(layers)]
    refusals = [
        (cfg.query_pre_attn_scalar != scalar,
         f"query_pre_attn_scalar={cfg.query_pre_attn_scalar}: llama.cpp's {arch} scales queries "
         f"by 1/sqrt({scalar})"),
        (cfg.hidden_activation != "gelu_pytorch_tanh",
         f"hidden_activation={cfg.hidden_activation}: llama.cpp computes tanh-approximated GELU"),
        (getattr(cfg, "layer_types", None) not in (None, pattern),
         f"layer_types other than llama.cpp's {arch} pattern (global every {period} layers)"),
        (not cfg.sliding_window, "no sliding window: llama.cpp's gemma layers slide"),
        (cfg.attention_bias, "attention biases: llama.cpp's gemma reads none"),
        (getattr(cfg, "use_bidirectional_attention", False),
         "bidirectional attention: llama.cpp's gemma3 is causal"),
        (arch == "gemma2" and not (cfg.attn_logit_softcapping and cfg.final_logit_softcapping),
         "no soft-capping: llama.cpp's gemma2 always caps attention and final logits"),
        (arch == "gemma3" and cfg.attn_logit_softcapping,
         "attention soft-capping: llama.cpp's gemma3 does not cap attention logits"),
        (arch == "gemma2" and not cfg.tie_word_embeddings,
         "an untied head: llama.cpp's gemma2 uses the token embedding as its head"),
    ]
    for refused, reason in refusals:
        if refused:
            raise SurgeonError(f"GGUF export of {cfg.model_type} with {reason}")


def rope_parameters(cfg) -> dict:
    """transformers 5's rope_parameters of a config (Gemma 3: per layer type); refused for an
    older transformers' config, whose rope_theta/rope_scaling are not read here."""
    params = getattr(cfg, "rope_parameters", None)
    if not params:
        raise SurgeonError(f"GGUF export of {cfg.model_type} reads transformers 5's "
                           "rope_parameters; this config has none")
    return params


def _gemma_ropes(cfg, arch: str) -> tuple[dict, dict]:
    """(global layers' rope, sliding layers' rope) parameters. llama.cpp gives the sliding
    layers unscaled rope at their own base (gemma3's rope.freq_base_swa) and the global ones
    its rope scaling, of which linear (Gemma 3 4B and larger: factor 8) is written; others,
    and any scaling of gemma2 (whose layers share one rope), are refused."""
    params = rope_parameters(cfg)
    full, local = (params, params) if arch == "gemma2" else \
        (params["full_attention"], params["sliding_attention"])
    allowed = ("default",) if arch == "gemma2" else ("default", "linear")
    for kind, rope, types in (("global", full, allowed), ("sliding", local, ("default",))):
        if rope.get("rope_type", "default") not in types:
            raise SurgeonError(f"GGUF export of {cfg.model_type} writes rope of type "
                               f"{' or '.join(types)} for its {kind} layers, not "
                               f"{rope['rope_type']}")
    return full, local


def _gemma_metadata(writer, cfg, arch: str) -> None:
    """Gemma 2/3's hyperparameters as llama.cpp's converter writes them: head_dim (key and
    value length; the rope covers all of it), kv heads, sliding window, soft-capping, the
    global rope base (gemma3: and the sliding layers' base, linear scaling); settings its
    graphs compute otherwise are refused. The embedding's sqrt(hidden) scale is llama.cpp's
    own."""
    from gguf import RopeScalingType

    _gemma_refusals(cfg, arch)
    full, local = _gemma_ropes(cfg, arch)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_rope_freq_base(float(full["rope_theta"]))
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
        return
    writer.add_rope_freq_base_swa(float(local["rope_theta"]))
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    if cfg.final_logit_softcapping:
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)


def _phi3_metadata(writer, cfg) -> None:
    """Phi-3's hyperparameters as llama.cpp's converter writes them: the rotated part of each
    head (partial_rotary_factor, Phi-4-mini's 0.75), the original context, the sliding window
    (0: none). llama.cpp's phi3 ignores that window (it attends to the whole context), so
    transformers' logits and its own agree on sequences up to the window (Phi-3-mini-4k:
    2047 tokens). Refused: an activation other than SiLU and rope scaling (longrope: llama.cpp
    picks the long or short factors by the context it is given, transformers by the length
    of the sequence)."""
    if cfg.hidden_act != "silu":
        raise SurgeonError(f"GGUF export of Phi-3 with hidden_act={cfg.hidden_act}: llama.cpp's "
                           "phi3 computes SiLU")
    params = rope_parameters(cfg)
    if params.get("rope_type", "default") != "default":
        raise SurgeonError(f"GGUF export of Phi-3 writes unscaled rope, not {params['rope_type']} "
                           "(llama.cpp chooses long/short factors by context, not by sequence)")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    writer.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(int(head_dim * params.get("partial_rotary_factor", 1.0)))
    writer.add_rope_freq_base(float(params["rope_theta"]))
    writer.add_sliding_window(cfg.sliding_window or 0)


def _architecture_metadata(writer, cfg, arch: str) -> None:
    if arch == "gpt2":
        _gpt2_metadata(writer, cfg)
    elif arch in SHIFTED_NORMS:
        _gemma_metadata(writer, cfg, arch)
    elif arch == "phi3":
        _phi3_metadata(writer, cfg)
    else:
        _rotary_metadata(writer, cfg)


def stored_tensor(key: str, tensor: torch.Tensor, arch: str) -> torch.Tensor:
    """A tensor without codes as llama.cpp reads it: Gemma's norm weights w as 1 + w (float32,
    transformers' Gemma RMSNorm computes x * (1 + w.float()))."""
    if arch in SHIFTED_NORMS and key.endswith("norm.weight"):
        return tensor.detach().float() + 1.0
    return tensor


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
    _architecture_metadata(writer, cfg, arch)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type({**FILE_TYPES, **FLOAT_FILE_TYPES}[file_type])
    _tokenizer_metadata(writer, tokenizer, model.get_input_embeddings().weight.shape[0])
    # the rope_freqs tensor of llama's rope scaling; Gemma's and Phi-3's are metadata (above)
    rope_factors = rope_frequency_factors(model, arch) if arch in ROPE_FREQS_ARCHES else None
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
            writer.add_tensor(gguf_name(key, arch), data, raw_shape=data.shape,
                              raw_dtype=getattr(GGMLQuantizationType, kind))
        else:
            tensor = stored_tensor(key, rope_permute(tensor, rows) if rows else tensor, arch)
            array = tensor.detach().float().cpu().numpy()
            kind = "F16" if array.ndim == 2 and file_type == "F16" else "F32"
            writer.add_tensor(gguf_name(key, arch),
                              array.astype(np.float16 if kind == "F16" else np.float32))
        counts[kind] = counts.get(kind, 0) + tensor.numel()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file_type": file_type, "weights": counts}
