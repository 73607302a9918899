"""compressed-tensors export of a quantized model (the Hugging Face layout vLLM loads).

Each decoder Linear quantized by `surgeon.quantize` is stored in compressed-tensors'
`pack-quantized` format, group strategy (vLLM's W4A16 / W8A16 "WNA16" schemes; 8 bits is
packed too: that is the format compressed-tensors picks for weight-only int8):

* `weight_packed`: int32, R x C*bits/32: the signed codes, biased by +2^(bits-1) and packed
  densely by compressed-tensors' `pack_to_int32` (8 codes per word at 4 bits, 4 at 8 bits);
* `weight_scale`: float16, R x C/group_size: our scales, which are float16 values already;
* `weight_zero_point` (asymmetric only): int32, (R*bits/32) x C/group_size: the signed zero
  points packed the same way along the rows;
* `weight_shape`: int64 [R, C].

compressed-tensors' integer range is [-2^(bits-1), 2^(bits-1) - 1] for symmetric and
asymmetric grids alike, so our asymmetric code q in [0, 2^bits - 1] with zero point z is
given to it as q - 2^(bits-1) with zero point z - 2^(bits-1); (q - z) * scale is unchanged.
The tensors are made by the library's own `PackedQuantizationCompressor.compress` from our
scales and zero points and the float32 weight (q - z) * scale, which is exact; the codes it
rounds to are unpacked and checked to equal ours, so the folder decodes to
`Quantized.weight()`. Other tensors keep the model's dtype; Linears not in `quantized`
(lm_head) are listed in the config's `ignore`.

With `sparsity_2of4`, config.json also carries a `sparsity_config` declaring 2:4 structure
with the dense format, after checking the pattern: metadata only (compressed-tensors 0.20
has no sparse compressor for packed weights, and its ModelCompressor writes an empty
sparsity config, so it is filled in here).

Decoding precision is the reader's: compressed-tensors dequantizes in the scale's dtype, so
transformers' `dequantize=True` load (float16 scales from the file) gives float16-rounded
weights and its default load (scales cast to the model dtype) exact float32 ones; vLLM casts
the scales to its serving dtype (exact in float16, rounded in bfloat16) and dequantizes in
it. transformers cannot load asymmetric folders with compressed-tensors 0.20: its
meta-device compression leaves `weight_zero_point` unpacked, a shape mismatch with the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import SurgeonError
from .quantize import Grid, Quantized

FORMAT = "pack-quantized"


def quantization_scheme(grid: Grid):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=grid.bits, type="int", symmetric=grid.symmetric,
                            strategy="group", group_size=grid.group_size)
    return QuantizationScheme(targets=["Linear"], weights=args, format=FORMAT)


def quantization_config(grid: Grid, ignore: list[str]):
    from compressed_tensors.quantization import QuantizationConfig

    return QuantizationConfig(config_groups={"group_0": quantization_scheme(grid)},
                              format=FORMAT, quantization_status="compressed", ignore=ignore)


def compress_layer(q: Quantized, scheme) -> dict[str, torch.Tensor]:
    """One layer's compressed tensors (weight_packed, weight_scale, weight_shape[, zero point])."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    grid = q.grid
    offset = 0 if grid.symmetric else 2 ** (grid.bits - 1)
    scale = q.scales.to(torch.float16)
    if not torch.equal(scale.float(), q.scales.float()):
        raise SurgeonError("scales are not float16 values")
    # (q - z) * scale: |q - z| < 2^8 times an 11-bit significand, exact in float32
    weight = (q.codes - q.zeros.repeat_interleave(grid.group_size, dim=1)).float() \
        * scale.float().repeat_interleave(grid.group_size, dim=1)
    state = {"weight": weight, "weight_scale": scale}
    if not grid.symmetric:
        state["weight_zero_point"] = (q.zeros - offset).to(torch.int8)
    out = PackedQuantizationCompressor.compress(state, scheme)
    codes = unpack_from_int32(out["weight_packed"], grid.bits, weight.shape)
    if not torch.equal(codes.to(torch.int16), q.codes.to(torch.int16) - offset):
        raise SurgeonError("compressed-tensors rounded to codes other than ours")
    return out


def compressed_state_dict(model, quantized: dict[str, Quantized], scheme) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, q in quantized.items():
        del state[f"{name}.weight"]
        state.update({f"{name}.{k}": v for k, v in compress_layer(q, scheme).items()})
    return state


def nonzero(q: Quantized) -> torch.Tensor:
    """Which weights of the layer are nonzero (code != zero point)."""
    return q.codes != q.zeros.repeat_interleave(q.grid.group_size, dim=1)


def sparsity_config(ignore: list[str], quantized: dict[str, Quantized]) -> dict:
    """2:4 metadata (dense storage) for the quantized Linears, after checking the pattern."""
    from compressed_tensors.config import DenseSparsityConfig, SparsityStructure

    kept = 0
    for name, q in quantized.items():
        nz = nonzero(q)
        if nz.shape[1] % 4 or (nz.reshape(nz.shape[0], -1, 4).sum(-1) > 2).any():
            raise SurgeonError(f"{name} is not 2:4 sparse")
        kept += int(nz.sum())
    total = sum(q.codes.numel() for q in quantized.values())
    return DenseSparsityConfig(targets=["Linear"], ignore=ignore,
                               global_sparsity=1 - kept / total,
                               sparsity_structure=SparsityStructure.TWO_FOUR.value).model_dump()


def export_compressed_tensors(model, tokenizer, quantized: dict[str, Quantized], out_dir: Path,
                              sparsity_2of4: bool = False) -> dict:
    """Write `model` with its quantized decoder Linears in compressed-tensors format to out_dir."""
    from compressed_tensors.compressors import ModelCompressor, PackedQuantizationCompressor

    from .families import CONV1D_MODEL_TYPES

    if model.config.model_type in CONV1D_MODEL_TYPES:
        raise SurgeonError(f"compressed-tensors export of {model.config.model_type}: its "
                           "checkpoint layers are Conv1D, which transformers' compressed-tensors "
                           "loader does not quantize (it would leave them randomly initialised)")
    grids = {q.grid for q in quantized.values()}
    if len(grids) != 1:
        raise SurgeonError(f"one grid per export, got {sorted(map(str, grids))}")
    grid = grids.pop()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if missing := sorted(set(quantized) - set(linears)):
        raise SurgeonError(f"quantized layers not in the model: {missing[:3]}")
    ignore = [n for n in linears if n not in quantized]
    config = quantization_config(grid, ignore)
    scheme = config.config_groups["group_0"]
    sparsity = sparsity_config(ignore, quantized) if sparsity_2of4 else None

    state = compressed_state_dict(model, quantized, scheme)
    stored = sum(state[f"{name}.{k}"].nbytes for name in quantized
                 for k in PackedQuantizationCompressor.compression_param_names(scheme))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, state_dict=state)
    tokenizer.save_pretrained(out_dir)
    ModelCompressor(quantization_config=config).update_config(str(out_dir))
    if sparsity is not None:  # update_config writes an empty sparsity_config
        path = out_dir / "config.json"
        data = json.loads(path.read_text())
        data["quantization_config"]["sparsity_config"] = sparsity
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return {"format": FORMAT, "bits": grid.bits, "group_size": grid.group_size,
            "symmetric": grid.symmetric, "sparsity_2of4": sparsity_2of4,
            "weight_file_bytes": sum(f.stat().st_size for f in out_dir.glob("*.safetensors")),
            "bits_per_weight": 8 * stored / sum(q.codes.numel() for q in quantized.values())}
