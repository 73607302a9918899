"""Weight quantization: round to nearest (RTN) and GPTQ with H = the K-FAC A factor (docs/algorithms.md §8).

Grids, per group of `group_size` consecutive input columns of a row, scales stored as float16:

* symmetric 4 bit = llama.cpp Q4_0: d = m / -8 with m the group's element of largest magnitude
  (sign kept), codes q in [-8, 7], w ~ q d.
* symmetric 8 bit = llama.cpp Q8_0: d = max|w| / 127, q in [-127, 127].
* symmetric 5 bit = llama.cpp Q5_0: d = m / -16, q in [-16, 15].
* asymmetric b bit: d = (max(w, 0) - min(w, 0)) / (2^b - 1), integer zero point z = round(-min/d),
  q in [0, 2^b - 1], w ~ (q - z) d.
* K-quants (`super_size` 256): a float16 super-block scale D multiplies each group's small
  integer scale s, d = D s. Q6_K: groups of 16, s int8, q in [-32, 31]; D = s_max / -128 of
  the groups' Q5_0-style scales. Q4_K: groups of 32, 6-bit s and 6-bit min m, q in [0, 15],
  w ~ D s q - Dmin m. llama.cpp's m is free; here Dmin = D r with r a power of two and
  m = z s / r, so the min is an integer zero point z and zero stays on the grid (`super_scales`,
  `kquant_group_scales`).
Zero is on every grid, and removed (pruned) weights are forced to code 0 (z when asymmetric),
so a pruned model keeps its exact sparsity pattern.

GPTQ (Frantar et al. 2023): columns left to right, each quantized and its error fed to the
columns on its right through the upper Cholesky factor U of H^-1, err = (w - q) / U_cc,
W[:, c:] -= err U[c, c:]; a group's scale is set when the sweep reaches its first column.

Searched scales (`searched_scale`): a Q4_0 / Q5_0 scale of least importance-weighted rounding
error instead of the largest weight's (llama.cpp's importance-matrix search); GPTQ's H can be
shrunk towards its diagonal (`shrink`, docs/algorithms.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SurgeonError
from .linalg import upper_inverse_cholesky


# GPTQ's relative damping of H = A (the schema's `damp`; the CLI repeats it: its parser
# must not import this module's torch)
GPTQ_DAMP = 0.01


@dataclass(frozen=True)
class Grid:
    bits: int = 4
    group_size: int = 32
    symmetric: bool = True
    super_size: int = 0  # K-quants: weights sharing one float16 super-block scale

    def check(self, columns: int) -> None:
        if self.super_size and self not in GGML_GRIDS.values():
            raise SurgeonError("super-block grids are llama.cpp's Q4_K and Q6_K only")
        if self.symmetric and not self.super_size and self.bits not in (4, 5, 8):
            raise SurgeonError("symmetric grids are llama.cpp's Q4_0, Q5_0 and Q8_0: bits 4, 5 "
                               "or 8")
        if not 2 <= self.bits <= 8:
            raise SurgeonError(f"bits must be in 2..8, got {self.bits}")
        block = self.super_size or self.group_size
        if columns % block:
            raise SurgeonError(f"{'super-block' if self.super_size else 'group'} size {block} "
                               f"does not divide {columns} columns")

    @property
    def code_range(self) -> tuple[int, int]:
        if self.symmetric:
            half = 2 ** (self.bits - 1)
            return (-127, 127) if self.bits == 8 else (-half, half - 1)
        return 0, 2**self.bits - 1


# llama.cpp's block types on these grids (gguf_export packs them)
GGML_GRIDS = {
    "Q4_0": Grid(4, 32, True),
    "Q5_0": Grid(5, 32, True),
    "Q8_0": Grid(8, 32, True),
    "Q4_K": Grid(4, 32, False, 256),
    "Q6_K": Grid(6, 16, True, 256),
}


def ggml_type(grid: Grid) -> str | None:
    """The ggml block type a grid is (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K), or None."""
    return next((name for name, g in GGML_GRIDS.items() if g == grid), None)


def signed_max_scale(w: torch.Tensor, levels: int) -> torch.Tensor:
    """m / -levels per row, m the element of largest magnitude with its sign (Q4_0/Q5_0): the
    extreme weight lands exactly on code -levels, the asymmetric end of the signed range."""
    idx = w.abs().argmax(dim=1, keepdim=True)
    return w.gather(1, idx).squeeze(1) / -levels


SEARCH_STEPS = range(-9, 10)  # candidate scales m / -(levels + k / 10), as llama.cpp searches


def searched_scale(w: torch.Tensor, importance: torch.Tensor, levels: int) -> torch.Tensor:
    """The scale d of each row of w (rows x group) of least weighted rounding error
    sum_j h_j (w_j - d q_j)^2, q_j = clamp(round(w_j / d), -levels, levels - 1).

    Searched as llama.cpp's importance-matrix quantizer does (make_qx_quants): for each
    candidate d0 = m / -(levels + k/10) the codes q of d0, then the weighted least-squares
    scale of those codes, d = sum h w q / sum h q^2, whose error is sum h w^2 - (sum h w q)^2
    / sum h q^2; the candidate of largest (sum h w q)^2 / sum h q^2 wins."""
    m = w.gather(1, w.abs().argmax(dim=1, keepdim=True))  # rows x 1, signed
    best_score = torch.full((len(w),), -1.0, dtype=w.dtype, device=w.device)
    best = (m / -levels).squeeze(1)
    safe_m = torch.where(m == 0, torch.ones_like(m), m)
    for k in SEARCH_STEPS:
        q = torch.clamp(torch.round(w * (-(levels + k / 10) / safe_m)), -levels, levels - 1)
        hq = importance * q
        sum_xq, sum_q2 = (hq * w).sum(dim=1), (hq * q).sum(dim=1)
        score = torch.where(sum_q2 > 0, sum_xq.square() / sum_q2.clamp(min=1e-300), -1.0)
        better = score > best_score
        best = torch.where(better, sum_xq / sum_q2.clamp(min=1e-300), best)
        best_score = torch.where(better, score, best_score)
    return torch.where(m.squeeze(1) == 0, torch.zeros_like(best), best)


def group_scales(w: torch.Tensor, grid: Grid, supers: torch.Tensor | None = None,
                 importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale d (as float64) and zero point z of each row of w (rows x group); on a K-quant
    grid `supers` holds each row's super-block (D, Dmin) from `super_scales`. With
    `importance` (rows x group, h >= 0) the Q4_0 / Q5_0 scale is searched_scale's instead of
    the largest weight over -levels."""
    if grid.super_size:
        return kquant_group_scales(w, grid, supers, importance)
    if grid.symmetric:
        if grid.bits == 8:
            d = w.abs().amax(dim=1) / 127
        elif importance is not None:
            d = searched_scale(w, importance, 2 ** (grid.bits - 1))
        else:
            d = signed_max_scale(w, 2 ** (grid.bits - 1))
        zero = torch.zeros_like(d)
    else:
        lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
        d = (hi - lo) / (2**grid.bits - 1)
    d = d.half().double()
    d = torch.where(d == 0, torch.ones_like(d), d)  # an all-zero group: any scale, codes 0
    if not grid.symmetric:
        zero = torch.round(-lo / d).clamp(0, 2**grid.bits - 1)
    return d, zero


KQ_SCALE_MAX = {4: 63, 6: 127}  # Q4_K's 6-bit scales and mins, Q6_K's int8 scales
ZERO_SHIFTS = (1, 2, 4, 8, 16)  # Q4_K: Dmin = D r; r = 16 fits every z s <= 15 * 63 in 6 bits


def _asym_ideal(w: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unrounded asymmetric scale and zero point of each row of w (range [min(w,0), max(w,0)])."""
    lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
    s = (hi - lo) / levels
    return s, torch.where(s > 0, -lo / torch.where(s > 0, s, 1), 0)


def super_scales(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(D, Dmin) of each row of w (rows x super_size weights), float16 values as float64.

    Q6_K: D = s_max / -128, s_max the signed Q5_0-style scale (m / -32) of largest magnitude
    among the row's groups. Q4_K: D = max group scale / 63 and Dmin = D r with the smallest
    power of two r that holds every group's ideal m = z s / r in 6 bits."""
    rows, g = w.shape[0], grid.group_size
    groups = w.reshape(-1, g)
    if grid.symmetric:
        s = signed_max_scale(groups, 32).reshape(rows, -1)
        s_max = s.gather(1, s.abs().argmax(dim=1, keepdim=True)).squeeze(1)
        D = (s_max / -128).half().double()
        D = torch.where(D == 0, torch.ones_like(D), D)
        return torch.stack([D, torch.zeros_like(D)], dim=1)
    s, z = (t.reshape(rows, -1) for t in _asym_ideal(groups, 2**grid.bits - 1))
    D = (s.amax(dim=1) / KQ_SCALE_MAX[4]).half().double()
    D = torch.where(D == 0, torch.ones_like(D), D)
    sc = torch.round(s / D[:, None]).clamp(1, KQ_SCALE_MAX[4])
    product = (torch.round(z).clamp(0, 15) * sc).amax(dim=1)
    r = torch.full_like(D, ZERO_SHIFTS[-1])
    for shift in reversed(ZERO_SHIFTS):
        r = torch.where(product <= KQ_SCALE_MAX[4] * shift, float(shift), r)
    return torch.stack([D, D * r], dim=1)


def _least_error(w: torch.Tensor, d: torch.Tensor, z: torch.Tensor, valid: torch.Tensor,
                 grid: Grid, importance: torch.Tensor | None) -> torch.Tensor:
    """Index of the candidate (d, z) (rows x candidates) of least squared rounding error of
    each row of w, weighted by `importance` when given, among the valid ones."""
    lo, hi = grid.code_range
    q = torch.clamp(torch.round(w[:, None, :] / d[..., None]) + z[..., None], lo, hi)
    sq = ((q - z[..., None]) * d[..., None] - w[:, None, :]).square()
    err = (sq if importance is None else sq * importance[:, None, :]).sum(dim=2)
    return torch.where(valid, err, torch.inf).argmin(dim=1, keepdim=True)


def kquant_group_scales(w: torch.Tensor, grid: Grid, supers: torch.Tensor,
                        importance: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """d = D s and z of each row of w (rows x group) under its super-block's (D, Dmin).

    Q6_K: s = round(m / -32 / D) in int8, never 0 for a non-zero group; with `importance`,
    the s within 2 of it of least weighted rounding error. Q4_K: s in [1, 63] and z in
    [0, 15] with z s a multiple of r = Dmin / D and z s / r <= 63 (so m = z s / r is an exact
    6-bit min and D s z == Dmin m: zero on the grid); among (z, s) within 2 and 4 of the
    group's ideal, and (0, ideal s), the pair of least (importance-weighted) squared rounding
    error."""
    D, Dmin = supers[:, 0], supers[:, 1]
    if grid.symmetric:
        ratio = signed_max_scale(w, 32) / D
        s = torch.round(ratio)
        s = torch.where((s == 0) & (ratio != 0), torch.sign(ratio), s)  # keep a small group
        s = torch.where(s == 0, torch.ones_like(s), s).clamp(-128, 127)  # all-zero: any scale
        if importance is not None:
            s = s[:, None] + torch.arange(-2, 3, dtype=w.dtype, device=w.device)[None, :]
            valid = (s != 0) & (s >= -128) & (s <= 127)
            zero = torch.zeros_like(s)
            s = s.gather(1, _least_error(w, D[:, None] * s, zero, valid, grid, importance))
            s = s.squeeze(1)
        return D * s, torch.zeros_like(D)
    s_ideal, z_ideal = _asym_ideal(w, 2**grid.bits - 1)
    s0 = torch.round(s_ideal / D).clamp(1, KQ_SCALE_MAX[4])
    z0 = torch.round(z_ideal * s_ideal / (D * s0)).clamp(0, 15)
    dz = torch.arange(-2, 3, dtype=w.dtype, device=w.device)
    ds = torch.arange(-4, 5, dtype=w.dtype, device=w.device)
    z = (z0[:, None, None] + dz[None, :, None]).expand(-1, 5, 9).reshape(len(w), -1)
    s = (s0[:, None, None] + ds[None, None, :]).expand(-1, 5, 9).reshape(len(w), -1)
    z, s = torch.cat([z, torch.zeros_like(s0)[:, None]], 1), torch.cat([s, s0[:, None]], 1)
    r = (Dmin / D)[:, None]
    valid = (z >= 0) & (z <= 15) & (s >= 1) & (s <= KQ_SCALE_MAX[4]) \
        & (torch.remainder(z * s, r) == 0) & (z * s <= KQ_SCALE_MAX[4] * r)
    d = D[:, None] * s
    best = _least_error(w, d, z, valid, grid, importance)
    return d.gather(1, best).squeeze(1), z.gather(1, best).squeeze(1)


def quantize_codes(w: torch.Tensor, d: torch.Tensor, zero: torch.Tensor, grid: Grid,
                   removed: torch.Tensor | None = None) -> torch.Tensor:
    """Integer codes (as float64) of w on the grid; removed weights get the code of zero."""
    lo, hi = grid.code_range
    q = torch.clamp(torch.round(w / d) + zero, lo, hi)
    if removed is not None:
        q = torch.where(removed, zero.expand_as(q), q)
    return q


def dequantize(q: torch.Tensor, d: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero) * d


@dataclass
class Quantized:
    """Codes (R x C int), scales d and zero points (R x C/group) of one weight matrix; on a
    K-quant grid also the super-block (D, Dmin) (R x C/super x 2) that the scales are integer
    multiples of (d = D s)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    grid: Grid
    supers: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        g = self.grid.group_size
        d = self.scales.double().repeat_interleave(g, dim=1)
        z = self.zeros.double().repeat_interleave(g, dim=1)
        return dequantize(self.codes.double(), d, z)


def _by_groups(W: torch.Tensor, size: int) -> torch.Tensor:
    """R x C -> (C/size * R) x size, the groups of one column block after another."""
    R, C = W.shape
    return W.reshape(R, C // size, size).transpose(0, 1).reshape(-1, size)


def _from_groups(x: torch.Tensor, R: int) -> torch.Tensor:
    """Inverse of _by_groups for one value (or `size` values) per group."""
    return x.reshape(-1, R, *x.shape[1:]).transpose(0, 1).reshape(R, -1)


def importance_weights(w: torch.Tensor, h: torch.Tensor,
                       row_power: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of each element's rounding error (rows x columns) from the column importance h
    (the diagonal of H = A, the mean squared input of each column): h_c sqrt(s_r + w_rc^2),
    s_r the row's mean squared weight (of w unless given), as llama.cpp weighs its importance
    matrix (large weights count more, so the search keeps them accurate)."""
    w = w.double()
    if row_power is None:
        row_power = w.square().mean(dim=1, keepdim=True)
    return h.double().clamp(min=0).to(w.device)[None, :] * torch.sqrt(row_power + w.square())


def rtn_quantize(W: torch.Tensor, grid: Grid, removed: torch.Tensor | None = None,
                 chunk: int = 1 << 14, importance: torch.Tensor | None = None) -> Quantized:
    """Round every group to its nearest grid point (K-quants: super-blocks first); with a
    column `importance` (C,) each Q4_0 / Q5_0 group's scale is searched (`searched_scale`)."""
    grid.check(W.shape[1])
    R, C = W.shape
    g = grid.group_size
    W = W.double()
    if removed is not None:
        W = torch.where(removed.to(W.device), 0.0, W)
    weights = None if importance is None else _by_groups(importance_weights(W, importance), g)
    block_supers = group_supers = None
    if grid.super_size:
        block_supers = super_scales(_by_groups(W, grid.super_size), grid)  # (C/S * R) x 2
        group_supers = block_supers.reshape(-1, 1, R, 2).expand(
            -1, grid.super_size // g, -1, -1).reshape(-1, 2)  # group order of _by_groups(W, g)
    groups = _by_groups(W, g)
    d, zero = torch.empty(len(groups), dtype=W.dtype), torch.empty(len(groups), dtype=W.dtype)
    for i in range(0, len(groups), chunk):
        part = slice(i, i + chunk)
        d[part], zero[part] = group_scales(groups[part], grid,
                                           None if group_supers is None else group_supers[part],
                                           None if weights is None else weights[part])
    q = quantize_codes(groups, d[:, None], zero[:, None], grid)
    q, d, zero = _from_groups(q, R), _from_groups(d, R), _from_groups(zero, R)
    supers = None if block_supers is None else _from_groups(block_supers, R).reshape(R, -1, 2)
    return Quantized(q.to(torch.int16), d.float(), zero.to(torch.int16), grid,
                     None if supers is None else supers.float())


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, grid: Grid,
                  removed: torch.Tensor | None = None, damp: float = GPTQ_DAMP,
                  blocksize: int = 128, search: bool = False, shrink: float = 0.0) -> Quantized:
    """GPTQ of W (R x C) with Hessian H (C x C); `removed` weights stay exactly zero. On a
    K-quant grid a super-block's (D, Dmin) is set when the sweep reaches its first column, from
    the weights as the error feedback has left them, as a group's scale is. With `search` a
    Q4_0 / Q5_0 group's scale is `searched_scale`'s, weighted by diag(H) (`importance_weights`
    of the weights as the feedback has left them). `shrink` s in [0, 1] replaces H by
    (1 - s) H + s diag(H): the off-diagonal input correlations of a few thousand calibration
    tokens, which the error feedback follows, are trusted less (s = 1: no feedback, RTN)."""
    if not 0.0 <= shrink <= 1.0:
        raise SurgeonError(f"GPTQ shrink must be in [0, 1], got {shrink}")
    grid.check(W.shape[1])
    R, C = W.shape
    g, S = grid.group_size, grid.super_size
    unit = S or g
    blocksize = unit * max(1, blocksize // unit)  # a group never straddles two blocks
    W = W.double().clone()
    H = H.double().clone()
    if shrink:
        H = (1.0 - shrink) * H + shrink * torch.diag(H.diagonal())
    removed = torch.zeros(R, C, dtype=torch.bool, device=W.device) if removed is None \
        else removed.to(W.device)
    dead = H.diagonal() <= 0  # a column that never saw an input: its value does not matter
    H[dead, dead] = 1.0
    importance = H.diagonal().clone() if search else None
    row_power = W.square().mean(dim=1, keepdim=True) if search else None
    U = upper_inverse_cholesky(H, damp)
    codes = torch.zeros(R, C, dtype=torch.float64, device=W.device)
    scales = torch.zeros(R, C // g, dtype=torch.float64, device=W.device)
    zeros = torch.zeros_like(scales)
    supers = torch.zeros(R, C // S, 2, dtype=torch.float64, device=W.device) if S else None
    for i1 in range(0, C, blocksize):
        i2 = min(i1 + blocksize, C)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        errors = torch.zeros_like(W1)
        for i in range(i2 - i1):
            c = i1 + i
            if S and c % S == 0:
                block = torch.where(removed[:, c : c + S], 0.0, W1[:, i : i + S])
                supers[:, c // S] = super_scales(block, grid)
            if c % g == 0:
                group = torch.where(removed[:, c : c + g], 0.0, W1[:, i : i + g])
                weights = None if importance is None else \
                    importance_weights(group, importance[c : c + g], row_power)
                scales[:, c // g], zeros[:, c // g] = group_scales(
                    group, grid, supers[:, c // S] if S else None, weights)
            d, z = scales[:, c // g], zeros[:, c // g]
            q = quantize_codes(W1[:, i], d, z, grid, removed[:, c])
            codes[:, c] = q
            err = (W1[:, i] - dequantize(q, d, z)) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            errors[:, i] = err
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    return Quantized(codes.to(torch.int16), scales.float(), zeros.to(torch.int16), grid,
                     None if supers is None else supers.float())


# GPTQ's H = (1 - s) A + s diag(A) by default (the schema's `shrink`): on the embedded model
# 0.75 beat both 0 (plain GPTQ) and 1 (RTN) in and out of domain (README, scale_search.py)
GPTQ_SHRINK = 0.75


def bits_per_weight(grid: Grid) -> float:
    """Stored bits per weight of the grid: the code, each group's scale (float16; K-quants:
    6-bit scale and min, or int8 scale), an 8-bit zero point per group when asymmetric, and
    the float16 super-block scales (Q4_K: D and Dmin). Q4_K 4.5, Q6_K 6.5625."""
    if grid.super_size:
        per_group = 12 if not grid.symmetric else 8
        return grid.bits + per_group / grid.group_size + \
            16 * (1 if grid.symmetric else 2) / grid.super_size
    return grid.bits + (16 + (0 if grid.symmetric else 8)) / grid.group_size


def quantize_model(model, method: str, grid: Grid | dict, removed: dict, curvature=None,
                   damp: float | dict = GPTQ_DAMP, device: str = "cpu", progress: bool = True,
                   scale_search: bool = False, shrink: float | dict = 0.0) -> dict:
    """Quantize every decoder Linear in place (weights become the dequantized values).

    `grid` is one grid for all layers or {layer: grid} (a llama.cpp type mixture, ggml_plan),
    and so are GPTQ's `damp` and `shrink` (one value or {layer: value});
    `removed` maps layer names to masks (True = pruned) of the weight's shape; `curvature` is
    an open curvature file whose A factors are GPTQ's H (the bias column, if any, is dropped).
    `scale_search`: Q4_0 / Q5_0 scales searched with the diagonal of A as the importance of
    each column (RTN too; needs the curvature); `shrink`: GPTQ's H moved towards its
    diagonal (`gptq_quantize`). Returns {layer: Quantized}.
    """
    from tqdm import tqdm

    from .curvature_store import read_factors
    from .models import decoder_linears

    if method not in ("rtn", "gptq"):
        raise SurgeonError(f"unknown quantization method '{method}' (rtn, gptq)")
    if (method == "gptq" or scale_search) and curvature is None:
        raise SurgeonError(f"{'gptq' if method == 'gptq' else 'the scale search'} needs the "
                           "curvature (A factor) of the model it quantizes")
    out = {}
    for name, layer in tqdm(decoder_linears(model).items(), desc=method, disable=not progress):
        W = layer.weight.detach().to(device)
        mask = removed[name].to(device)
        layer_grid, layer_damp, layer_shrink = (
            v[name] if isinstance(v, dict) else v for v in (grid, damp, shrink))
        A = read_factors(curvature, name)[0].to(device)[: W.shape[1], : W.shape[1]] \
            if method == "gptq" or scale_search else None  # plain RTN reads no factor
        if method == "rtn":
            q = rtn_quantize(W, layer_grid, mask,
                             importance=A.diagonal() if scale_search else None)
        else:
            q = gptq_quantize(W, A, layer_grid, mask, layer_damp, search=scale_search,
                              shrink=layer_shrink)
        with torch.no_grad():
            layer.weight.copy_(q.weight().to(layer.weight))
        out[name] = Quantized(q.codes.cpu(), q.scales.cpu(), q.zeros.cpu(), layer_grid,
                              None if q.supers is None else q.supers.cpu())
    return out


EMBEDDING_GRID = Grid(8, 32, True)  # llama.cpp's Q8_0


def embedding_tables(model) -> dict[str, torch.nn.Module]:
    """{module name: module} of the token embedding and of the output head when it is not
    tied to the embedding."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    tables = {names[id(emb)]: emb}
    if head is not None and head.weight is not emb.weight:
        tables[names[id(head)]] = head
    return tables


def embedding_codes(model, grids: dict[str, Grid] | None = None) -> dict[str, Quantized]:
    """RTN codes of the token embedding and of an untied output head, {module name: codes},
    on `grids` (llama.cpp's choice for the file type, ggml_plan.tensor_types) or Q8_0.

    Q8_0 is what llama.cpp's quantizer gives these tables at Q4_0 when rows are not a multiple
    of 256 (SmolLM2's 576): 8.5 instead of the converter's 16 bits per weight. Tables whose
    width the blocks do not divide are left out. Rounding a table that is on its grid already
    gives its codes back.
    """
    tables = embedding_tables(model)
    grids = grids or {name: EMBEDDING_GRID for name in tables}
    return {name: rtn_quantize(table.weight.detach(), grids[name])
            for name, table in tables.items()
            if table.weight.shape[1] % (grids[name].super_size or grids[name].group_size) == 0}


def quantize_embeddings(model, grids: dict[str, Grid] | None = None) -> dict[str, Quantized]:
    """Round the tables of embedding_codes to their grid in place (the quantize stage does, so
    that the model it evaluates is the one in the .gguf); their codes."""
    codes = embedding_codes(model, grids)
    tables = embedding_tables(model)
    with torch.no_grad():
        for name, q in codes.items():
            tables[name].weight.copy_(q.weight().to(tables[name].weight))
    return codes


def save_codes(path, codes: dict[str, Quantized], info: dict) -> None:
    """Integer codes (int8, or uint8 when asymmetric), scales (float16; K-quants: float32, as
    D s needs up to 18 bits, with the float16 super-block (D, Dmin)), uint8 zero points; each
    layer's grid in the metadata."""
    import json

    from safetensors.torch import save_file

    tensors = {}
    for name, q in codes.items():
        signed = q.grid.symmetric
        tensors[f"{name}.codes"] = q.codes.to(torch.int8 if signed else torch.uint8).contiguous()
        scales = q.scales.float() if q.grid.super_size else q.scales.half()
        tensors[f"{name}.scales"] = scales.contiguous()
        if not signed:
            tensors[f"{name}.zeros"] = q.zeros.to(torch.uint8).contiguous()
        if q.supers is not None:
            tensors[f"{name}.supers"] = q.supers.half().contiguous()
    grids = {name: [q.grid.bits, q.grid.group_size, q.grid.symmetric, q.grid.super_size]
             for name, q in codes.items()}
    metadata = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                for k, v in info.items()} | {"grids": json.dumps(grids)}
    save_file(tensors, str(path), metadata=metadata)


def load_codes(path, tables: bool = False) -> dict[str, Quantized]:
    """What `save_codes` wrote, as Quantized per layer: the decoder Linears, or with `tables`
    the embedding tables the info listed under `tables` (quantize stage on llama.cpp types)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        if "grids" in meta:
            grids = {name: Grid(*g) for name, g in json.loads(meta["grids"]).items()}
        else:  # one grid for all layers, before per-layer grids
            grid = Grid(int(meta["bits"]), int(meta["group_size"]), meta["symmetric"] == "True")
            grids = {k.rsplit(".", 1)[0]: grid for k in keys}
        listed = set(json.loads(meta.get("tables", "[]")))
        out = {}
        for name, grid in sorted(grids.items()):
            if (name in listed) != tables:
                continue
            scales = f.get_tensor(f"{name}.scales").float()
            zeros = (f.get_tensor(f"{name}.zeros").to(torch.int16) if not grid.symmetric
                     else torch.zeros(scales.shape, dtype=torch.int16))
            supers = (f.get_tensor(f"{name}.supers").float() if f"{name}.supers" in keys
                      else None)
            out[name] = Quantized(f.get_tensor(f"{name}.codes").to(torch.int16), scales, zeros,
                                  grid, supers)
    return out
