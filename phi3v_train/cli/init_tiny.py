"""``phi3v-train init-tiny OUT``: write a random-weight Phi-3.5-vision checkpoint in the official format."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("init-tiny")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--preset",
    type=click.Choice(["tiny", "phi-3.5-vision"]),
    default="tiny",
    show_default=True,
    help="tiny: a few MB, for tests and demos. phi-3.5-vision: the real size (~4.15B params, ~8.3 GB bf16).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the weights.")
@click.option("--num-crops", type=click.IntRange(min=1), default=4, show_default=True, help="Processor num_crops.")
@click.option("--overwrite", is_flag=True, help="Write into OUT even if it already holds files.")
def init_tiny(out: Path, preset: str, seed: int, num_crops: int, overwrite: bool) -> None:
    """Create a random-weight checkpoint directory OUT (config, safetensors, tokenizer, preprocessor).

    \b
    Example:
        phi3v-train init-tiny models/tiny
    """
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise click.UsageError(f"{out} is not empty; choose another directory or pass --overwrite")
    from phi3v_data.cli.errors import is_verbose
    from phi3v_train.cli.quiet import quiet_libraries

    quiet_libraries(verbose=is_verbose(click.get_current_context()))  # no deprecation or accelerator chatter
    from phi3v_train.model import create_tiny_checkpoint

    path = create_tiny_checkpoint(out, preset=preset, seed=seed, num_crops=num_crops)
    click.echo(f"wrote {preset} checkpoint to {path}")
