"""Decoder models whose layers have their own MLP width and head counts (compacted models).

Transformers' configs of Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3 and GPT-2 have
one MLP width (`intermediate_size`; GPT-2's `n_inner`, 4 x hidden when None) and one head count
for every layer. A compacted model keeps those as the widths of the dense model it came from
and adds three lists, one entry per layer: `layer_intermediate_sizes`, `layer_attention_heads`,
`layer_key_value_heads`. `head_dim` is fixed (RoPE rotates whole heads, Qwen3's q/k norms act
on one head, GPT-2's attention scale is 1/sqrt(head_dim)), so heads are the unit removed from
attention. Each family keeps its own classes and model_type with `-compact` appended
(`llama-compact`, `qwen2-compact`, `gpt2-compact`, ...): the attention, norms and biases of the
family are untouched, only the projections of each layer are resized (GPT-2's as Conv1D, so
its folder is stored in GPT-2's own layout).

Loading: `import surgeon.compact_models` registers the classes with the Auto* factories,
after which `AutoModelForCausalLM.from_pretrained(folder)` works as for the dense family. The
module imports only torch and transformers; `save_pretrained` copies it into the folder and
records it in `auto_map`, so `from_pretrained(folder, trust_remote_code=True)` also works
without this package.
"""

from __future__ import annotations

import copy

from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM,
                          Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)
from transformers.pytorch_utils import Conv1D

WIDTH_KEYS = ("layer_intermediate_sizes", "layer_attention_heads", "layer_key_value_heads")


def dense_widths(config) -> tuple[int, int, int]:
    """(MLP width, query heads, kv heads) every layer of the dense config has: GPT-2 names its
    width n_inner (None: 4 x hidden) and has one kv head per query head."""
    width = getattr(config, "intermediate_size", None)
    if width is None:
        width = getattr(config, "n_inner", None) or 4 * config.hidden_size
    heads = config.num_attention_heads
    return width, heads, getattr(config, "num_key_value_heads", None) or heads


class PerLayerWidths:
    """Config mixin: the three per-layer lists (default: the dense widths) and a fixed
    head_dim."""

    def __init__(self, layer_intermediate_sizes=None, layer_attention_heads=None,
                 layer_key_value_heads=None, **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        if getattr(self, "head_dim", None) is None:  # per-layer head counts must not change it
            self.head_dim = self.hidden_size // self.num_attention_heads
        width, heads, kv = dense_widths(self)
        self.layer_intermediate_sizes = list(layer_intermediate_sizes or [width] * n)
        self.layer_attention_heads = list(layer_attention_heads or [heads] * n)
        self.layer_key_value_heads = list(layer_key_value_heads or [kv] * n)
        for key in WIDTH_KEYS:
            if len(getattr(self, key)) != n:
                raise ValueError(f"{key} needs {n} entries (one per layer)")
        for q, kv in zip(self.layer_attention_heads, self.layer_key_value_heads):
            if kv < 1 or q % kv:
                raise ValueError(f"a layer with {q} query heads cannot share {kv} kv heads")


def _resized(linear: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    """A Linear of the new shape, with a bias where the family's had one."""
    return nn.Linear(in_features, out_features, bias=linear.bias is not None)


def resize_gpt2_layer(layer, config, i: int) -> None:
    """GPT-2's block i with Conv1D projections of its own widths (Conv1D(out, in)); its
    attention splits c_attn's output into q, k and v at split_size, so that moves too."""
    hidden, d = config.hidden_size, config.head_dim
    width, heads = config.layer_intermediate_sizes[i], config.layer_attention_heads[i]
    if config.layer_key_value_heads[i] != heads:
        raise ValueError(f"GPT-2 attention has one kv head per query head, not {heads} query "
                         f"and {config.layer_key_value_heads[i]} kv heads")
    layer.mlp.c_fc, layer.mlp.c_proj = Conv1D(width, hidden), Conv1D(hidden, width)
    attn = layer.attn
    attn.c_attn, attn.c_proj = Conv1D(3 * heads * d, hidden), Conv1D(hidden, heads * d)
    attn.num_heads, attn.split_size = heads, heads * d


def resize_layer(layer, config, i: int) -> None:
    """Replace the projections of decoder layer i by ones of its own widths."""
    if hasattr(layer, "attn"):  # GPT-2
        resize_gpt2_layer(layer, config, i)
        return
    hidden, d = config.hidden_size, config.head_dim
    mlp, attn = layer.mlp, layer.self_attn
    width, heads, kv = (config.layer_intermediate_sizes[i], config.layer_attention_heads[i],
                        config.layer_key_value_heads[i])
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: gate rows then up rows in one Linear
        mlp.gate_up_proj = _resized(mlp.gate_up_proj, 2 * width, hidden)
    else:
        mlp.gate_proj = _resized(mlp.gate_proj, width, hidden)
        mlp.up_proj = _resized(mlp.up_proj, width, hidden)
    mlp.down_proj = _resized(mlp.down_proj, hidden, width)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width
    if hasattr(attn, "qkv_proj"):
        # Phi-3 splits qkv by the head counts of its config and num_key_value_heads: this
        # layer's attention gets a copy of the config with its own counts
        attn.qkv_proj = _resized(attn.qkv_proj, (heads + 2 * kv) * d, hidden)
        attn.config = copy.copy(config)
        attn.config.num_attention_heads, attn.config.num_key_value_heads = heads, kv
        attn.num_key_value_heads = kv
    else:
        attn.q_proj = _resized(attn.q_proj, heads * d, hidden)
        attn.k_proj = _resized(attn.k_proj, kv * d, hidden)
        attn.v_proj = _resized(attn.v_proj, kv * d, hidden)
    attn.o_proj = _resized(attn.o_proj, hidden, heads * d)
    attn.num_key_value_groups = heads // kv


class PerLayerModel:
    """Model mixin: after the family's own construction, every layer resized."""

    def __init__(self, config):
        super().__init__(config)
        layers = self.transformer.h if hasattr(self, "transformer") else self.model.layers
        for i, layer in enumerate(layers):
            resize_layer(layer, config, i)
        self.post_init()


def compact_pair(model_type: str, config_class, model_class) -> tuple[type, type]:
    """Compact<Config> and Compact<Model> of a family: its own classes with per-layer widths
    and model_type `<model_type>-compact`. Defined at module level (below), so a folder's
    auto_map finds them by name in this module."""
    config = type(f"Compact{config_class.__name__}", (PerLayerWidths, config_class),
                  {"model_type": f"{model_type}-compact"})
    model = type(f"Compact{model_class.__name__}", (PerLayerModel, model_class),
                 {"config_class": config})
    return config, model


# dense model_type -> (compact config class, compact model class)
COMPACT = {
    model_type: compact_pair(model_type, config_class, model_class)
    for model_type, config_class, model_class in (
        ("llama", LlamaConfig, LlamaForCausalLM),
        ("mistral", MistralConfig, MistralForCausalLM),
        ("qwen2", Qwen2Config, Qwen2ForCausalLM),
        ("qwen3", Qwen3Config, Qwen3ForCausalLM),
        ("gemma2", Gemma2Config, Gemma2ForCausalLM),
        ("gemma3_text", Gemma3TextConfig, Gemma3ForCausalLM),
        ("phi3", Phi3Config, Phi3ForCausalLM),
        ("gpt2", GPT2Config, GPT2LMHeadModel),
    )
}
globals().update({cls.__name__: cls for pair in COMPACT.values() for cls in pair})

for _config, _model in COMPACT.values():
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForCausalLM.register(_config, _model, exist_ok=True)
    _config.register_for_auto_class()
    _model.register_for_auto_class("AutoModelForCausalLM")
