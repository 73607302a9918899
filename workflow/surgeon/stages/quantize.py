"""Stages `quantize`, `export-gguf`, `export-compressed-tensors` (rules/quantize.smk)."""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import made_by
from ..errors import SurgeonError
from ..model_folder import write_model_folder

def cmd_quantize(args):
    import contextlib

    from ..artifacts import check_free_space
    from ..curvature_store import open_curvature
    from ..gguf_export import gguf_type
    from ..model_folder import output_folder_bytes
    from ..models import load_model, resolve_device
    from ..masks import load_mask, weight_columns
    from ..prune import decoder_weights
    from ..quantize import Grid, bits_per_weight, quantize_embeddings, quantize_model

    start = time.time()
    check_free_space(args.out, output_folder_bytes(args.model, codes=True))
    model = load_model(args.model, "cpu")
    masks = load_mask(args.model, decoder_weights(model))
    removed = weight_columns(masks, model)
    grid = Grid(args.bits, args.group_size, not args.asymmetric)
    curvature = open_curvature(args.curvature) if args.curvature else contextlib.nullcontext()
    with curvature as f:
        codes = quantize_model(model, args.method, grid, removed, f, args.damp,
                               str(resolve_device(args.device)))
    # on llama.cpp's grids the embedding goes to Q8_0 too, as in the .gguf (gguf_export.py)
    tables = quantize_embeddings(model) if gguf_type(grid) else {}
    inputs = {"model": args.model, **({"curvature": args.curvature} if args.curvature else {})}
    info = {"method": args.method, "bits": grid.bits, "group_size": grid.group_size,
            "symmetric": grid.symmetric, "bits_per_weight": bits_per_weight(grid),
            "quantized_weights": sum(q.codes.numel() for q in codes.values()),
            "embeddings_q8_0": sorted(tables)}
    write_model_folder(args.out, model, args.model, masks, "quantize", inputs,
                        {"damp": args.damp}, start, codes=codes, codes_info=info,
                        quantization=info)
    print(f"{args.method} {grid.bits}-bit, groups of {grid.group_size}: "
          f"{info['bits_per_weight']:.3f} bits per decoder-Linear weight")


def cmd_export_gguf(args):
    from ..artifacts import QUANT_FILE, atomic_path, manifest, sidecar, write_json
    from ..gguf_export import export_gguf
    from ..models import load_model, load_tokenizer
    from ..quantize import load_codes

    start = time.time()
    quant = made_by(args.model).get("quantization")
    if not quant or not (Path(args.model) / QUANT_FILE).is_file():
        raise SurgeonError(f"{args.model} is not a quantized model (run the quantize stage)")
    if not quant["symmetric"] or quant["group_size"] != 32 or quant["bits"] not in (4, 8):
        raise SurgeonError("GGUF export needs the Q4_0/Q8_0 grid: symmetric, 4 or 8 bits, "
                           f"groups of 32 (this model: {quant})")
    model = load_model(args.model, "cpu")
    codes = load_codes(Path(args.model) / QUANT_FILE)
    with atomic_path(args.out) as tmp:
        info = export_gguf(model, load_tokenizer(args.model), codes, tmp,
                           name=Path(args.model).parent.name)
        size = tmp.stat().st_size
        total = sum(info["weights"].values())
        info.update(file_bytes=size, bits_per_weight_file=round(8 * size / total, 4))
        write_json(sidecar(args.out), manifest("export-gguf", {"model": args.model}, {}, start,
                                                gguf=info))
    print(f"{args.out}: {size / 2**20:.1f} MiB, {info['bits_per_weight_file']:.2f} bits per "
          f"weight over all tensors")


def cmd_export_compressed_tensors(args):
    from ..artifacts import QUANT_FILE, atomic_path, manifest, write_json
    from ..ct_export import export_compressed_tensors
    from ..models import load_model, load_tokenizer
    from ..quantize import load_codes

    start = time.time()
    codes_file = Path(args.model) / QUANT_FILE
    if not codes_file.is_file():
        raise SurgeonError(f"{args.model} is not a quantized model (no {QUANT_FILE})")
    model = load_model(args.model, "cpu")
    with atomic_path(args.out, directory=True) as tmp:
        info = export_compressed_tensors(model, load_tokenizer(args.model),
                                         load_codes(codes_file), tmp,
                                         sparsity_2of4=args.structure == "2:4")
        write_json(tmp / "manifest.json",
                   manifest("export-compressed-tensors", {"model": args.model},
                            {"structure": args.structure}, start, export=info))
    print(f"{args.out}: {info['bits_per_weight']:.3f} bits per decoder-Linear weight stored")


def add_parsers(sub) -> None:
    s = sub.add_parser("quantize", help="RTN or GPTQ of every decoder Linear -> model folder")
    s.add_argument("--model", required=True, help="model folder to quantize")
    s.add_argument("--method", choices=["rtn", "gptq"], required=True,
                   help="round to nearest, or GPTQ (error feedback through H)")
    s.add_argument("--curvature", default="", help="curvature.h5 of this model (gptq: its A)")
    s.add_argument("--bits", type=int, default=4, help="bits per weight code")
    s.add_argument("--group-size", type=int, default=32, help="weights sharing one scale")
    s.add_argument("--asymmetric", action="store_true", help="zero point per group")
    s.add_argument("--damp", type=float, default=0.01, help="GPTQ: relative damping of H")
    s.add_argument("--device", default="auto", help="where the maths runs (auto: CUDA if present)")
    s.add_argument("--out", required=True, help="model folder to write")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("export-gguf", help="quantized Llama (Q4_0/Q8_0 grid) -> .gguf file")
    s.add_argument("--model", required=True, help="folder written by the quantize stage")
    s.add_argument("--out", required=True, help=".gguf file to write")
    s.set_defaults(func=cmd_export_gguf)

    s = sub.add_parser("export-compressed-tensors",
                       help="quantized model -> compressed-tensors folder (vLLM)")
    s.add_argument("--model", required=True, help="folder written by the quantize stage")
    s.add_argument("--structure", default="unstructured",
                   help="2:4 adds compressed-tensors' 2:4 sparsity metadata")
    s.add_argument("--out", required=True, help="compressed-tensors folder to write")
    s.set_defaults(func=cmd_export_compressed_tensors)
