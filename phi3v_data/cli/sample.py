"""``phi3v-data sample video OUT_DIR``: write a small synthetic dataset in a real dataset's on-disk layout."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from phi3v_data.synthetic import LOOKS, write_video_sample


@click.group()
def sample() -> None:
    """Write small synthetic datasets to try the pipeline without downloading anything."""


@sample.command("video")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", type=click.IntRange(1, len(LOOKS)), default=4, show_default=True, help="Number of classes.")
@click.option("--clips-per-class", type=click.IntRange(min=1), default=12, show_default=True,
              help="Clips per class (3 per UCF group).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-clip variations.")
@click.option("--layout", type=click.Choice(["ucf101", "presplit"]), default="ucf101", show_default=True,
              help="ucf101: UCF-101/ + ucfTrainTestlist/; presplit: {train,val,test}/<Class>/.")
def video(out_dir: Path, classes: int, clips_per_class: int, seed: int, layout: str) -> None:
    """Synthetic UCF-101-style clips (MPEG-4 AVI, 96x72, 25 fps, 1.6 s); each class has its own colour, shape and
    motion.

    \b
    Example:
        phi3v-data sample video demo/src
        phi3v-data convert video demo/src --out demo/data --frames 8
    """
    console = Console(stderr=True)
    with console.status(f"writing {classes * clips_per_class} clips to {out_dir}"):
        summary = write_video_sample(out_dir, classes=classes, clips_per_class=clips_per_class, seed=seed,
                                     layout=layout)  # type: ignore[arg-type]
    table = Table(title=f"sample video dataset → {summary.root} ({summary.layout} layout)")
    table.add_column("split")
    table.add_column("clips", justify="right")
    for split, count in summary.splits.items():
        table.add_row(split, str(count))
    console.print(table)
    # on its own line: as the table's caption it was wrapped to the table's width, one class per line
    console.print(f"{len(summary.classes)} classes: {', '.join(summary.classes)}", highlight=False, soft_wrap=True)
    console.print(f"next: phi3v-data convert video {out_dir} --out <DIR> --frames 8")
