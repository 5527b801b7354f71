"""``xrayfeat report``: runs compared in Markdown and HTML."""

from __future__ import annotations

import click

from xrayfeat.cli.kit import (
    emit,
    handle_errors,
    json_option,
    say,
)


@click.command("report")
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", default="report", show_default=True, help="Output folder for report.md, report.html, figures/.")
@json_option
@handle_errors
def report_cmd(runs, out, as_json):
    """Compare runs: one table per task, then each run's figures and warnings (Markdown + HTML).

    \b
    Example:
      xrayfeat report runs/binary-vgg16-* runs/4class-* --out report
    """
    from xrayfeat.report.writer import write_report

    result = write_report(list(runs), out)
    emit(result.as_json(), as_json, lambda err: say(f"wrote {result.markdown} and {result.html}", err=err))
