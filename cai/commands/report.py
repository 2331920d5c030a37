"""`cai report RUN [RUN ...] [--out FILE]`: one self-contained HTML page (see ``cai.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    sources: list[Path] = typer.Argument(..., help="cai generate run directories and/or training output folders."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="HTML file (default: RUN/report.html for one run, else ./report.html)."
    ),
) -> None:
    """Statistics, plots and a sample browser for runs (side by side when several), and the
    loss / reward curves of training folders; also writes each run's report.json. A folder it
    cannot read is a ``ReportError``: the CLI boundary prints it and exits 2."""
    from cai.report import write_report

    typer.echo(str(write_report(sources, out)))


def register(app: typer.Typer) -> None:
    app.command("report")(report)
