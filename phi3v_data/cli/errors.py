"""The CLI edge: every exception that reaches a ``phi3v-data`` / ``phi3v-train`` command becomes one readable line.

Expected problems (a :class:`schemas.errors.UserError`, unreadable or unwritable paths, corrupt weights, a refused
pickle, a missing optional dependency) are described in one line that names the file or the extra to install; exit
the error's ``exit_code`` (1, or 2 for usage), or 2 for a missing dependency. Anything else is a bug: a short message
and the hint to rerun with ``-v``, which shows the traceback. Library code raises; only this module decides what a
person reads.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import click

VERBOSE_KEY = "phi3v.verbose"

# Top-level module → the extra of pyproject.toml that installs it.
EXTRAS = {
    "av": "video", "decord": "video", "cv2": "video", "simplejpeg": "video",
    "pyarrow": "hf", "datasets": "hf",
    "torch": "train", "torchvision": "train", "transformers": "train", "tokenizers": "train", "safetensors": "train",
    "accelerate": "train", "peft": "train", "tensorboard": "train",
    "deepspeed": "deepspeed", "bitsandbytes": "qlora", "flash_attn": "flash", "wandb": "wandb", "mlflow": "mlflow",
}

# What the user can fix: schemas.errors.UserError, the base of every such error. Looked up in sys.modules rather than
# imported: importing schemas needs pydantic, and this edge must still run to say that pydantic is missing (no
# UserError exists before its module is imported).
_USER_ERRORS = [("schemas.errors", "UserError")]


class CliError(click.ClickException):
    """A ClickException with its own exit status (1 problem, 2 usage or a missing dependency)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def install_hint(module: str | None) -> str:
    """``pip install 'phi3v[EXTRA]'`` for a missing optional module (quoted: shells expand brackets)."""
    top = (module or "").split(".")[0]
    extra = EXTRAS.get(top)
    return f"pip install 'phi3v[{extra}]'" if extra else f"pip install {top or 'the missing package'}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from or while handling (transformers re-raises over the real cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def weights_problem(exc: BaseException) -> str | None:
    """Why model weights could not be read (corrupt safetensors, a pickle torch refuses), or None."""
    for error in _chain(exc):
        if type(error).__name__ == "SafetensorError":
            return (f"a .safetensors weights file is corrupt or truncated ({_first_line(error)}); "
                    "download or export it again")
        if isinstance(error, pickle.UnpicklingError):
            detail = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), "")
            detail = detail.split(" was not")[0].replace("WeightsUnpickler error: ", "")
            return ("a pickled weights file (.bin/.pt) holds Python objects besides tensors, and loading it could run "
                    f"arbitrary code, so it is refused{f' ({detail})' if detail else ''}; convert it to safetensors "
                    "from a trusted environment")
    return None


def _user_error_types() -> tuple[type[BaseException], ...]:
    found = []
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def describe(exc: BaseException) -> CliError | None:
    """The message and exit status of an expected error, or None for a bug."""
    weights = weights_problem(exc)
    if weights:
        return CliError(f"cannot load the model: {weights}")
    if isinstance(exc, ImportError):
        # transformers raises ImportError("… requires the Torchvision library …") without a module name: find it in
        # the text, as a whole word and the longest name first (torchvision is not torch)
        name = exc.name or next((module for module in sorted(EXTRAS, key=len, reverse=True)
                                 if re.search(rf"\b{module}\b", str(exc), re.IGNORECASE)), None)
        missing = name.split(".")[0] if name else _first_line(exc)
        return CliError(f"{missing} is not installed, and this command needs it: {install_hint(name)}", 2)
    if isinstance(exc, OSError):
        reason = exc.strerror or _first_line(exc)
        if exc.filename is None:
            return CliError(reason)
        extra = f" → {exc.filename2}" if exc.filename2 else ""
        if exc.errno == errno.ENOTDIR:
            reason = "not a directory (a folder was expected here, or a file stands where a folder should be)"
        elif exc.errno == errno.EEXIST:
            reason = "already exists, and a directory was expected (a file is in the way?)"
        return CliError(f"{exc.filename}{extra}: {reason}")
    if isinstance(exc, _user_error_types()):
        code = getattr(exc, "exit_code", 1)  # 2 for a usage error (an --out that overlaps an input)
        return CliError(str(exc).strip() or type(exc).__name__, code if isinstance(code, int) else 1)
    return None


def check_writable(flag: str, path: Path, *, directory: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written; the message names the flag and the reason.

    Nothing is created: a command that fails later leaves no empty directories behind.
    """
    if directory and path.exists() and not path.is_dir():
        raise CliError(f"{flag} {path}: a file is in the way; give a directory", 2)
    if not directory and path.is_dir():
        raise CliError(f"{flag} {path}: a directory is in the way; give a file name", 2)
    parent = path if directory else path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CliError(f"{flag} {path}: {ancestor} is a file, not a directory", 2)
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise CliError(f"{flag} {path}: {ancestor} is not writable", 2)
            return


def check_apart(flag: str, out: Path, inputs: Iterable[tuple[str, Path]], *,
                may_hold: Iterable[tuple[str, Path]] = ()) -> None:
    """:func:`phi3v_data.io.check_output_apart` at the CLI edge: an overlap is a usage error (exit 2) naming ``flag``,
    raised before anything is read or written (also when the command is invoked outside the guarded group)."""
    from phi3v_data.io import OutputOverlapError, check_output_apart

    try:
        check_output_apart(out, inputs, flag=flag, may_hold=may_hold)
    except OutputOverlapError as exc:
        raise CliError(str(exc), 2) from None


def write_error(flag: str, path: Path, exc: OSError) -> CliError:
    """An OSError met while writing ``path`` (given as ``flag``), as one line naming the flag."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return CliError(f"{flag} {path}: cannot write it: {exc.strerror or exc}{where}")


def is_verbose(ctx: click.Context | None) -> bool:
    return bool(ctx is not None and ctx.meta.get(VERBOSE_KEY))


def set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Option callback of ``-v``: later stages (the guard, logging setup) read it from ``ctx.meta``."""
    if value:
        ctx.meta[VERBOSE_KEY] = True
    return value


def translate(exc: Exception, *, program: str) -> click.ClickException:
    """What :class:`Guarded` raises instead of ``exc``."""
    known = describe(exc)
    if known is not None:
        return known
    return CliError(
        f"unexpected error: {type(exc).__name__}: {_first_line(exc)}\n"
        f"This is a bug in {program}; rerun with -v (`{program} -v …`) to see the traceback, and report it."
    )


_PASS_THROUGH = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit)


class Guarded:
    """Mixin for click commands/groups: expected errors become one line (``-v`` keeps the traceback)."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            raise CliError("interrupted", 130) from None
        except Exception as exc:  # noqa: BLE001 - this is the one place that turns any error into a message
            if is_verbose(ctx):
                raise
            raise translate(exc, program=ctx.find_root().info_name or "phi3v") from None


class GuardedCommand(Guarded, click.Command):
    """A command run on its own (``python -m phi3v_train.cli.run``) gets the same guard as under the group."""
