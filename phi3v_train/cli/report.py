"""``phi3v-train report``: a run's curves as one HTML page, viewable without TensorBoard."""

from __future__ import annotations

from pathlib import Path

import click

from phi3v_data.cli.errors import check_writable


@click.command("report")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write [RUN/report.html].")
def report(run_dir: Path, out: Path | None) -> None:
    """Plot loss, learning rate and evaluation metrics over steps from RUN/log.jsonl.

    The page is self-contained (inline SVG, no scripts, nothing fetched) and can be written while the run trains.

    \b
    Example:
        phi3v-train report runs/docvqa-lora && xdg-open runs/docvqa-lora/report.html
    """
    from phi3v_train.report import ReportError, write_report

    target = out or run_dir / "report.html"
    check_writable("--out", target)
    try:
        written = write_report(run_dir, target)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {written}")
