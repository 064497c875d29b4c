"""``phi3v-data validate FILE.jsonl [...]``: the pre-flight check of a dataset before training."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from phi3v_data.cli.errors import check_apart, check_writable, write_error
from phi3v_data.io import dumps_utf8, write_json
from phi3v_data.record_checks import LengthSpec, LengthSpecError
from phi3v_data.report import ValidationReport, render
from phi3v_data.validate import validate_file
from schemas.errors import json_file_error, utf8_error
from schemas.layout import images_beside

PARALLEL_BYTES = 32 << 20  # below this, starting worker processes costs more than it saves


def _length_spec(processor: Path | None, num_crops: int | None, max_length: int | None) -> LengthSpec | None:
    if processor is None:
        if num_crops is not None or max_length is not None:
            raise click.UsageError("--num-crops and --max-length need --processor DIR (the tokenizer to count with)")
        return None
    if num_crops is None:
        num_crops = _saved_num_crops(processor)
    spec = LengthSpec(num_crops=num_crops, max_length=max_length, processor=processor)
    try:
        spec.text_encoder()
    except LengthSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--processor") from None
    return spec


def _saved_num_crops(processor: Path) -> int:
    """``num_crops`` of ``DIR/preprocessor_config.json``; a usage error saying why it cannot be read."""
    path = processor / "preprocessor_config.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        why = utf8_error(exc) if isinstance(exc, UnicodeDecodeError) else json_file_error(path, exc)
        raise click.UsageError(f"--processor: {why}; fix it or pass --num-crops N") from None
    except OSError:
        settings = {}
    try:
        return int(settings["num_crops"])
    except (KeyError, TypeError, ValueError):
        raise click.UsageError(f"{processor} has no preprocessor_config.json with num_crops; "
                               "pass --num-crops N") from None


def _workers(requested: int, files: tuple[Path, ...]) -> int:
    if requested:
        return requested
    large = sum(f.stat().st_size for f in files) >= PARALLEL_BYTES
    return min(os.cpu_count() or 1, 4) if large else 1


def _run(files: tuple[Path, ...], show_progress: bool, output: Path | None = None, **options) -> ValidationReport:
    """Validate each file, under one rich progress bar (bytes read) when stderr is a terminal."""
    console = Console(stderr=True)
    columns = (TextColumn("validating"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    progress = Progress(*columns, console=console, transient=True) if show_progress and console.is_terminal else None
    reports = []
    with progress or contextlib.nullcontext():
        task = progress.add_task("validate", total=sum(f.stat().st_size for f in files)) if progress else None
        advance = (lambda n: progress.advance(task, n)) if progress else None
        for path in files:
            try:
                reports.append(validate_file(path, progress=advance, output=output, **options))
            except OSError as exc:
                if output is not None and exc.filename is not None and Path(exc.filename) != path:
                    raise write_error("--out", output, exc) from None  # the clean copy, not the input
                raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    return ValidationReport.combine(reports)


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Images directory the paths are relative to [default: images/ beside each jsonl].")
@click.option("--deep", is_flag=True, help="Decode every image fully (slow; catches truncated files).")
@click.option("--exists-only", is_flag=True,
              help="Only check that image files exist (fastest; no header read, so no sizes and no --processor).")
@click.option("--processor", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint/processor dir with tokenizer.json: compute each record's exact sequence length.")
@click.option("--num-crops", type=click.IntRange(min=1),
              help="HD crops per image for lengths [default: the processor's preprocessor_config.json].")
@click.option("--max-length", type=click.IntRange(min=1), help="Flag records longer than this many tokens.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the machine-readable report (JSON) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout instead of the summary.")
@click.option("--output", "--out", "-o", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write only the valid records here (one input file only).")
@click.option("--limit-errors", type=click.IntRange(min=0), default=50, show_default=True,
              help="Findings listed in the summary.")
@click.option("--workers", "-j", type=click.IntRange(min=0), default=0,
              help="Worker processes [default: one per core for files over 32 MB, else 1].")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit code says it.")
def validate(files: tuple[Path, ...], images_dir: Path | None, deep: bool, exists_only: bool, processor: Path | None,
             num_crops: int | None, max_length: int | None, report_path: Path | None, as_json: bool,
             output: Path | None, limit_errors: int, workers: int, quiet: bool) -> None:
    """Check dataset FILES before training: every problem with its line, record id and field.

    Checks JSON, the record schema, duplicate ids, empty texts, <|image_k|> tags, image paths (safe, existing,
    decodable: header by default, --deep decodes fully) and, with --processor, each record's token length.
    Exit status: 0 clean, 1 problems found, 2 usage error.

    \b
    Example:
        phi3v-data validate data/ucf101/ucf101_train.jsonl --report report.json
        phi3v-data validate train.jsonl --processor ckpt/ --num-crops 16 --max-length 4096 -o clean.jsonl
    """
    if deep and exists_only:
        raise click.UsageError("--deep and --exists-only contradict each other; pick one")
    if exists_only and processor is not None:
        raise click.UsageError("--processor needs image sizes, which --exists-only does not read")
    if output is not None and len(files) > 1:
        raise click.UsageError("--out takes one input file; validate the files one at a time to clean them")
    inputs = [("the input", path) for path in files]
    inputs += [("--images", images_dir)] if images_dir else [("the images folder", images_beside(f)) for f in files]
    if report_path is not None:
        check_apart("--report", report_path, [*inputs, *([("--out", output)] if output else [])])
        check_writable("--report", report_path)
    if output is not None:
        check_apart("--out", output, inputs)
        check_writable("--out", output)
    lengths = _length_spec(processor, num_crops, max_length)
    report = _run(files, show_progress=not (quiet or as_json), images_dir=images_dir, lengths=lengths, output=output,
                  image_check="deep" if deep else "exists" if exists_only else "header",
                  workers=_workers(workers, files))
    if report_path is not None:
        try:
            write_json(report_path, report.to_dict())
        except OSError as exc:
            raise write_error("--report", report_path, exc) from None
    if as_json:
        click.echo(dumps_utf8(report.to_dict(), indent=2))  # valid UTF-8 whatever the input (lone surrogates)
    elif not quiet:
        render(report, Console(), limit=limit_errors)
    click.get_current_context().exit(0 if report.valid else 1)
