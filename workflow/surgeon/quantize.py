"""Weight quantization: round to nearest (RTN) and GPTQ with H = the K-FAC A factor (docs/algorithms.md §8).

Grids, per group of `group_size` consecutive input columns of a row, scales stored as float16:

* symmetric 4 bit = llama.cpp Q4_0: d = m / -8 with m the group's element of largest magnitude
  (sign kept), codes q in [-8, 7], w ~ q d.
* symmetric 8 bit = llama.cpp Q8_0: d = max|w| / 127, q in [-127, 127].
* asymmetric b bit: d = (max(w, 0) - min(w, 0)) / (2^b - 1), integer zero point z = round(-min/d),
  q in [0, 2^b - 1], w ~ (q - z) d.
Zero is on every grid, and removed (pruned) weights are forced to code 0 (z when asymmetric),
so a pruned model keeps its exact sparsity pattern.

GPTQ (Frantar et al. 2023): columns left to right, each quantized and its error fed to the
columns on its right through the upper Cholesky factor U of H^-1, err = (w - q) / U_cc,
W[:, c:] -= err U[c, c:]; a group's scale is set when the sweep reaches its first column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SurgeonError
from .linalg import upper_inverse_cholesky


@dataclass(frozen=True)
class Grid:
    bits: int = 4
    group_size: int = 32
    symmetric: bool = True

    def check(self, columns: int) -> None:
        if self.symmetric and self.bits not in (4, 8):
            raise SurgeonError("symmetric grids are llama.cpp's Q4_0 and Q8_0: bits 4 or 8")
        if not 2 <= self.bits <= 8:
            raise SurgeonError(f"bits must be in 2..8, got {self.bits}")
        if columns % self.group_size:
            raise SurgeonError(f"group size {self.group_size} does not divide {columns} columns")

    @property
    def code_range(self) -> tuple[int, int]:
        if self.symmetric:
            return (-8, 7) if self.bits == 4 else (-127, 127)
        return 0, 2**self.bits - 1


def group_scales(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale d (float16 values, as float64) and zero point z of each row of w (rows x group)."""
    if grid.symmetric:
        if grid.bits == 4:
            idx = w.abs().argmax(dim=1, keepdim=True)
            d = w.gather(1, idx).squeeze(1) / -8
        else:
            d = w.abs().amax(dim=1) / 127
        zero = torch.zeros_like(d)
    else:
        lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
        d = (hi - lo) / (2**grid.bits - 1)
    d = d.half().double()
    d = torch.where(d == 0, torch.ones_like(d), d)  # an all-zero group: any scale, codes 0
    if not grid.symmetric:
        zero = torch.round(-lo / d).clamp(0, 2**grid.bits - 1)
    return d, zero


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
    """Codes (R x C int), scales and zero points (R x C/group) of one weight matrix."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    grid: Grid

    def weight(self) -> torch.Tensor:
        g = self.grid.group_size
        d = self.scales.double().repeat_interleave(g, dim=1)
        z = self.zeros.double().repeat_interleave(g, dim=1)
        return dequantize(self.codes.double(), d, z)


def rtn_quantize(W: torch.Tensor, grid: Grid, removed: torch.Tensor | None = None) -> Quantized:
    """Round every group to its nearest grid point."""
    grid.check(W.shape[1])
    R, C = W.shape
    g = grid.group_size
    groups = W.double().reshape(R, C // g, g).transpose(0, 1).reshape(-1, g)
    d, zero = group_scales(groups, grid)
    q = quantize_codes(groups, d[:, None], zero[:, None], grid)
    q = q.reshape(C // g, R, g).transpose(0, 1).reshape(R, C)
    d, zero = d.reshape(C // g, R).T, zero.reshape(C // g, R).T
    if removed is not None:
        q = torch.where(removed, zero.repeat_interleave(g, dim=1), q)
    return Quantized(q.to(torch.int16), d.float(), zero.to(torch.int16), grid)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, grid: Grid,
                  removed: torch.Tensor | None = None, damp: float = 0.01,
                  blocksize: int = 128) -> Quantized:
    """GPTQ of W (R x C) with Hessian H (C x C); `removed` weights stay exactly zero."""
    grid.check(W.shape[1])
    R, C = W.shape
    g = grid.group_size
    blocksize = g * max(1, blocksize // g)  # a group never straddles two blocks
    W = W.double().clone()
    H = H.double().clone()
    removed = torch.zeros(R, C, dtype=torch.bool, device=W.device) if removed is None \
        else removed.to(W.device)
    dead = H.diagonal() <= 0  # a column that never saw an input: its value does not matter
    H[dead, dead] = 1.0
    U = upper_inverse_cholesky(H, damp)
    codes = torch.zeros(R, C, dtype=torch.float64, device=W.device)
    scales = torch.zeros(R, C // g, dtype=torch.float64, device=W.device)
    zeros = torch.zeros_like(scales)
    for i1 in range(0, C, blocksize):
        i2 = min(i1 + blocksize, C)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        errors = torch.zeros_like(W1)
        for i in range(i2 - i1):
            c = i1 + i
            if c % g == 0:
                group = torch.where(removed[:, c : c + g], 0.0, W1[:, i : i + g])
                scales[:, c // g], zeros[:, c // g] = group_scales(group, grid)
            d, z = scales[:, c // g], zeros[:, c // g]
            q = quantize_codes(W1[:, i], d, z, grid, removed[:, c])
            codes[:, c] = q
            err = (W1[:, i] - dequantize(q, d, z)) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            errors[:, i] = err
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    return Quantized(codes.to(torch.int16), scales.float(), zeros.to(torch.int16), grid)


def bits_per_weight(grid: Grid) -> float:
    """Stored bits per weight of the grid: the code, a float16 scale per group and, when
    asymmetric, an 8-bit zero point per group."""
    return grid.bits + (16 + (0 if grid.symmetric else 8)) / grid.group_size


def quantize_model(model, method: str, grid: Grid, removed: dict, curvature=None,
                   damp: float = 0.01, device: str = "cpu", progress: bool = True) -> dict:
    """Quantize every decoder Linear in place (weights become the dequantized values).

    `removed` maps layer names to masks (True = pruned) of the weight's shape; `curvature` is
    an open curvature file whose A factors are GPTQ's H (the bias column, if any, is dropped).
    Returns {layer: Quantized}.
    """
    from tqdm import tqdm

    from .curvature_store import read_factors
    from .models import decoder_linears

    if method not in ("rtn", "gptq"):
        raise SurgeonError(f"unknown quantization method '{method}' (rtn, gptq)")
    if method == "gptq" and curvature is None:
        raise SurgeonError("gptq needs the curvature (A factor) of the model it quantizes")
    out = {}
    for name, layer in tqdm(decoder_linears(model).items(), desc=method, disable=not progress):
        W = layer.weight.detach().to(device)
        mask = removed[name].to(device)
        if method == "rtn":
            q = rtn_quantize(W, grid, mask)
        else:
            A = read_factors(curvature, name)[0].to(device)[: W.shape[1], : W.shape[1]]
            q = gptq_quantize(W, A, grid, mask, damp)
        with torch.no_grad():
            layer.weight.copy_(q.weight().to(layer.weight))
        out[name] = Quantized(q.codes.cpu(), q.scales.cpu(), q.zeros.cpu(), grid)
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


def embedding_codes(model) -> dict[str, Quantized]:
    """Q8_0 codes of the token embedding and of an untied output head, {module name: codes}.

    What llama.cpp's quantizer does with these tables at Q4_0 when rows are not a multiple of
    256 (SmolLM2's 576): Q8_0 instead of F16, 8.5 instead of 16 bits per weight. (With rows of
    256k it would store the head as Q6_K and an untied embedding at the file's type; Q8_0 is
    the larger, more accurate choice.) Tables whose width the 32-weight blocks do not divide
    are left out. Rounding a table that is on the Q8_0 grid already gives its codes back.
    """
    return {name: rtn_quantize(table.weight.detach(), EMBEDDING_GRID)
            for name, table in embedding_tables(model).items()
            if table.weight.shape[1] % EMBEDDING_GRID.group_size == 0}


def quantize_embeddings(model) -> dict[str, Quantized]:
    """Round the tables of embedding_codes to Q8_0 in place (the quantize stage does, so that
    the model it evaluates is the one in the .gguf); their codes."""
    codes = embedding_codes(model)
    tables = embedding_tables(model)
    with torch.no_grad():
        for name, q in codes.items():
            tables[name].weight.copy_(q.weight().to(tables[name].weight))
    return codes


def save_codes(path, codes: dict[str, Quantized], info: dict) -> None:
    """Integer codes (int8, or uint8 when asymmetric), float16 scales, uint8 zero points."""
    from safetensors.torch import save_file

    tensors = {}
    for name, q in codes.items():
        signed = q.grid.symmetric
        tensors[f"{name}.codes"] = q.codes.to(torch.int8 if signed else torch.uint8).contiguous()
        tensors[f"{name}.scales"] = q.scales.half().contiguous()
        if not signed:
            tensors[f"{name}.zeros"] = q.zeros.to(torch.uint8).contiguous()
    save_file(tensors, str(path), metadata={k: str(v) for k, v in info.items()})


def load_codes(path) -> dict[str, Quantized]:
    """What `save_codes` wrote, as Quantized per layer."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        grid = Grid(int(meta["bits"]), int(meta["group_size"]), meta["symmetric"] == "True")
        names = sorted({k.rsplit(".", 1)[0] for k in f.keys()})
        out = {}
        for name in names:
            scales = f.get_tensor(f"{name}.scales").float()
            zeros = (f.get_tensor(f"{name}.zeros").to(torch.int16) if not grid.symmetric
                     else torch.zeros(scales.shape, dtype=torch.int16))
            out[name] = Quantized(f.get_tensor(f"{name}.codes").to(torch.int16), scales, zeros,
                                  grid)
    return out
