"""ggml's block byte layouts (ggml-common.h): our codes and scales packed as llama.cpp reads them.

The codes are packed as they are, never re-quantized from dequantized weights, so the file holds
exactly the model the quantize stage evaluated. Every function takes one weight matrix's
`Quantized` (R rows) and returns its blocks as uint8, shape (R, bytes per row).

* Q4_0 / Q8_0 (32 weights): float16 d, then the codes (Q8_0 int8; Q4_0 q + 8 as nibbles,
  element j low and j + 16 high in byte j).
* Q5_0 (32): float16 d, uint32 qh whose bit j is bit 4 of q_j + 16, then nibbles as Q4_0.
* Q4_K (256 = 8 groups of 32): float16 D, float16 Dmin, 12 bytes of 6-bit scales s and mins m
  (groups 0-3 in the low 6 bits of bytes 0-3 / 4-7, groups 4-7 as nibbles in bytes 8-11 with
  their top 2 bits in the top of bytes 0-7), 128 bytes of nibbles (64 weights per 32 bytes,
  the first 32 low, the next 32 high).
* Q6_K (256 = 16 groups of 16): 128 bytes low nibbles, 64 bytes top 2 bits, 16 int8 scales,
  float16 D; codes stored as q + 32, in two halves of 128 weights.
"""

from __future__ import annotations

import numpy as np

from .errors import SurgeonError
from .quantize import Quantized, ggml_type


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)[..., None].view(np.uint8)


def _nibbles(u: np.ndarray) -> np.ndarray:
    """(..., 32) values < 16 -> (..., 16) bytes: element j low, element j + 16 high."""
    return u[..., :16] | (u[..., 16:] << np.uint8(4))


def _integer(x: np.ndarray, what: str) -> np.ndarray:
    rounded = np.rint(x)
    if np.abs(x - rounded).max(initial=0) > 1e-3:
        raise SurgeonError(f"{what} are not integers: the codes are not on this block grid")
    return rounded.astype(np.int64)


def pack_q4_0_q8_0(q: Quantized) -> np.ndarray:
    R, C = q.codes.shape
    codes = q.codes.reshape(R, C // 32, 32).numpy()
    d = _f16_bytes(q.scales.reshape(R, C // 32).numpy())
    if q.grid.bits == 8:
        body = codes.astype(np.int8).view(np.uint8)
    else:
        body = _nibbles((codes + 8).astype(np.uint8))
    return np.concatenate([d, body], axis=-1).reshape(R, -1)


def pack_q5_0(q: Quantized) -> np.ndarray:
    R, C = q.codes.shape
    u = (q.codes.reshape(R, C // 32, 32).numpy() + 16).astype(np.uint32)
    qh = ((u >> 4) << np.arange(32, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    d = _f16_bytes(q.scales.reshape(R, C // 32).numpy())
    body = _nibbles((u & 15).astype(np.uint8))
    return np.concatenate([d, qh[..., None].view(np.uint8), body], axis=-1).reshape(R, -1)


def pack_q4_k(q: Quantized) -> np.ndarray:
    R, C = q.codes.shape
    n = C // 256
    D, Dmin = (q.supers[..., k].double().numpy() for k in (0, 1))  # R x n
    scales = q.scales.double().numpy().reshape(R, n, 8)
    zeros = q.zeros.numpy().reshape(R, n, 8).astype(np.float64)
    sc = _integer(scales / D[..., None], "Q4_K scales / D")
    m = _integer(zeros * scales / Dmin[..., None], "Q4_K mins / Dmin")
    if sc.min() < 0 or sc.max() > 63 or m.min() < 0 or m.max() > 63:
        raise SurgeonError("Q4_K scales and mins must fit in 6 bits")
    packed = np.zeros((R, n, 12), dtype=np.int64)
    packed[..., 0:4] = (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6)
    packed[..., 4:8] = (m[..., :4] & 63) | ((m[..., 4:] >> 4) << 6)
    packed[..., 8:12] = (sc[..., 4:] & 15) | ((m[..., 4:] & 15) << 4)
    u = q.codes.numpy().reshape(R, n, 4, 2, 32).astype(np.uint8)
    qs = (u[..., 0, :] | (u[..., 1, :] << np.uint8(4))).reshape(R, n, 128)
    head = np.concatenate([_f16_bytes(D), _f16_bytes(Dmin)], axis=-1)
    return np.concatenate([head, packed.astype(np.uint8), qs], axis=-1).reshape(R, -1)


def pack_q6_k(q: Quantized) -> np.ndarray:
    R, C = q.codes.shape
    n = C // 256
    D = q.supers[..., 0].double().numpy()
    sc = _integer(q.scales.double().numpy().reshape(R, n, 16) / D[..., None], "Q6_K scales / D")
    if sc.min() < -128 or sc.max() > 127:
        raise SurgeonError("Q6_K scales must fit in int8")
    y = (q.codes.numpy().reshape(R, n, 2, 4, 32) + 32).astype(np.uint8)  # half, quarter, l
    lo, hi = y & np.uint8(15), y >> np.uint8(4)
    ql = np.concatenate([lo[..., 0, :] | (lo[..., 2, :] << np.uint8(4)),
                         lo[..., 1, :] | (lo[..., 3, :] << np.uint8(4))], axis=-1)  # R n 2 64
    qh = hi[..., 0, :] | (hi[..., 1, :] << np.uint8(2)) | (hi[..., 2, :] << np.uint8(4)) \
        | (hi[..., 3, :] << np.uint8(6))  # R n 2 32
    return np.concatenate([ql.reshape(R, n, 128), qh.reshape(R, n, 64),
                           sc.astype(np.int8).view(np.uint8), _f16_bytes(D)],
                          axis=-1).reshape(R, -1)


PACKERS = {"Q4_0": pack_q4_0_q8_0, "Q8_0": pack_q4_0_q8_0, "Q5_0": pack_q5_0,
           "Q4_K": pack_q4_k, "Q6_K": pack_q6_k}


def pack(q: Quantized) -> tuple[str, np.ndarray]:
    """(ggml type name, blocks) of one quantized matrix."""
    name = ggml_type(q.grid)
    if name is None:
        raise SurgeonError(f"no ggml block type for the grid {q.grid}")
    return name, PACKERS[name](q)
