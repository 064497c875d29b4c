"""``phi3v-data``: convert datasets, validate them before training, preview and export them.

Each command lives in its own module and is imported only when used, so ``phi3v-data --help`` stays fast.
Exit codes: 0 clean, 1 problems found or a runtime error, 2 a usage error (or a missing optional dependency).
Errors reach the user as one line (:mod:`phi3v_data.cli.errors`); ``-v`` before the command shows the traceback.
"""

from __future__ import annotations

import importlib

import click

from phi3v_data.cli.errors import Guarded, set_verbose

COMMANDS = {
    "convert": "phi3v_data.cli.convert:convert",
    "validate": "phi3v_data.cli.validate:validate",
    "preview": "phi3v_data.cli.preview:preview",
    "export": "phi3v_data.cli.export:export",
    "sample": "phi3v_data.cli.sample:sample",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


class GuardedGroup(Guarded, LazyGroup):
    """The entry-point group: lazy subcommands, and no traceback for a user's mistake."""


def verbose_option(func):  # type: ignore[no-untyped-def]
    """``-v/--verbose``: tracebacks (and, for training, library warnings) instead of one-line messages."""
    return click.option("--verbose", "-v", is_flag=True, expose_value=False, is_eager=True, callback=set_verbose,
                        help="Show tracebacks and library warnings.")(func)


@click.group(cls=GuardedGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="phi3v")
@verbose_option
def main() -> None:
    """Data tools for finetuning Phi-3.5-vision.

    \b
    Example:
        phi3v-data convert video UCF-101/ --out data/ucf101 --frames 8
        phi3v-data validate data/ucf101/ucf101_train.jsonl
    """
