"""A CSV file as a small standalone HTML page: Snakemake's report shows HTML inline but offers a
CSV only as a download, so each table of the report also gets this view."""

from __future__ import annotations

import csv
import html
import io

STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 7px; white-space: nowrap; }
th { background: #eee; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
"""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_to_html(text: str, title: str) -> str:
    """Every row and column of the CSV, numbers right-aligned, header kept in view on scroll."""
    rows = list(csv.reader(io.StringIO(text)))
    head, body = (rows[0], rows[1:]) if rows else ([], [])
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
           f"<h3>{html.escape(title)}</h3>", "<table>",
           "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    for row in body:
        cells = (f'<td class="num">{html.escape(c)}</td>' if _is_number(c)
                 else f"<td>{html.escape(c)}</td>" for c in row)
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</table>", "</body></html>"]
    return "\n".join(out) + "\n"
