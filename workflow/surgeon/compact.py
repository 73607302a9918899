"""Compaction: remove the zeroed rows and columns of a structurally pruned model for real
(Llama, Mistral, Qwen2, Qwen3, Gemma 2/3: compact_models.py).

Which units can go without changing the function (exactly, not approximately):

* MLP channel i, out = down(act(gate x) * up x): removable when down's column i is zero, or
  up's row i is zero, or gate's row i is zero and act(0) = 0 (SiLU) -- biases included.
  Gate row, up row and down column go together.
* Query head h: removable when its o_proj columns are zero (its output is never read) or when
  the v rows of its kv head are zero (it only averages zeros). A head whose q rows are zero is
  NOT removable: it attends uniformly and still passes a mean of the values on.
* kv head: removable when every query head of its GQA group is.
Every layer needs the same number of query heads per kv head, so groups are padded back to the
largest group with removable heads of their own (their o_proj columns are zero, so they add
nothing). Zeros inside a kept head (RoPE rotates whole heads), in the residual dimension
(input columns of q/k/v/gate/up, output rows of o/down) and padded heads stay: the summary's
`zero_weights_left` counts them, `realised_fraction` is the share of zeros that went.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import SurgeonError


@dataclass
class LayerPlan:
    channels: torch.Tensor  # kept MLP channels (sorted)
    heads: torch.Tensor  # kept query heads, grouped by kv head, group-major
    kv_heads: torch.Tensor  # kept kv heads
    padded_heads: int  # removable query heads kept only to even out the groups


def _zero_rows(layer: nn.Linear) -> torch.Tensor:
    zero = (layer.weight == 0).all(dim=1)
    return zero & (layer.bias == 0) if layer.bias is not None else zero


def removable_channels(mlp) -> torch.Tensor:
    """Boolean (intermediate,) mask of MLP channels that contribute nothing."""
    dead = (mlp.down_proj.weight == 0).all(dim=0) | _zero_rows(mlp.up_proj)
    if float(mlp.act_fn(torch.zeros(1))) == 0.0:
        dead |= _zero_rows(mlp.gate_proj)
    return dead


def removable_heads(attn, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """Boolean (heads,) mask of query heads whose output is zero whatever the input."""
    o_dead = (attn.o_proj.weight == 0).view(-1, heads, head_dim).all(dim=2).all(dim=0)
    v_dead = _zero_rows(attn.v_proj).view(kv_heads, head_dim).all(dim=1)
    return o_dead | v_dead.repeat_interleave(heads // kv_heads)


def head_plan(removable: torch.Tensor, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Kept query heads (group-major, equal count per kept group), kept kv heads, padding."""
    groups = removable.view(kv_heads, -1)
    live = [torch.nonzero(~g).flatten() for g in groups]
    per_group = max(1, max(len(x) for x in live))
    kept_kv = [g for g in range(kv_heads) if len(live[g])] or [0]
    heads, padded = [], 0
    for g in kept_kv:
        dead = torch.nonzero(groups[g]).flatten()
        pad = per_group - len(live[g])
        chosen = torch.cat([live[g], dead[:pad]]).sort().values
        heads.append(chosen + g * groups.shape[1])
        padded += pad
    return torch.cat(heads), torch.tensor(kept_kv), padded


def compact_classes(model):
    """(config class, model class) of the compacted form of `model`'s family (a compacted
    model compacts again into its own family's classes)."""
    from .compact_models import COMPACT

    family = model.config.model_type.removesuffix("-compact")
    if family not in COMPACT:
        raise SurgeonError(f"compaction supports {', '.join(COMPACT)} models (separate q/k/v "
                           f"and gate/up/down Linears), not {model.config.model_type}")
    return COMPACT[family]


def layer_plans(model) -> list[LayerPlan]:
    compact_classes(model)  # refuses other families
    plans = []
    for layer in model.model.layers:
        attn = layer.self_attn
        d = attn.head_dim
        heads = attn.q_proj.out_features // d
        kv = attn.k_proj.out_features // d
        channels = torch.nonzero(~removable_channels(layer.mlp)).flatten()
        if len(channels) == 0:  # keep one (dead) channel so every Linear has a width
            channels = torch.tensor([0])
        q, k, pad = head_plan(removable_heads(attn, heads, kv, d), kv)
        plans.append(LayerPlan(channels, q, k, pad))
    return plans


def _units(index: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of the heads in `index` when each head spans `size` rows."""
    return (index[:, None] * size + torch.arange(size)).flatten()


def _take(layer: nn.Linear, rows=None, cols=None) -> dict:
    w = layer.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    out = {"weight": w.clone()}
    if layer.bias is not None:
        out["bias"] = (layer.bias.detach() if rows is None else layer.bias.detach()[rows]).clone()
    return out


def compact_state(model, plans: list[LayerPlan]) -> dict[str, torch.Tensor]:
    """The state dict of the compacted model: decoder Linears sliced, everything else copied."""
    state = dict(model.state_dict())
    for i, (layer, plan) in enumerate(zip(model.model.layers, plans)):
        attn, mlp, d = layer.self_attn, layer.mlp, layer.self_attn.head_dim
        q, kv = _units(plan.heads, d), _units(plan.kv_heads, d)
        sliced = {
            "mlp.gate_proj": _take(mlp.gate_proj, rows=plan.channels),
            "mlp.up_proj": _take(mlp.up_proj, rows=plan.channels),
            "mlp.down_proj": _take(mlp.down_proj, cols=plan.channels),
            "self_attn.q_proj": _take(attn.q_proj, rows=q),
            "self_attn.k_proj": _take(attn.k_proj, rows=kv),
            "self_attn.v_proj": _take(attn.v_proj, rows=kv),
            "self_attn.o_proj": _take(attn.o_proj, cols=q),
        }
        for module, tensors in sliced.items():
            for kind, tensor in tensors.items():
                state[f"model.layers.{i}.{module}.{kind}"] = tensor
    return state


def compact_config(model, plans: list[LayerPlan]):
    from .compact_models import WIDTH_KEYS

    config_class, _ = compact_classes(model)
    base = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", *WIDTH_KEYS):
        base.pop(key, None)
    base["head_dim"] = model.model.layers[0].self_attn.head_dim
    return config_class(
        layer_intermediate_sizes=[len(p.channels) for p in plans],
        layer_attention_heads=[len(p.heads) for p in plans],
        layer_key_value_heads=[len(p.kv_heads) for p in plans],
        **base,
    )


def compact_model(model):
    """(compacted model of the family's Compact* class, summary of what was and was not
    removed)."""
    from .models import decoder_linears

    plans = layer_plans(model)
    config = compact_config(model, plans)
    small = compact_classes(model)[1](config).to(next(model.parameters()).dtype)
    small.load_state_dict(compact_state(model, plans), strict=True)
    small.eval()

    def linear_stats(m):
        layers = decoder_linears(m).items()
        params = sum(layer.weight.numel() for _, layer in layers)
        zeros = {}
        for name, layer in layers:
            kind = name.rsplit(".", 1)[-1]
            zeros[kind] = zeros.get(kind, 0) + int((layer.weight == 0).sum())
        return params, zeros

    params_before, zeros_before = linear_stats(model)
    params_after, zeros_after = linear_stats(small)
    heads = model.config.num_attention_heads * len(plans)
    summary = {
        "decoder_linear_params_before": params_before,
        "decoder_linear_params_after": params_after,
        "zero_weights_before": sum(zeros_before.values()),
        "removed_weights": params_before - params_after,
        "zero_weights_left": sum(zeros_after.values()),
        "zero_weights_left_by_module": zeros_after,
        "mlp_channels": [len(p.channels) for p in plans],
        "attention_heads": [len(p.heads) for p in plans],
        "key_value_heads": [len(p.kv_heads) for p in plans],
        "padded_heads": sum(p.padded_heads for p in plans),
        "removed_heads": heads - sum(len(p.heads) for p in plans),
    }
    zero, left = summary["zero_weights_before"], summary["zero_weights_left"]
    summary["realised_fraction"] = round((zero - left) / zero, 4) if zero else 1.0
    return small, summary
