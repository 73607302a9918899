"""`surgeon` subcommands behind the HTML report: extract small data from artifacts (spectra,
per-layer zeros, benchmarks), plot them, and render tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import SurgeonError


def _write_text(path, text: str) -> None:
    from ..artifacts import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _plot(out, draw, *data) -> None:
    from ..artifacts import atomic_path

    with atomic_path(out) as tmp:
        draw(*data, tmp)


def cmd_spectra(args):
    from ..artifacts import write_json
    from ..spectra import curvature_spectra

    spectra = curvature_spectra(args.curvature)
    if not spectra["layers"]:
        raise SurgeonError(f"{args.curvature}: no layer of a numbered decoder block")
    write_json(args.out, spectra)


def cmd_layer_sparsity(args):
    from ..layer_sparsity import layer_zeros, to_tsv
    from ..models import load_model

    _write_text(args.out, to_tsv(layer_zeros(load_model(args.model, "cpu"))))


def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SurgeonError(f"cannot read {path}: {err}") from None


def cmd_plot_perplexity(args):
    from ..plots import plot_perplexity, shot_curves

    dense, curves = shot_curves([_read_json(p) for p in args.evals])
    _plot(args.out, plot_perplexity, dense, curves)


def cmd_plot_shots(args):
    from ..plots import plot_shots, shot_count_series

    _plot(args.out, plot_shots, shot_count_series([_read_json(p) for p in args.evals]))


def cmd_plot_layer_sparsity(args):
    from ..layer_sparsity import read_tsv
    from ..plots import plot_layer_sparsity

    # results/<model>/<experiment>/layer_sparsity.tsv: the experiment names the panel
    tables = {Path(p).parent.name: read_tsv(p) for p in args.tables}
    _plot(args.out, plot_layer_sparsity, tables)


def spectra_source(path) -> tuple[str, int]:
    """(experiment, shot) of a spectra JSON: `<model>/dense/spectra.json` is the dense
    curvature (read by shot 1), `<model>/<experiment>/spectra/shot-<k>.json` that of shot k."""
    path = Path(path)
    m = re.fullmatch(r"shot-(\d+)\.json", path.name)
    if m and path.parent.name == "spectra":
        return path.parent.parent.name, int(m.group(1))
    return "dense", 1


def cmd_plot_spectra(args):
    from ..plots import plot_spectra

    sources = []
    for p in args.spectra:
        experiment, shot = spectra_source(p)
        sources.append({"experiment": experiment, "shot": shot, **_read_json(p)})
    sources.sort(key=lambda s: (s["experiment"] != "dense", s["experiment"], s["shot"]))
    _plot(args.out, plot_spectra, sources)


def cmd_gather_benchmarks(args):
    from ..benchmarks import benchmark_files, gather, to_csv

    paths = benchmark_files(args.dirs, args.files)
    _write_text(args.out, to_csv(gather(paths, args.root)))
    print(f"{len(paths)} benchmark files -> {args.out}")


def cmd_plot_benchmarks(args):
    from ..benchmarks import read_csv
    from ..plots import plot_benchmarks

    _plot(args.out, plot_benchmarks, read_csv(args.csv))


def cmd_html_table(args):
    from ..html_table import csv_to_html

    _write_text(args.out, csv_to_html(Path(args.csv).read_text(), args.title))


def add_plot_parser(sub, name, help, inputs, inputs_help, func) -> None:
    """`surgeon <name> --<inputs> FILE... --out PNG`: the shape of every figure command."""
    s = sub.add_parser(name, help=help)
    s.add_argument(f"--{inputs}", nargs="+", required=True, help=inputs_help)
    s.add_argument("--out", required=True, help="PNG to write")
    s.set_defaults(func=func)


def add_parsers(sub) -> None:
    s = sub.add_parser("spectra", help="eigenvalues of A and G of a few layers of a curvature.h5")
    s.add_argument("--curvature", required=True, help="curvature .h5 file")
    s.add_argument("--out", required=True, help="spectra JSON to write")
    s.set_defaults(func=cmd_spectra)

    s = sub.add_parser("layer-sparsity", help="zeros per decoder Linear of a model -> TSV")
    s.add_argument("--model", required=True, help="model folder")
    s.add_argument("--out", required=True, help="TSV to write")
    s.set_defaults(func=cmd_layer_sparsity)

    for name, against, func in (("plot-perplexity", "sparsity", cmd_plot_perplexity),
                                ("plot-shots", "number of shots", cmd_plot_shots)):
        add_plot_parser(sub, name, f"eval JSONs -> perplexity vs {against} PNG", "evals",
                        "eval JSONs", func)
    add_plot_parser(sub, "plot-layer-sparsity", "layer_sparsity.tsv files -> bars PNG", "tables",
                    "results/<model>/<experiment>/layer_sparsity.tsv files",
                    cmd_plot_layer_sparsity)
    add_plot_parser(sub, "plot-spectra", "spectra JSONs -> curvature spectra PNG", "spectra",
                    "<model>/dense/spectra.json, <model>/<experiment>/spectra/shot-K.json",
                    cmd_plot_spectra)

    s = sub.add_parser("gather-benchmarks", help="Snakemake benchmark TSVs -> one CSV")
    s.add_argument("--root", default="benchmarks", help="folder the job names are relative to")
    s.add_argument("--dirs", nargs="*", default=[], help="folders whose *.tsv are read")
    s.add_argument("--files", nargs="*", default=[], help="single benchmark files")
    s.add_argument("--out", required=True, help="CSV to write")
    s.set_defaults(func=cmd_gather_benchmarks)

    s = sub.add_parser("plot-benchmarks", help="benchmarks.csv -> wall time / memory PNG")
    s.add_argument("--csv", required=True, help="benchmarks.csv of gather-benchmarks")
    s.add_argument("--out", required=True, help="PNG to write")
    s.set_defaults(func=cmd_plot_benchmarks)

    s = sub.add_parser("html-table", help="CSV -> standalone HTML table (report view)")
    s.add_argument("--csv", required=True, help="CSV to show")
    s.add_argument("--title", default="", help="page title")
    s.add_argument("--out", required=True, help="HTML file to write")
    s.set_defaults(func=cmd_html_table)
