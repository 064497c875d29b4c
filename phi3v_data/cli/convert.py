"""``phi3v-data convert NAME SOURCE --out DIR``: one subcommand per registered converter, flags from its Options."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from phi3v_data.convert import RunResult, run_converter
from phi3v_data.converter import Converter, ConvertUsageError
from phi3v_data.plugins import PluginError, converter_entry_points, load_converter
from schemas.errors import validation_problems
from schemas.layout import FAILURES_REPORT, failures_path


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """Map a pydantic field annotation to (click type, is_flag)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # Optional[X] → X
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _click_type(args[0]) if len(args) == 1 else (str, False)
    if origin is Literal:
        return click.Choice([str(a) for a in get_args(annotation)]), False
    if annotation is bool:
        return bool, True
    if annotation in (int, float, str):
        return annotation, False
    if annotation is Path:
        return click.Path(path_type=Path), False
    return str, False


def _option(name: str, info: FieldInfo) -> click.Option:
    flag = "--" + name.replace("_", "-")
    kind, is_flag = _click_type(info.annotation)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if is_flag:
        return click.Option(
            [f"{flag}/--no-{name.replace('_', '-')}"], default=bool(default), help=info.description, show_default=True
        )
    return click.Option(
        [flag, name], type=kind, default=default, required=info.is_required(), help=info.description,
        show_default=default is not None,
    )


def _first_doc_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _build_command(name: str, cls: type[Converter]) -> click.Command:
    params: list[click.Parameter] = [
        click.Argument(["source"], type=click.Path(exists=not cls.accepts_names, path_type=Path)),
        click.Option(["--out", "--output", "-o", "out"], type=click.Path(path_type=Path), required=True,
                     help="Output dataset directory."),
        click.Option(["--name"], default=None, help=f"Prefix of the output jsonl files [default: {cls.output_name}]."),
        click.Option(
            ["--workers", "-j"], type=click.IntRange(min=1), default=None, help="Worker processes [default: CPU count]."
        ),
        click.Option(["--strict"], is_flag=True, help="Exit non-zero when any item failed."),
        click.Option(["--overwrite"], is_flag=True, help="Redo a conversion already in --out."),
    ]
    params += [_option(field, info) for field, info in cls.Options.model_fields.items()]

    def callback(
        source: Path, out: Path, name: str | None, workers: int | None, strict: bool, overwrite: bool, **options: Any
    ) -> None:
        console = Console(stderr=True)
        try:
            opts = cls.Options(**{k: v for k, v in options.items() if v is not None})
        except ValidationError as exc:
            lines = [f"--{field.replace('_', '-')}: {message}" for field, message in validation_problems(exc)]
            raise click.UsageError("; ".join(lines)) from None
        try:
            result = run_converter(
                cls(opts), source, out, name=name, workers=workers, overwrite=overwrite, console=console
            )
        except ConvertUsageError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code  # 2 for an --out that overlaps an input (a usage error)
            raise error from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/] — rerun the same command to resume where it stopped")
            raise SystemExit(130) from None
        if result.up_to_date:
            return
        console.print(summary_table(result))
        if result.failures:
            for failure in result.failures[:10]:  # escaped: a reason may hold [brackets] (pip install 'phi3v[video]')
                where = f"{failure.file}:{failure.line}" if failure.line else failure.file
                console.print(f"  [red]failed[/] {escape(where)}: {escape(failure.reason)}")
            if len(result.failures) > 10:
                console.print(f"  … and {len(result.failures) - 10} more in {escape(str(failures_path(out)))}")
        if not sum(result.counts.values()):
            raise click.ClickException(
                f"no records were written: all {len(result.failures)} input(s) failed (see {failures_path(out)}); "
                "fix them and rerun the same command, which retries only the failures"
            )
        if result.failures and strict:
            raise SystemExit(1)

    doc = (cls.__doc__ or name).strip()
    return click.Command(name, params=params, callback=callback, help=doc, short_help=_first_doc_line(cls))


def summary_table(result: RunResult) -> Table | Group:
    """The closing table of a conversion: records and images per split (with the release's split name), failures,
    then what ``--val-ratio`` carved."""
    table = Table(title=f"converted → {result.out}")
    table.add_column("split")
    table.add_column("records", justify="right")
    table.add_column("images", justify="right")
    table.add_column("file")
    for split, count in result.counts.items():
        path = result.files.get(split)
        label = f"{split} ({result.source_splits[split]})" if split in result.source_splits else split
        table.add_row(label, str(count), str(result.images.get(split, "")), path.name if path else "")
    table.caption = f"{len(result.failures)} failure(s)" + (f" — see {FAILURES_REPORT}" if result.failures else "")
    if not result.carved:
        return table
    return Group(table, *(Text(f"carved {c.describe()}") for c in result.carved))  # own lines: a caption would wrap


class ConverterGroup(click.Group):
    """Subcommands come from the ``phi3v.converters`` entry points, loaded only when named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(converter_entry_points())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        try:
            return _build_command(name, load_converter(name))
        except PluginError as exc:
            if name in converter_entry_points():
                raise click.ClickException(str(exc)) from None
            return None


def _list_converters(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    table = Table(title="converters")
    table.add_column("name")
    table.add_column("from")
    table.add_column("what it reads")
    for name, ep in converter_entry_points().items():
        try:
            cls = load_converter(name)
            table.add_row(name, ep.value, _first_doc_line(cls))
        except PluginError as exc:
            table.add_row(name, ep.value, f"[red]{exc.__cause__ or exc}[/]")
    Console().print(table)
    ctx.exit(0)


@click.group(cls=ConverterGroup)
@click.option(
    "--list", "list_", is_flag=True, expose_value=False, is_eager=True, callback=_list_converters,
    help="List converters and exit.",
)
def convert() -> None:
    """Convert a downloaded dataset into images/ + conversation jsonl.

    \b
    Example:
        phi3v-data convert --list
        phi3v-data convert video UCF-101/ --out data/ucf101 --frames 8
    """
