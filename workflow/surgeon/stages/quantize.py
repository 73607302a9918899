"""Stages `quantize`, `export-gguf`, `export-compressed-tensors` (rules/quantize.smk)."""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import made_by
from ..errors import SurgeonError


def quantization_plan(model, args) -> tuple[str | None, dict, dict]:
    """(llama.cpp file type or None, {decoder Linear: grid}, {embedding table: grid}).

    With --gguf-type every tensor gets the block llama-quantize would give it for that file
    type (ggml_plan); a --bits/--group-size grid that is one of llama.cpp's file types (Q4_0,
    Q5_0, Q8_0) is that file type; any other grid is used for every decoder Linear and leaves
    the embedding as it is."""
    from ..ggml_plan import FILE_TYPES, file_type_grids
    from ..models import decoder_linears
    from ..quantize import Grid, ggml_type

    grid = Grid(args.bits, args.group_size, not args.asymmetric)
    file_type = args.gguf_type or (ggml_type(grid) if ggml_type(grid) in FILE_TYPES else None)
    if file_type is None:
        return None, {name: grid for name in decoder_linears(model)}, {}
    return (file_type, *file_type_grids(model, file_type))


def cmd_quantize(args):
    import contextlib
    from collections import Counter

    from ..artifacts import check_free_space
    from ..curvature_store import open_curvature
    from ..model_folder import output_folder_bytes, write_model_folder
    from ..models import load_model, resolve_device
    from ..masks import load_mask, weight_columns
    from ..prune import decoder_weights
    from ..quantize import (GPTQ_SHRINK, bits_per_weight, ggml_type, quantize_embeddings,
                            quantize_model)

    start = time.time()
    shrink = GPTQ_SHRINK if args.shrink is None else args.shrink
    check_free_space(args.out, output_folder_bytes(args.model, codes=True))
    model = load_model(args.model, "cpu")
    masks = load_mask(args.model, decoder_weights(model))
    removed = weight_columns(masks, model)
    file_type, grids, table_grids = quantization_plan(model, args)
    curvature = open_curvature(args.curvature) if args.curvature else contextlib.nullcontext()
    with curvature as f:
        codes = quantize_model(model, args.method, grids, removed, f, args.damp,
                               str(resolve_device(args.device)), scale_search=args.scale_search,
                               shrink=shrink)
    # the embedding on its llama.cpp block too, as in the .gguf (gguf_export.py)
    tables = quantize_embeddings(model, table_grids) if table_grids else {}
    inputs = {"model": args.model, **({"curvature": args.curvature} if args.curvature else {})}
    weights = {name: q.codes.numel() for name, q in codes.items()}
    bits = sum(bits_per_weight(codes[n].grid) * w for n, w in weights.items()) / sum(
        weights.values())
    first = next(iter(grids.values()))
    info = {"method": args.method, "bits": first.bits, "group_size": first.group_size,
            "symmetric": first.symmetric, "bits_per_weight": round(bits, 4),
            "quantized_weights": sum(weights.values()), "tables": sorted(tables),
            **({"gguf_type": file_type} if file_type else {}),
            "tensor_types": dict(Counter(ggml_type(q.grid) or str(q.grid)
                                         for q in {**codes, **tables}.values()))}
    write_model_folder(args.out, model, args.model, masks, "quantize", inputs,
                        {"damp": args.damp, "scale_search": args.scale_search,
                         "shrink": shrink}, start, codes={**codes, **tables}, codes_info=info,
                        quantization=info)
    print(f"{args.method} {file_type or first}: {info['bits_per_weight']:.3f} bits per "
          f"decoder-Linear weight, tensors {info['tensor_types']}")


def cmd_export_gguf(args):
    from ..artifacts import QUANT_FILE, atomic_path, manifest, sidecar, write_json
    from ..gguf_export import export_gguf
    from ..models import load_model, load_tokenizer
    from ..quantize import load_codes

    start = time.time()
    quant = made_by(args.model).get("quantization")
    quantized = quant and (Path(args.model) / QUANT_FILE).is_file()
    if args.float_type and quantized:
        raise SurgeonError(f"{args.model} is quantized: export its codes (no --float-type)")
    if not args.float_type and not quantized:
        raise SurgeonError(f"{args.model} is not a quantized model (run the quantize stage, or "
                           "give --float-type F16|F32 for an unquantized file)")
    if quantized and "gguf_type" not in quant and not (
            quant["symmetric"] and quant["group_size"] == 32 and quant["bits"] in (4, 8)):
        raise SurgeonError("GGUF export needs llama.cpp block types: quantize with --gguf-type "
                           f"or on the Q4_0/Q5_0/Q8_0 grid (this model: {quant})")
    model = load_model(args.model, "cpu")
    if quantized:
        codes = load_codes(Path(args.model) / QUANT_FILE)
        tables = load_codes(Path(args.model) / QUANT_FILE, tables=True) or None  # None: Q8_0
        file_type = quant.get("gguf_type")
    else:  # pruned zeros stay zeros in F16 / F32
        codes, tables, file_type = {}, {}, args.float_type
    with atomic_path(args.out) as tmp:
        info = export_gguf(model, load_tokenizer(args.model), codes, tmp,
                           name=Path(args.model).parent.name, tables=tables,
                           file_type=file_type)
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
    from ..ggml_plan import FILE_TYPES

    s = sub.add_parser("quantize", help="RTN or GPTQ of every decoder Linear -> model folder")
    s.add_argument("--model", required=True, help="model folder to quantize")
    s.add_argument("--method", choices=["rtn", "gptq"], required=True,
                   help="round to nearest, or GPTQ (error feedback through H)")
    s.add_argument("--curvature", default="", help="curvature.h5 of this model (gptq: its A)")
    s.add_argument("--bits", type=int, default=4, help="bits per weight code")
    s.add_argument("--group-size", type=int, default=32, help="weights sharing one scale")
    s.add_argument("--asymmetric", action="store_true", help="zero point per group")
    s.add_argument("--damp", type=float, default=0.01, help="GPTQ: relative damping of H")
    s.add_argument("--shrink", type=float, default=None,
                   help="GPTQ: H = (1 - shrink) A + shrink diag(A), in [0, 1] (default "
                        "quantize.GPTQ_SHRINK)")
    s.add_argument("--scale-search", action="store_true",
                   help="Q4_0 / Q5_0 scales searched, weighted by the diagonal of A (needs "
                        "--curvature)")
    s.add_argument("--gguf-type", default="", choices=["", *FILE_TYPES],
                   help="llama.cpp file type: every tensor on the block llama-quantize gives it "
                        "(overrides --bits, --group-size, --asymmetric)")
    s.add_argument("--device", default="auto", help="where the maths runs (auto: CUDA if present)")
    s.add_argument("--out", required=True, help="model folder to write")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("export-gguf", help="quantized model (llama.cpp block types) -> .gguf file")
    s.add_argument("--model", required=True, help="folder written by the quantize stage")
    s.add_argument("--out", required=True, help=".gguf file to write")
    s.add_argument("--float-type", default="", choices=["", "F16", "F32"],
                   help="an unquantized model (dense or pruned) as F16 or F32, for llama.cpp's "
                        "own tools such as llama-quantize")
    s.set_defaults(func=cmd_export_gguf)

    s = sub.add_parser("export-compressed-tensors",
                       help="quantized model -> compressed-tensors folder (vLLM)")
    s.add_argument("--model", required=True, help="folder written by the quantize stage")
    s.add_argument("--structure", default="unstructured",
                   help="2:4 adds compressed-tensors' 2:4 sparsity metadata")
    s.add_argument("--out", required=True, help="compressed-tensors folder to write")
    s.set_defaults(func=cmd_export_compressed_tensors)
