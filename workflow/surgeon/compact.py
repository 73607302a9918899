"""Compaction: remove the zeroed rows and columns of a structurally pruned model for real
(Llama, Mistral, Qwen2, Qwen3, Gemma 2/3, Phi-3, GPT-2: compact_models.py).

Which units can go without changing the function (exactly, not approximately):

* MLP channel i, out = down(act(gate x) * up x): removable when down's column i is zero, or
  up's row i is zero, or gate's row i is zero and act(0) = 0 (SiLU) -- biases included.
  Gate row, up row and down column go together. GPT-2's out = c_proj(act(c_fc x)) has no up:
  c_fc is the gate (GELU(0) = 0).
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


def _zero_rows(layer: nn.Linear, rows: slice = slice(None)) -> torch.Tensor:
    """Which of `rows` of the Linear are zero, weight and bias entry."""
    zero = (layer.weight[rows] == 0).all(dim=1)
    return zero & (layer.bias[rows] == 0) if layer.bias is not None else zero


def attention(layer) -> nn.Module:
    """The attention module of a decoder layer (GPT-2: attn, the others: self_attn)."""
    return layer.attn if hasattr(layer, "attn") else layer.self_attn


def output_projection(module) -> nn.Linear:
    """The Linear an attention or MLP module ends with (o_proj / down_proj; GPT-2: c_proj)."""
    for name in ("o_proj", "down_proj", "c_proj"):
        if hasattr(module, name):
            return getattr(module, name)
    raise SurgeonError(f"no output projection in {type(module).__name__}")


def fused_qkv(attn) -> nn.Linear | None:
    """The one Linear holding q, k and v rows (Phi-3's qkv_proj, GPT-2's c_attn), or None."""
    return getattr(attn, "qkv_proj", None) or getattr(attn, "c_attn", None)


def mlp_rows(mlp) -> tuple[nn.Linear, slice, nn.Linear | None, slice | None, object]:
    """(gate Linear, its rows, up Linear, its rows, activation): Phi-3's gate_up_proj holds
    the gate rows, then the up rows; GPT-2's c_fc is a gate with no up (None)."""
    if hasattr(mlp, "gate_up_proj"):
        width = mlp.down_proj.in_features
        return (mlp.gate_up_proj, slice(0, width), mlp.gate_up_proj, slice(width, 2 * width),
                mlp.activation_fn)
    if hasattr(mlp, "c_fc"):
        return mlp.c_fc, slice(None), None, None, mlp.act
    return mlp.gate_proj, slice(None), mlp.up_proj, slice(None), mlp.act_fn


def attention_counts(attn) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim) of an attention module, from its Linears' shapes."""
    d = attn.head_dim
    heads = output_projection(attn).in_features // d
    qkv = fused_qkv(attn)
    if qkv is not None:  # Phi-3, GPT-2: q rows of every head, then k, then v
        return heads, (qkv.out_features - heads * d) // (2 * d), d
    return heads, attn.k_proj.out_features // d, d


def removable_channels(mlp) -> torch.Tensor:
    """Boolean (intermediate,) mask of MLP channels that contribute nothing."""
    gate, gate_rows, up, up_rows, act = mlp_rows(mlp)
    dead = (output_projection(mlp).weight == 0).all(dim=0)
    if up is not None:
        dead |= _zero_rows(up, up_rows)
    if float(act(torch.zeros(1))) == 0.0:
        dead |= _zero_rows(gate, gate_rows)
    return dead


def removable_heads(attn, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """Boolean (heads,) mask of query heads whose output is zero whatever the input."""
    o_dead = (output_projection(attn).weight == 0).view(-1, heads, head_dim).all(dim=2) \
        .all(dim=0)
    qkv = fused_qkv(attn)
    if qkv is not None:
        v_rows = _zero_rows(qkv, slice((heads + kv_heads) * head_dim, None))
    else:
        v_rows = _zero_rows(attn.v_proj)
    v_dead = v_rows.view(kv_heads, head_dim).all(dim=1)
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
        raise SurgeonError(f"compaction supports {', '.join(COMPACT)} models, not "
                           f"{model.config.model_type}")
    return COMPACT[family]


def layer_plans(model) -> list[LayerPlan]:
    from .models import decoder_blocks

    compact_classes(model)  # refuses other families
    plans = []
    for layer in decoder_blocks(model):
        attn = attention(layer)
        heads, kv, d = attention_counts(attn)
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


def _sliced_mlp(mlp, channels: torch.Tensor) -> dict[nn.Linear, dict]:
    """The MLP's Linears cut to the kept channels: rows of the input layers, columns of the
    output layer (Phi-3's gate_up_proj: the kept gate rows, then the same up rows)."""
    gate, _, up, _, _ = mlp_rows(mlp)
    down = output_projection(mlp)
    sliced = {down: _take(down, cols=channels)}
    if gate is up:
        sliced[gate] = _take(gate, rows=torch.cat([channels, down.in_features + channels]))
    else:
        sliced.update({layer: _take(layer, rows=channels) for layer in (gate, up)
                       if layer is not None})
    return sliced


def _sliced_attention(attn, plan: LayerPlan) -> dict[nn.Linear, dict]:
    """The attention's Linears cut to the kept heads: q/k/v rows (in a fused Linear the kept
    q rows, then k rows, then v rows), the output layer's columns."""
    heads, kv_heads, d = attention_counts(attn)
    q, kv = _units(plan.heads, d), _units(plan.kv_heads, d)
    o = output_projection(attn)
    qkv = fused_qkv(attn)
    if qkv is not None:
        rows = torch.cat([q, heads * d + kv, (heads + kv_heads) * d + kv])
        return {o: _take(o, cols=q), qkv: _take(qkv, rows=rows)}
    return {o: _take(o, cols=q), attn.q_proj: _take(attn.q_proj, rows=q),
            attn.k_proj: _take(attn.k_proj, rows=kv), attn.v_proj: _take(attn.v_proj, rows=kv)}


def compact_state(model, plans: list[LayerPlan]) -> dict[str, torch.Tensor]:
    """The state dict of the compacted model: decoder Linears sliced, everything else copied."""
    from .models import decoder_blocks

    state = dict(model.state_dict())
    names = {m: n for n, m in model.named_modules()}
    for layer, plan in zip(decoder_blocks(model), plans):
        sliced = {**_sliced_mlp(layer.mlp, plan.channels),
                  **_sliced_attention(attention(layer), plan)}
        for module, tensors in sliced.items():
            for kind, tensor in tensors.items():
                state[f"{names[module]}.{kind}"] = tensor
    return state


def compact_config(model, plans: list[LayerPlan]):
    from .compact_models import WIDTH_KEYS
    from .models import decoder_blocks

    config_class, _ = compact_classes(model)
    base = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", *WIDTH_KEYS):
        base.pop(key, None)
    base["head_dim"] = attention(decoder_blocks(model)[0]).head_dim
    return config_class(
        layer_intermediate_sizes=[len(p.channels) for p in plans],
        layer_attention_heads=[len(p.heads) for p in plans],
        layer_key_value_heads=[len(p.kv_heads) for p in plans],
        **base,
    )


def compact_model(model):
    """(compacted model of the family's Compact* class, summary of what was and was not
    removed). Save it with models.save_model, which writes GPT-2's layers in Conv1D layout."""
    from .models import decoder_linears, linears_for_conv1d

    plans = layer_plans(model)
    config = compact_config(model, plans)
    small = compact_classes(model)[1](config).to(next(model.parameters()).dtype)
    linears_for_conv1d(small)  # GPT-2's Conv1D layers as Linears, as the model they are cut from
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
