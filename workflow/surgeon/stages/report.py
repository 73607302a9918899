"""Stages `report` and `plot-losses`: the comparison table and the recovery loss curves (rules/report.smk, rules/figures.smk)."""

from __future__ import annotations

from pathlib import Path

from .figures import add_plot_parser


def cmd_report(args):
    from ..artifacts import atomic_path
    from ..report import (compaction_markdown, report_columns, summary_rows, to_csv,
                         to_markdown, with_zeroshot)

    rows = summary_rows(args.evals)
    columns = report_columns(rows)
    rows, zeroshot = with_zeroshot(rows, args.zeroshot)
    columns += zeroshot
    markdown = to_markdown(rows, columns) + compaction_markdown(args.evals)
    for figure in args.figures:
        markdown += f"\n![{Path(figure).stem}]({Path(figure).name})\n"
    for path, text in ((args.csv, to_csv(rows, columns)), (args.md, markdown)):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(to_markdown(rows, columns))


def cmd_plot_losses(args):
    from ..artifacts import atomic_path
    from ..report import plot_losses, read_losses

    curves = {Path(path).parent.parent.name: read_losses(path) for path in args.losses}
    with atomic_path(args.out) as tmp:
        plot_losses(curves, tmp)


def add_parsers(sub) -> None:
    s = sub.add_parser("report", help="eval JSONs -> summary.csv + summary.md")
    s.add_argument("--evals", nargs="+", required=True, help="eval JSONs, one row each")
    s.add_argument("--csv", required=True, help="summary CSV to write")
    s.add_argument("--md", required=True, help="summary Markdown to write")
    s.add_argument("--figures", nargs="*", default=[], help="PNGs beside the .md to show in it")
    s.add_argument("--zeroshot", nargs="*", default=[],
                   help="zero-shot JSONs: their average and per-task accuracy become columns")
    s.set_defaults(func=cmd_report)

    add_plot_parser(sub, "plot-losses", "recovery loss curves (loss.tsv files) -> PNG", "losses",
                    "results/<model>/<experiment>/recovered/loss.tsv files", cmd_plot_losses)
