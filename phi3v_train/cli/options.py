"""Options several ``phi3v-train`` commands share. Their choices come from the config's types, so ``run``, ``eval``,
``predict`` and ``export`` accept the same spellings (``--attention flash`` included, the name ``bench`` uses)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import click

from phi3v_data.prompt import ImageTags, Turns
from phi3v_train.config import Attention, Precision

PRECISIONS: tuple[str, ...] = get_args(Precision)
ATTENTION: tuple[str, ...] = (*get_args(Attention), "flash")
"""What ``--attention`` accepts; ``flash`` means ``flash_attention_2``."""


def _attention_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return "flash_attention_2" if value == "flash" else value


def attention_option(*names: str, **kwargs: Any) -> Callable:
    """``--attention`` with the config's choices plus ``flash``, given to the command as the config spells it."""
    return click.option("--attention", *names, type=click.Choice(ATTENTION), callback=_attention_name,
                        **{"help": "flash = flash_attention_2 [sdpa]", **kwargs})


def precision_option(**kwargs: Any) -> Callable:
    return click.option("--precision", type=click.Choice(PRECISIONS), **kwargs)


def prompt_options(command: Callable) -> Callable:
    """--num-crops, --max-new-tokens, --image-tags and --turns: how ``eval`` and ``predict`` build a prompt."""
    for option in reversed([
        click.option("--num-crops", type=click.IntRange(min=1), default=None,
                     help="HD crops per image; use what training used [default: the processor's]."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--image-tags", type=click.Choice(get_args(ImageTags)), default=None,
                     help="Layout of untagged images, as training used [default: the run's config.yaml, else lines]."),
        click.option("--turns", type=click.Choice(get_args(Turns)), default=None,
                     help="Multi-turn records as one chat or one chat per turn [default: the run's, else together]."),
    ]):
        command = option(command)
    return command
