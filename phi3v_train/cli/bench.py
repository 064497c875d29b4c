"""``phi3v-train bench``: the training speed table on a synthetic DocVQA-shaped workload."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError

from phi3v_data.cli.errors import check_writable
from schemas.errors import validation_lines

STRATEGY_CHOICES = ("full", "frozen-vision", "lora", "qlora")
ATTENTION_CHOICES = {"sdpa": "sdpa", "flash": "flash_attention_2", "flash_attention_2": "flash_attention_2"}


def _page(value: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT (e.g. 1320x2200)") from None
    return width, height


@click.command()
@click.option("--preset", type=click.Choice(["tiny", "phi-3.5-vision"]), default=None,
              help="Model size with random weights [default: phi-3.5-vision on a GPU, tiny on CPU].")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Use this checkpoint instead of building the preset.")
@click.option("--strategy", "strategies", type=click.Choice(STRATEGY_CHOICES), multiple=True,
              help="Strategy to measure (repeatable) [default: all four].")
@click.option("--attention", "attention", type=click.Choice(sorted(ATTENTION_CHOICES)), multiple=True,
              help="Attention kernel (repeatable) [default: sdpa and flash where available].")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Per-device batch size.")
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed optimizer steps.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed steps first.")
@click.option("--num-crops", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=16), default=2443, show_default=True,
              help="Tokens per sequence (text fills what the image leaves).")
@click.option("--page", default="1320x2200", show_default=True, help="Synthetic document size, WIDTHxHEIGHT.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=False, show_default=True)
@click.option("--peak-flops", type=float, default=None, help="Device peak FLOP/s for MFU (known GPUs: automatic).")
@click.option("--out", "--output", "-o", "out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench.md"), show_default=True, help="Markdown file the table is written to.")
def bench(preset: str | None, model: Path | None, strategies: tuple[str, ...], attention: tuple[str, ...],
          page: str, out: Path, **settings: object) -> None:
    """Measure images/s, tokens/s, MFU and peak memory of each finetuning strategy.

    \b
    Examples:
        phi3v-train bench --strategy lora --steps 2             # tiny model on CPU
        phi3v-train bench --preset phi-3.5-vision --out gpu.md  # real size, random weights, needs a GPU
    """
    from rich.console import Console

    from phi3v_train.bench import BenchError, BenchOptions, default_preset, rich_table, run_bench, write_markdown

    check_writable("--out", out)
    console = Console(stderr=True)
    fields = {k: v for k, v in settings.items() if v is not None}
    try:
        options = BenchOptions(
            preset=preset or default_preset(), model=model, page=_page(page), **fields,
            **({"strategies": list(strategies)} if strategies else {}),
            **({"attention": list(dict.fromkeys(ATTENTION_CHOICES[a] for a in attention))} if attention else {}),
        )
    except ValidationError as exc:
        raise click.UsageError("; ".join(f"--{line}" for line in validation_lines(exc))) from None
    try:
        with console.status("building the model and the synthetic workload…") as status:
            report = run_bench(options, on_row=lambda row: status.update(
                f"{row.strategy} / {row.attention}: "
                f"{f'{row.images_per_s:.3g} img/s' if row.images_per_s else 'failed'}"))
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    write_markdown(report, out)
    table_console = Console()
    if not table_console.is_terminal:  # piped into a log: do not squeeze nine columns into 80 characters
        table_console.width = 200
    table_console.print(rich_table(report))
    for note in report.skipped:
        console.print(f"[yellow]skipped[/] {note}")
    console.print(f"table written to [bold]{out}[/]")
    if any(row.images_per_s is None for row in report.rows):
        raise SystemExit(1)
