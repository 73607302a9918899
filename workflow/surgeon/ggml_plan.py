"""Which ggml block type each tensor gets for a llama.cpp file type, as `llama-quantize` chooses.

A file type (`Q4_K_M`, ...) is a mixture: llama.cpp's `llama_tensor_get_type` gives most weights
the type's default block and some more bits, then falls back to a 32-weight block where a row
is not a whole number of 256-weight super-blocks. Writing the same mixture makes our files
comparable with llama.cpp's own at the same size. For the dense architectures written here
(Llama, Qwen, Gemma 2/3, Phi-3, GPT-2; fused matrices are plain matrices) and these types:

* output head (or the token embedding when it is tied to it): Q8_0 if the row width is not a
  multiple of the default type's block, else Q6_K (Q8_0 files: Q8_0);
* Q4_K_M: attn_v (Phi-3, GPT-2: the fused attn_qkv, which llama-quantize counts as attn_v) and
  ffn_down of the layers `use_more_bits` picks get Q6_K;
* every other weight matrix, an untied token embedding included: the default type;
* then, for a row width that 256 does not divide, Q4_K -> Q5_0 and Q6_K -> Q8_0.
"""

from __future__ import annotations

from .errors import SurgeonError

# transformers model_type -> llama.cpp architecture of the .gguf we write (Mistral is written
# as llama, as llama.cpp's converter does; text-only Gemma 3 as gemma3); only llama's rotary
# layout differs from transformers'. Here, torch-free, so the workflow can plan exports from it.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                 "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "gpt2": "gpt2"}

# llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers and the default block type of each file type
FILE_TYPES = {"Q4_0": 2, "Q8_0": 7, "Q5_0": 8, "Q4_K_M": 15, "Q6_K": 18}
DEFAULT_TYPE = {"Q4_0": "Q4_0", "Q8_0": "Q8_0", "Q5_0": "Q5_0", "Q4_K_M": "Q4_K",
                "Q6_K": "Q6_K"}
FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
# the Linears behind llama-quantize's attn_v-like tensors (attn_v, the fused attn_qkv of Phi-3
# and GPT-2) and ffn_down, which Q4_K_M gives Q6_K in the layers use_more_bits picks
MORE_BITS_LINEARS = (".v_proj", ".qkv_proj", ".down_proj", ".attn.c_attn", ".mlp.c_proj")


def block_size(ggml_type: str) -> int:
    from .quantize import GGML_GRIDS

    grid = GGML_GRIDS[ggml_type]
    return grid.super_size or grid.group_size


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's pick of layers that get more bits: the first and last eighth, and every
    third layer in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def with_fallback(ggml_type: str, columns: int) -> str:
    if columns % block_size(ggml_type):
        ggml_type = FALLBACK.get(ggml_type, ggml_type)
    if columns % block_size(ggml_type):
        raise SurgeonError(f"no ggml block type fits rows of {columns} weights "
                           f"({ggml_type} needs a multiple of {block_size(ggml_type)})")
    return ggml_type


def tensor_types(model, file_type: str) -> dict[str, str]:
    """{module name: ggml type} for the decoder Linears, the token embedding and an untied
    output head of `model` under llama.cpp's `file_type`."""
    from .models import decoder_linears
    from .quantize import embedding_tables
    from .spectra import block_index

    if file_type not in FILE_TYPES:
        raise SurgeonError(f"unknown GGUF file type '{file_type}' "
                           f"(one of {', '.join(FILE_TYPES)})")
    default = DEFAULT_TYPE[file_type]
    n_layers = model.config.num_hidden_layers
    types = {}
    for name, layer in decoder_linears(model).items():
        chosen = default
        if file_type == "Q4_K_M" and name.endswith(MORE_BITS_LINEARS) \
                and use_more_bits(block_index(name), n_layers):
            chosen = "Q6_K"
        types[name] = with_fallback(chosen, layer.weight.shape[1])
    tables = embedding_tables(model)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    for name, table in tables.items():
        columns = table.weight.shape[1]
        if table is head or tied:  # the output head, or the embedding serving as it
            chosen = "Q8_0" if columns % block_size(default) or default == "Q8_0" else "Q6_K"
        else:
            chosen = default
        types[name] = with_fallback(chosen, columns)
    return types


def file_type_grids(model, file_type: str) -> tuple[dict, dict]:
    """({decoder Linear: quantize.Grid}, {embedding table: quantize.Grid}) of tensor_types."""
    from .models import decoder_linears
    from .quantize import GGML_GRIDS

    layers = decoder_linears(model)
    grids = {name: GGML_GRIDS[t] for name, t in tensor_types(model, file_type).items()}
    return ({n: g for n, g in grids.items() if n in layers},
            {n: g for n, g in grids.items() if n not in layers})
