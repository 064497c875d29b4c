"""``phi3v-data preview DATASET.jsonl --out preview.html``: a self-contained HTML gallery of sampled records."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from pathlib import Path

import click
from rich.console import Console

from phi3v_data.cli.errors import CliError, check_apart, check_writable, write_error
from phi3v_data.io import special_file_problem
from phi3v_data.preview import build_preview, validator_findings, write_preview
from schemas.layout import images_beside


@click.command()
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "--output", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="HTML file to write, or a directory (index.html is written there).")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Images directory the record paths are relative to [default: images/ beside DATASET].")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=50, show_default=True, help="Records to sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (same seed, same sample).")
@click.option("--thumb", type=click.IntRange(min=16, max=2048), default=256, show_default=True,
              help="Longest side of the embedded thumbnails, in pixels.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Run the validator over the file and show its problems for each sampled record.")
def preview(dataset: Path, out: Path, images_dir: Path | None, limit: int, seed: int, thumb: int,
            validate: bool) -> None:
    """Write an HTML gallery of a random sample of DATASET's records (images, turns, problems).

    \b
    Example:
        phi3v-data preview data/docvqa/docvqa_val.jsonl --out docvqa_val.html --limit 30
    """
    images = images_dir or images_beside(dataset)
    check_apart("--out", out, [("the dataset", dataset), ("the images folder", images)])
    check_writable("--out", out, directory=out.suffix.lower() not in (".html", ".htm"))
    console = Console(stderr=True)
    with contextlib.ExitStack() as stack:
        readable = _spooled(dataset, images_dir, stack)
        with console.status("sampling records and making thumbnails…"):
            findings = validator_findings(readable, images_dir=images_dir) if validate else {}
            gallery = build_preview(readable, images_dir=images_dir, limit=limit, seed=seed, thumb=thumb,
                                    findings=findings)
    gallery = dataclasses.replace(gallery, source=dataset)
    try:
        written = write_preview(gallery, out)
    except OSError as exc:
        raise write_error("--out", out, exc) from None
    bad = sum(1 for item in gallery.items if item.problems)
    colour = "red" if bad else "green"
    console.print(
        f"wrote [bold]{written}[/] — {len(gallery.items)} of {gallery.total_lines} records, "
        f"[{colour}]{bad} with problems[/]"
    )


def _spooled(dataset: Path, images_dir: Path | None, stack: contextlib.ExitStack) -> Path:
    """``dataset`` itself, or for a pipe (``<(cat x.jsonl)``, a FIFO), which can be read only once while preview
    reads twice (validator, then sample), its bytes copied once into a temporary file that the stack removes."""
    if special_file_problem(dataset) is None:
        return dataset
    if images_dir is None:
        raise CliError(f"{dataset} is a pipe, so there is no images/ folder beside it; give --images DIR", 2)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="phi3v-preview-")))
    copy = folder / "records.jsonl"
    with open(dataset, "rb") as reader, open(copy, "wb") as writer:
        shutil.copyfileobj(reader, writer)
    return copy
