"""``phi3v-data export DATASET.jsonl --to llava|llava-multi|sharegpt --out FILE.json[l]``: hand a dataset to other
tools."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from phi3v_data.cli.errors import check_writable
from phi3v_data.export import ExportResult, ExportUsageError, Format, export_dataset

SHOWN_PROBLEMS = 10


@click.command()
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--to", "to", type=click.Choice(["llava", "llava-multi", "sharegpt"]), required=True,
    help="Target layout: llava (LLaVA-1.5, one image per record), llava-multi (LLaVA-NeXT, image list), "
    "sharegpt (LLaMA-Factory, images list).",
)
@click.option(
    "--out", "--output", "-o", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
    help="FILE.json (one JSON array, as LLaVA reads it) or FILE.jsonl (one row per line).",
)
@click.option(
    "--image-folder", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Write image paths relative to this folder [default: as stored, relative to the dataset's images/ dir].",
)
def export(dataset: Path, to: Format, out: Path, image_folder: Path | None) -> None:
    """Export a dataset's records as LLaVA or ShareGPT (LLaMA-Factory) rows.

    <|image_k|> tags become <image> tags; task and reference answers are left out. Records that cannot be
    expressed are listed and skipped (exit 1).

    \b
    Example:
        phi3v-data export data/docvqa/docvqa_train.jsonl --to llava --out docvqa_llava.json
        # then train LLaVA with --data_path docvqa_llava.json --image_folder data/docvqa/images
    """
    check_writable("--out", out)
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("exporting {task.fields[name]}: {task.completed:.0f} records"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("export", total=None, name=dataset.name)
        try:
            result = export_dataset(dataset, out, to=to, image_folder=image_folder,
                                    on_record=lambda: progress.advance(task))
        except ExportUsageError as exc:
            raise click.UsageError(str(exc)) from None
        except OSError as exc:  # unreadable dataset, unwritable --out
            raise click.ClickException(str(exc)) from None
    console.print(_summary(result, to=to, dataset=dataset))
    for problem in result.problems[:SHOWN_PROBLEMS]:
        record = f" (id {problem.id})" if problem.id else ""
        console.print(f"  [red]skipped[/] {escape(f'{dataset}:{problem.line}{record}: {problem.reason}')}",
                      soft_wrap=True)
    if len(result.problems) > SHOWN_PROBLEMS:
        console.print(f"  … and {len(result.problems) - SHOWN_PROBLEMS} more")
    if result.problems:
        raise SystemExit(1)


def _summary(result: ExportResult, *, to: str, dataset: Path) -> Table:
    table = Table(title=f"exported {dataset.name} → {result.out}")
    table.add_column("format")
    table.add_column("rows", justify="right")
    table.add_column("skipped", justify="right")
    table.add_row(to, str(result.rows), str(len(result.problems)))
    return table
