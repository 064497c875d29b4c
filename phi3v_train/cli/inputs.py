"""What the model-reading commands (``eval``, ``predict``, ``export``) share at the command line: a split's records
read with each bad line reported, the paths the output rule keeps ``--out`` apart from, and a model load's failures
turned into one message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from phi3v_data.cli.errors import weights_problem


@contextmanager
def load_failures(what: str, *known: type[Exception]) -> Iterator[None]:
    """``known`` errors (a LoadError, an unreadable checkpoint file) end in their own message; an error
    :func:`weights_problem` recognises (a truncated or mismatched checkpoint) in ``what: problem``; any other
    propagates, a bug to see."""
    try:
        yield
    except known as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        problem = weights_problem(exc)
        if problem is None:
            raise
        raise click.ClickException(f"{what}: {problem}") from None


def read_split(
    data: Path, split: str, limit: int | None, console: Console, *, purpose: str
) -> tuple[list[Path], list, Path, list[str]]:
    """(files, records, images root, skipped lines) of one dataset's split for eval and predict: the lines that
    cannot be read are printed and returned, a missing split or no usable record is a message naming the files."""
    from phi3v_train.evaluate import find_split, load_records

    try:
        files, images_root = find_split(data, split)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    skipped: list[str] = []
    records = load_records(files, limit=limit, on_error=skipped.append)
    for problem in skipped:
        console.print(f"[yellow]skipped[/] {escape(problem)}")
    if not records:
        names = " ".join(map(str, files))
        raise click.ClickException(f"{names}: no valid records to {purpose}; run `phi3v-data validate {names}`")
    return files, records, images_root, skipped


def data_inputs(data: Path, files: list[Path], images_root: Path) -> list[tuple[str, Path]]:
    """What eval and predict read of one --data, for the output rule (the split files named first: the likeliest
    mistake is an --out that is one of them)."""
    return [*(("the split file", file) for file in files), ("--data", data), ("the images folder", images_root)]


def model_inputs(model: str | Path, base: str | None) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(inputs, may_hold) of --model and --base for the output rule: the checkpoint or adapter read and a local
    base; a run directory given as --model may hold the output (RUN/eval beside RUN/final), never be or contain it.
    A Hub id is no local input."""
    from phi3v_train.loading import LoadError, adapter_base, is_adapter, resolve_model_dir

    path = Path(model)
    if not path.exists():
        return [], []
    try:
        model_dir = resolve_model_dir(path)
    except LoadError:
        return [("--model", path)], []
    if model_dir == path:
        inputs, may_hold = [("--model", path)], []
    else:
        inputs, may_hold = [("the checkpoint", model_dir)], [("--model", path)]
    if base is not None or is_adapter(model_dir):
        try:
            base_path = Path(adapter_base(model_dir, base=base))
        except LoadError:
            return inputs, may_hold  # loading reports it
        if base_path.exists():
            inputs.append(("the base model directory", base_path))
    return inputs, may_hold
