"""GGUF export of a quantized Llama for llama.cpp: Q4_0 / Q8_0 decoder Linears, llama metadata.

The quantize stage's symmetric 4- and 8-bit grids are llama.cpp's Q4_0 and Q8_0 blocks (32
weights, one float16 scale). Its codes and scales are packed into those blocks as they are
(`pack_blocks`), not re-quantized from the dequantized weights: after GPTQ's error feedback a
group's largest weight need not sit on code -8 any more, and re-quantizing would pick another
scale. So the file holds exactly the model that was evaluated. The token embedding and an
untied output head are stored as Q8_0 (quantize.embedding_codes, which the quantize stage
applied already: the same codes), as llama.cpp's quantizer does for SmolLM2's 576-wide rows,
instead of the F16 of its converter: 8.5 bits per weight instead of 16. Norms are F32. q_proj and
k_proj rows are permuted into llama.cpp's rotary layout (the inverse of what readers such as
transformers undo when loading).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import SurgeonError

QTYPES = {4: "Q4_0", 8: "Q8_0"}
FILE_TYPES = {"Q4_0": 2, "Q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers

LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def rope_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def pack_blocks(codes: torch.Tensor, scales: torch.Tensor, bits: int) -> np.ndarray:
    """ggml Q4_0 / Q8_0 blocks of R x C codes with R x C/32 scales: per block the float16
    scale, then the 32 codes (Q8_0: int8; Q4_0: code + 8 as nibbles, element j in the low
    and element j + 16 in the high half of byte j). Shape (R, C/32 * block bytes), uint8."""
    R, C = codes.shape
    q = codes.reshape(R, C // 32, 32).numpy()
    d = scales.reshape(R, C // 32, 1).numpy().astype(np.float16).view(np.uint8)
    if bits == 8:
        body = q.astype(np.int8).view(np.uint8)
    else:
        u = (q + 8).astype(np.uint8)
        body = u[..., :16] | (u[..., 16:] << np.uint8(4))
    return np.concatenate([d, body], axis=-1).reshape(R, -1)


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")  # model.layers.<i>.<module>.<sub>.weight
    if parts[:2] != ["model", "layers"]:
        raise SurgeonError(f"no GGUF name for tensor {hf_name}")
    module = ".".join(parts[3:-1])
    if module not in LAYER_NAMES:
        raise SurgeonError(f"no GGUF name for tensor {hf_name}")
    return f"blk.{parts[2]}.{LAYER_NAMES[module]}.{parts[-1]}"


def _tokenizer_metadata(writer, tokenizer) -> None:
    """gpt2-style BPE vocabulary, merges and special tokens (what SmolLM2 and Llama 3 use)."""
    from gguf import TokenType

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise SurgeonError("GGUF export supports BPE tokenizers only")
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL
                            for t in tokens])
    merges = backend["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)


def gguf_type(grid) -> str | None:
    """The ggml block type a quantize-stage grid is (Q4_0, Q8_0), or None."""
    if grid.symmetric and grid.group_size == 32:
        return QTYPES.get(grid.bits)
    return None


def export_gguf(model, tokenizer, codes: dict, out: Path, name: str = "model") -> dict:
    """Write `model` to `out`, its decoder Linears from `codes` ({layer: Quantized} on the
    Q4_0/Q8_0 grid, as the quantize stage saved them)."""
    from gguf import GGMLQuantizationType, GGUFWriter

    cfg = model.config
    if cfg.model_type != "llama":
        raise SurgeonError(f"GGUF export supports the llama architecture, not {cfg.model_type}")
    grids = {q.grid for q in codes.values()}
    grid = grids.pop() if len(grids) == 1 else None
    if grid is None or gguf_type(grid) is None:
        raise SurgeonError("GGUF export needs one Q4_0/Q8_0 grid (symmetric, 4 or 8 bits, "
                           f"groups of 32) for all layers, got {sorted(map(str, grids))}")
    bits = grid.bits
    qtype = getattr(GGMLQuantizationType, QTYPES[bits])
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = GGUFWriter(str(out), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None)
                                    or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(FILE_TYPES[QTYPES[bits]])
    _tokenizer_metadata(writer, tokenizer)

    from .quantize import embedding_codes

    tables = {f"{n}.weight": q for n, q in embedding_codes(model).items()}
    state = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    counts = {"quantized": 0, "q8_0": 0, "f16": 0, "f32": 0}
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    for key, tensor in state.items():
        array = tensor.detach().float().cpu().numpy()
        layer = key.removesuffix(".weight")
        if layer in codes:
            q = codes[layer]
            c, d = q.codes, q.scales
            if layer.rsplit(".", 1)[-1] in heads:  # a row order change: codes and scales alike
                n = heads[layer.rsplit(".", 1)[-1]]
                c, d = rope_permute(c, n), rope_permute(d, n)
            data = pack_blocks(c, d, bits)
            writer.add_tensor(gguf_name(key), data, raw_shape=data.shape, raw_dtype=qtype)
            counts["quantized"] += c.numel()
        elif key in tables:
            data = pack_blocks(tables[key].codes, tables[key].scales, 8)
            writer.add_tensor(gguf_name(key), data, raw_shape=data.shape,
                              raw_dtype=GGMLQuantizationType.Q8_0)
            counts["q8_0"] += array.size
        elif array.ndim == 2:
            writer.add_tensor(gguf_name(key), array.astype(np.float16))
            counts["f16"] += array.size
        else:
            writer.add_tensor(gguf_name(key), array.astype(np.float32))
            counts["f32"] += array.size
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensor_type": QTYPES[bits], "weights": counts}
