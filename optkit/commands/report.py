"""`optkit report REPORT.json`: render the single source as a table, Markdown, CSV or HTML."""
from __future__ import annotations

import os

import click

from optkit import report as report_mod

_SUFFIX_FORMAT = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".csv": "csv",
                  ".txt": "table"}


@click.command("report")
@click.argument("report_json", metavar="REPORT.json", type=click.Path(dir_okay=False))
@click.option("--format", "-f", "fmt", type=click.Choice(report_mod.FORMATS), default=None,
              help="Output format (default: from -o's suffix, else a terminal table).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write to FILE (atomically) instead of stdout.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Also write latency_vs_size.png / accuracy_vs_latency.png into DIR.")
def report_cmd(report_json, fmt, output, plots_dir):
    """Render REPORT.json (from `optimize` or `bench --json`) as md, html, csv or a table."""
    doc = report_mod.load(report_json)
    if fmt is None:
        fmt = _SUFFIX_FORMAT.get(os.path.splitext(output or "")[1].lower(), "table")
    text = report_mod.render(doc, fmt)
    if output:
        report_mod.write_text(text, output)
        click.echo(f"report: wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    if plots_dir:
        for path in report_mod.write_plots(doc, plots_dir):
            click.echo(f"report: wrote {path}", err=True)
