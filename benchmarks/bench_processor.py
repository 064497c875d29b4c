"""Throughput of the Phi-3.5-vision image processor on document-sized images (one CPU core).

Run: ``.venv/bin/python benchmarks/bench_processor.py [--images 16] [--num-crops 16] [--batch 8]``

Measures (1) ``Phi3VImageProcessor`` alone on 1700x2200 RGB pages and (2) the batched collator path,
``Phi3VProcessor(texts, per-sample images)`` — HD transform + prompt tokenisation + padding — on a tiny checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from phi3v_train.model import Phi3VImageProcessor, Phi3VProcessor, create_tiny_checkpoint

PROMPT = "<|user|>\n<|image_1|>\nWhat is the total on this invoice?<|end|>\n<|assistant|>\n"


def _pages(count: int, width: int, height: int) -> list[Image.Image]:
    """Noisy pages: random pixels defeat any shortcut a flat image would allow."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def _rate(run, items: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` items per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--num-crops", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", default="1700x2200", help="WIDTHxHEIGHT of the pages")
    args = parser.parse_args()
    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    pages = _pages(args.images, width, height)
    image_processor = Phi3VImageProcessor(num_crops=args.num_crops)
    single = _rate(lambda: [image_processor([page]) for page in pages], len(pages))
    together = _rate(lambda: image_processor(pages), len(pages))
    with tempfile.TemporaryDirectory() as directory:
        processor = Phi3VProcessor.from_pretrained(create_tiny_checkpoint(directory), num_crops=args.num_crops)
    batches = [pages[i : i + args.batch] for i in range(0, len(pages), args.batch)]
    collate = _rate(lambda: [processor([PROMPT] * len(b), [[p] for p in b]) for b in batches], len(pages))
    table = Table(title=f"Phi3VImageProcessor, {width}x{height} RGB, num_crops={args.num_crops}, 1 thread")
    table.add_column("path")
    table.add_column("images/s", justify="right")
    table.add_column("ms/image", justify="right")
    for name, rate in (
        ("image processor, one image per call", single),
        (f"image processor, {len(pages)} images per call", together),
        (f"collator path (text + images), batch {args.batch}", collate),
    ):
        table.add_row(name, f"{rate:.1f}", f"{1000 / rate:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
