"""A Llama whose layers have their own MLP width and head counts (compacted structured models).

Transformers' LlamaConfig has one `intermediate_size` and one head count for every layer. A
compacted model keeps those as the widths of the dense model it came from and adds three lists,
one entry per layer: `layer_intermediate_sizes`, `layer_attention_heads`,
`layer_key_value_heads`. `head_dim` is fixed (RoPE rotates whole heads), so heads are the unit
removed from attention.

Loading: `import surgeon.compact_llama` registers the classes with the Auto* factories, after
which `AutoModelForCausalLM.from_pretrained(folder)` works as for any Llama. The module imports
only torch and transformers; `save_pretrained` copies it into the folder and records it in
`auto_map`, so `from_pretrained(folder, trust_remote_code=True)` also works without this
package.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


class CompactLlamaConfig(LlamaConfig):
    model_type = "llama-compact"

    def __init__(self, layer_intermediate_sizes=None, layer_attention_heads=None,
                 layer_key_value_heads=None, **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        if self.head_dim is None:  # fix it: per-layer head counts must not change it
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.layer_intermediate_sizes = list(layer_intermediate_sizes
                                             or [self.intermediate_size] * n)
        self.layer_attention_heads = list(layer_attention_heads
                                          or [self.num_attention_heads] * n)
        self.layer_key_value_heads = list(layer_key_value_heads
                                          or [self.num_key_value_heads] * n)
        for key in ("layer_intermediate_sizes", "layer_attention_heads",
                    "layer_key_value_heads"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"{key} needs {n} entries (one per layer)")
        for q, kv in zip(self.layer_attention_heads, self.layer_key_value_heads):
            if kv < 1 or q % kv:
                raise ValueError(f"a layer with {q} query heads cannot share {kv} kv heads")


def _resize_layer(layer, config: CompactLlamaConfig, i: int) -> None:
    """Replace the projections of decoder layer i by ones of its own widths."""
    hidden, d = config.hidden_size, config.head_dim
    mlp, attn = layer.mlp, layer.self_attn
    width, heads, kv = (config.layer_intermediate_sizes[i], config.layer_attention_heads[i],
                        config.layer_key_value_heads[i])
    mlp.intermediate_size = width
    mlp.gate_proj = nn.Linear(hidden, width, bias=config.mlp_bias)
    mlp.up_proj = nn.Linear(hidden, width, bias=config.mlp_bias)
    mlp.down_proj = nn.Linear(width, hidden, bias=config.mlp_bias)
    bias = config.attention_bias
    attn.q_proj = nn.Linear(hidden, heads * d, bias=bias)
    attn.k_proj = nn.Linear(hidden, kv * d, bias=bias)
    attn.v_proj = nn.Linear(hidden, kv * d, bias=bias)
    attn.o_proj = nn.Linear(heads * d, hidden, bias=bias)
    attn.num_key_value_groups = heads // kv


class CompactLlamaForCausalLM(LlamaForCausalLM):
    config_class = CompactLlamaConfig

    def __init__(self, config: CompactLlamaConfig):
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            _resize_layer(layer, config, i)
        self.post_init()


AutoConfig.register(CompactLlamaConfig.model_type, CompactLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(CompactLlamaConfig, CompactLlamaForCausalLM, exist_ok=True)
CompactLlamaConfig.register_for_auto_class()
CompactLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
