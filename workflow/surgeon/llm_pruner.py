"""LLM-Pruner (Ma et al. 2023) structured baseline: coupled groups, first-order Taylor importance,
the same number of groups removed in every decoder block (docs/algorithms.md §7).

Coupled groups (structures that can only be removed together, or the model stops being a smaller
model of the same kind):
- MLP channel i of a block: row i of every MLP input layer (Llama gate and up, OPT fc1; with its
  bias entry) and column i of the MLP output layer (Llama down, OPT fc2).
- Phi-3 holds q, k and v in one qkv_proj and gate and up in one gate_up_proj: a group owns
  several row blocks of that one Linear (its q rows, then its k and v rows; gate row i and up
  row I + i). GPT-2 fuses q, k and v the same way in c_attn (its MLP is c_fc, c_proj: no gate).
- Attention group j of a block, GQA-aware: one key/value head together with every query head that
  reads it. With g = num_attention_heads / num_key_value_heads query heads per kv head and head
  dimension d, query head h reads kv head h // g (how Hugging Face repeats kv heads), so group j
  owns q rows [j*g*d, (j+1)*g*d), k and v rows [j*d, (j+1)*d) and the o columns [j*g*d, (j+1)*g*d).
  Removing a whole kv head with all its query heads leaves g query heads per kv head, keeps the
  head dimension (so RoPE is untouched) and is exactly a model with fewer heads; removing single
  query heads would leave kv heads with different numbers of readers. OPT (no GQA) is the case g=1.
Zeroing a group's rows and columns gives the same outputs as slicing them out (a zero q and k row
give uniform attention over a zero value, and the zero o or down columns drop the rest).

Importance of an element is |w * dL/dw| with L the mean next-token cross-entropy over the
calibration windows; a group's score is the sum over the elements it owns.

Per-block counts (uniform ratio): every block removes m MLP channels and a attention groups, the
lowest-scored ones within that block. With r = target parameters / parameters the groups cover,
a starts at floor(r * K) (K groups per block: attention goes at the MLP's ratio, rounded down, so
a group is never removed while the ratio is too small for a whole one) and m is the channel count
that brings the block closest to its share of the target. Only when the channels cannot get within
half a channel of it (all of them removed and still short) is a raised, one group at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .curvature import window_loss
from .errors import SurgeonError
from .models import decoder_blocks, decoder_linears

MLP, ATTENTION = "mlp", "attention"

# local layer names inside one decoder block, by role
LAYOUTS = {
    "llama": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
              "mlp_out": "mlp.down_proj"},
    "opt": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
            "o": "self_attn.out_proj", "mlp_in": ("fc1",), "mlp_out": "fc2"},
    # Phi-3: q, k and v are row blocks of one qkv_proj, gate and up the two halves of gate_up_proj
    "phi3": {"q": "self_attn.qkv_proj", "k": "self_attn.qkv_proj", "v": "self_attn.qkv_proj",
             "o": "self_attn.o_proj", "mlp_in": ("mlp.gate_up_proj",), "mlp_out": "mlp.down_proj",
             "fused_qkv": True, "fused_gate_up": True},
    # GPT-2 (Conv1D layers as Linears, models.linears_for_conv1d): q, k, v in one c_attn
    "gpt2": {"q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "o": "attn.c_proj",
             "mlp_in": ("mlp.c_fc",), "mlp_out": "mlp.c_proj", "fused_qkv": True},
}


@dataclass
class Group:
    """One coupled structure: the output rows and input columns it owns, by decoder-Linear name.
    A span is a range, or a tuple of ranges where one fused Linear holds several of the group's
    roles (Phi-3's qkv_proj: its q, k and v rows; gate_up_proj: its gate and up rows)."""

    block: int
    kind: str  # MLP or ATTENTION
    index: int  # MLP channel or kv head within the block
    rows: dict[str, range | tuple[range, ...]] = field(default_factory=dict)
    cols: dict[str, range | tuple[range, ...]] = field(default_factory=dict)


def span_ranges(span) -> tuple[range, ...]:
    """The ranges of a span (one range, or the parts of a fused Linear's span)."""
    return span if isinstance(span, tuple) else (span,)


def span_indices(span) -> list[int]:
    return [i for r in span_ranges(span) for i in r]


def _layout(model: nn.Module, layers: dict[str, nn.Linear], prefix: str) -> dict:
    local = {name[len(prefix):] for name in layers if name.startswith(prefix)}
    for layout in LAYOUTS.values():
        names = {layout["q"], layout["k"], layout["v"], layout["o"], layout["mlp_out"],
                 *layout["mlp_in"]}
        if local == names:
            return layout
    raise SurgeonError(
        f"coupled heads and channels support Llama-style (q/k/v/o/gate/up/down), OPT, "
        f"Phi-3 (qkv/o/gate_up/down) and GPT-2 decoder blocks; {type(model).__name__} has "
        f"{sorted(local) or 'no Linear layers'}"
    )


def _heads(model: nn.Module, q: nn.Linear, k: nn.Linear, o: nn.Linear,
           fused: bool = False) -> tuple[int, int, int]:
    """(query heads, kv heads, head dimension), checked against the layer shapes (fused: q is
    the qkv Linear, q + 2 kv heads' rows)."""
    n_q = model.config.num_attention_heads
    n_kv = getattr(model.config, "num_key_value_heads", None) or n_q
    d = o.in_features // n_q
    q_rows = q.out_features - (2 * n_kv * d if fused else 0)
    k_rows = n_kv * d if fused else k.out_features
    if (q_rows != n_q * d or k_rows != n_kv * d or o.in_features != n_q * d
            or n_q % n_kv):
        raise SurgeonError(
            f"attention shapes do not match {n_q} query / {n_kv} kv heads: q {q.out_features}, "
            f"k {k.out_features}, o {o.in_features}"
        )
    return n_q, n_kv, d


def coupled_groups(model: nn.Module) -> list[Group]:
    """Every MLP channel and every attention group (one kv head + its query heads), block order."""
    layers = decoder_linears(model)
    blocks = decoder_blocks(model)
    block_prefix = next(name for name, m in model.named_modules() if m is blocks)
    groups = []
    for b in range(len(blocks)):
        prefix = f"{block_prefix}.{b}."
        lay = _layout(model, layers, prefix)
        fused, fused_gate_up = lay.get("fused_qkv", False), lay.get("fused_gate_up", False)
        name = {role: prefix + lay[role] for role in ("q", "k", "v", "o", "mlp_out")}
        mlp_in = [prefix + local for local in lay["mlp_in"]]
        channels = layers[name["mlp_out"]].in_features
        for i in range(channels):
            span = range(i, i + 1)
            rows = {n: (span, range(channels + i, channels + i + 1)) if fused_gate_up else span
                    for n in mlp_in}  # fused gate_up: gate row i and up row channels + i
            groups.append(Group(b, MLP, i, rows, {name["mlp_out"]: span}))
        n_q, n_kv, d = _heads(model, layers[name["q"]], layers[name["k"]], layers[name["o"]],
                              fused)
        width = n_q // n_kv * d  # q rows (and o columns) of one kv head's query heads
        for j in range(n_kv):
            q_span, kv_span = range(j * width, (j + 1) * width), range(j * d, (j + 1) * d)
            if fused:  # qkv rows: q of every head, then k, then v
                k_at, v_at = n_q * d, (n_q + n_kv) * d
                rows = {name["q"]: (q_span, range(k_at + kv_span.start, k_at + kv_span.stop),
                                    range(v_at + kv_span.start, v_at + kv_span.stop))}
            else:
                rows = {name["q"]: q_span, name["k"]: kv_span, name["v"]: kv_span}
            groups.append(Group(b, ATTENTION, j, rows, {name["o"]: q_span}))
    return groups


def _decoder_params(layers: dict[str, nn.Linear]) -> list[torch.Tensor]:
    return [p for layer in layers.values() for p in (layer.weight, layer.bias) if p is not None]


def taylor_importance(model: nn.Module, windows: torch.Tensor,
                      batch_size: int = 1) -> dict[str, torch.Tensor]:
    """|W * dL/dW| per decoder Linear (and `<name>.bias`: |b * dL/db| where there is a bias).

    L is the mean next-token cross-entropy over all tokens of all windows; the gradient is
    accumulated batch by batch with torch.autograd.grad into buffers of our own, so no parameter
    ever gets a `.grad`. Runs in eval mode on the model's device and dtype; the weights, the
    requires_grad flags and the train/eval mode are left as they were.
    """
    if windows.dim() != 2 or len(windows) == 0 or windows.shape[1] < 2:
        raise SurgeonError(
            f"need calibration windows of shape (n, seqlen>=2), got {tuple(windows.shape)}")
    layers = decoder_linears(model)
    params = _decoder_params(layers)
    device = params[0].device
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    grads = [torch.zeros_like(p) for p in params]
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size].to(device)
            loss = window_loss(model, batch, "empirical") / tokens
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc.add_(g)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)
    grad_of = dict(zip(map(id, params), grads))
    importance = {}
    for name, layer in layers.items():
        importance[name] = (layer.weight.detach() * grad_of[id(layer.weight)]).abs()
        if layer.bias is not None:
            importance[f"{name}.bias"] = (layer.bias.detach() * grad_of[id(layer.bias)]).abs()
    return importance


def _prefix_sums(values: torch.Tensor) -> list[float]:
    return [0.0] + values.double().cumsum(0).tolist()


def group_scores(groups: list[Group], importance: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of element importance over each group's rows (with their bias entries) and columns.

    A row and a column of the same layer owned by one group share one element: counted once.
    """
    row_sums, col_sums = {}, {}
    scores = []
    for group in groups:
        total = 0.0
        for name, span in group.rows.items():
            if name not in row_sums:
                per_row = importance[name].sum(dim=1)
                if f"{name}.bias" in importance:
                    per_row = per_row + importance[f"{name}.bias"]
                row_sums[name] = _prefix_sums(per_row)
            for part in span_ranges(span):
                total += row_sums[name][part.stop] - row_sums[name][part.start]
        for name, span in group.cols.items():
            if name not in col_sums:
                col_sums[name] = _prefix_sums(importance[name].sum(dim=0))
            total += col_sums[name][span.stop] - col_sums[name][span.start]
            if name in group.rows:
                rows = group.rows[name]
                total -= float(importance[name][rows.start:rows.stop, span.start:span.stop].sum())
        scores.append(total)
    return torch.tensor(scores, dtype=torch.float64)


def _removed(rows: int, cols: int, layer: nn.Linear) -> int:
    """Parameters of `rows` whole rows (with bias) and `cols` whole columns, overlap once."""
    R, C = layer.out_features, layer.in_features
    return rows * (C + (layer.bias is not None)) + cols * R - rows * cols


def group_params(group: Group, layers: dict[str, nn.Linear]) -> int:
    """Decoder-Linear parameters one group owns (weights + biases of its rows, its columns)."""
    names = set(group.rows) | set(group.cols)
    return sum(_removed(len(span_indices(group.rows.get(n, ()))),
                        len(span_indices(group.cols.get(n, ()))), layers[n]) for n in names)


def group_masks(model: nn.Module,
                groups: list[Group]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(removed_rows, removed_cols) boolean vectors per decoder Linear for a set of groups."""
    masks = {
        name: (torch.zeros(layer.out_features, dtype=torch.bool),
               torch.zeros(layer.in_features, dtype=torch.bool))
        for name, layer in decoder_linears(model).items()
    }
    for group in groups:
        for name, span in group.rows.items():
            for part in span_ranges(span):
                masks[name][0][part.start:part.stop] = True
        for name, span in group.cols.items():
            for part in span_ranges(span):
                masks[name][1][part.start:part.stop] = True
    return masks


def _by_block_and_kind(groups: list[Group]) -> dict[tuple[int, str], list[int]]:
    """Positions in `groups` of each (block, kind), in group-index order."""
    out: dict[tuple[int, str], list[int]] = {}
    for pos, group in enumerate(groups):
        out.setdefault((group.block, group.kind), []).append(pos)
    for positions in out.values():
        positions.sort(key=lambda pos: groups[pos].index)
    return out


def uniform_counts(model: nn.Module, groups: list[Group], fraction: float) -> dict[str, int]:
    """How many groups of each kind every block removes (the rule in the module docstring)."""
    if not 0.0 <= fraction <= 1.0:
        raise SurgeonError(f"target fraction must be in [0, 1], got {fraction}")
    layers = decoder_linears(model)
    by = _by_block_and_kind(groups)
    blocks = sorted({b for b, _ in by})
    count, size = {}, {}
    for kind in (MLP, ATTENTION):
        members = [by.get((b, kind), []) for b in blocks]
        sizes = {group_params(groups[pos], layers) for m in members for pos in m}
        if len({len(m) for m in members}) != 1 or len(sizes) > 1:
            raise SurgeonError(f"{kind} groups differ between blocks: no uniform per-block ratio")
        count[kind], size[kind] = len(members[0]), sizes.pop() if sizes else 0
    total = sum(p.numel() for p in _decoder_params(layers))
    per_block = fraction * total / len(blocks)  # this block's share of the target
    covered = count[MLP] * size[MLP] + count[ATTENTION] * size[ATTENTION]
    ratio = min(per_block / covered, 1.0) if covered else 0.0
    best = None
    for a in range(math.floor(ratio * count[ATTENTION] + 1e-9), count[ATTENTION] + 1):
        rest = per_block - a * size[ATTENTION]
        m = min(max(math.floor(rest / size[MLP] + 0.5), 0), count[MLP]) if size[MLP] else 0
        error = abs(rest - m * size[MLP])
        if best is None or error < best[0]:
            best = (error, m, a)
        if error <= size[MLP] / 2:
            break
    _, m, a = best
    return {MLP: m, ATTENTION: a}


def llm_pruner_masks(model: nn.Module, groups: list[Group], scores: torch.Tensor,
                     fraction: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Remove, in every block, the lowest-scored uniform_counts() groups of each kind.

    Ties go to the lower group index. Returns (removed_rows, removed_cols) per decoder Linear.
    """
    if len(scores) != len(groups):
        raise SurgeonError(f"{len(scores)} scores for {len(groups)} groups")
    counts = uniform_counts(model, groups, fraction)
    scores = torch.as_tensor(scores, dtype=torch.float64).cpu()
    chosen = []
    for (_, kind), positions in _by_block_and_kind(groups).items():
        order = scores[positions].argsort(stable=True)[: counts[kind]]
        chosen.extend(groups[positions[i]] for i in order.tolist())
    return group_masks(model, chosen)


