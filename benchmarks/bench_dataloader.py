"""Samples/s of the training DataLoader (length-grouped sampler + collator) with 0, 1, 2… worker processes.

The loader is built as ``phi3v-train run`` builds it: ``load_split`` measures every record, the
``LengthGroupedSampler`` orders them and the ``Collator`` decodes images, runs the image processor and pads, inside
the workers. The dataset is converted-format and synthetic, generated once under ``--work``: UCF-style records of
``--frames`` 320×240 JPEG frames (num_crops 4), or with ``--kind docs`` one 1320×2200 page each (num_crops 16).
Steady-state throughput: the clock starts when the first batch arrives (worker start-up excluded, reported apart).
Run::

    .venv/bin/python benchmarks/bench_dataloader.py [--records 24] [--workers 0,1,2] [--batch 4] [--kind video]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

KINDS = {"video": ((320, 240), 4), "docs": ((1320, 2200), 16)}


def make_dataset(root: Path, *, records: int, frames: int, kind: str) -> Path:
    """``root/images/…`` + ``root/bench_train.jsonl``; reused when it is already there with the same shape."""
    (width, height), _ = KINDS[kind]
    stamp = root / f".shape-{kind}-{records}-{frames}"
    if stamp.exists():
        return root
    rng = np.random.default_rng(0)
    lines = []
    per_record = frames if kind == "video" else 1
    for r in range(records):
        paths = []
        for f in range(per_record):
            rel = f"train/{r:04d}/{f}.jpg"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            Image.fromarray(pixels).save(root / "images" / rel, quality=90)
            paths.append(rel)
        user = "Classify the video into one of: Archery, Biking, Diving." if kind == "video" else "What is the total?"
        lines.append({"id": f"train-{r:010d}", "source": "bench", "task": "vqa",
                      "conversations": [{"images": paths, "user": user, "assistant": "Biking" if r % 2 else "42"}]})
    (root / "bench_train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    stamp.touch()
    return root


def build_loader(data: Path, model: Path, *, num_crops: int, batch: int, workers: int):  # -> DataLoader
    """The training DataLoader exactly as ``phi3v_train.train.setup`` wires it (sampler + collator)."""
    from torch.utils.data import DataLoader

    from phi3v_train.collator import Collator
    from phi3v_train.dataset import load_split
    from schemas.layout import images_dir
    from phi3v_train.model import Phi3VProcessor, text_encoding
    from phi3v_train.sampler import LengthGroupedSampler

    processor = Phi3VProcessor.from_pretrained(model, num_crops=num_crops)
    encode, bos = text_encoding(processor.tokenizer)
    dataset, _ = load_split(data, "train", encode=encode, bos_id=bos, num_crops=num_crops, max_length=1 << 20)
    collator = Collator(image_processor=processor.image_processor, encode=encode, bos_id=bos,
                        pad_id=processor.tokenizer.pad_token_id, images_root=images_dir(data))
    sampler = LengthGroupedSampler(dataset.lengths, batch_size=batch, global_batch_size=batch, seed=0)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collator)


def time_loader(loader) -> tuple[float, float, int]:
    """(seconds to the first batch, steady-state samples/s after it, samples)."""
    start = time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    first_at = time.perf_counter()
    samples = 0
    for batch in iterator:
        samples += batch["input_ids"].shape[0]
    elapsed = time.perf_counter() - first_at
    return first_at - start, samples / elapsed if elapsed > 0 else float("nan"), samples + first["input_ids"].shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "phi3v-bench-dataloader")
    parser.add_argument("--kind", choices=sorted(KINDS), default="video")
    parser.add_argument("--records", type=int, default=24)
    parser.add_argument("--frames", type=int, default=8, help="Frames per video record.")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", default="0,1,2", help="Comma-separated worker counts to try.")
    args = parser.parse_args()

    from phi3v_train.model import create_tiny_checkpoint

    _, num_crops = KINDS[args.kind]
    data = make_dataset(args.work / f"data-{args.kind}", records=args.records, frames=args.frames, kind=args.kind)
    model = args.work / "tiny-model"
    if not (model / "config.json").exists():
        create_tiny_checkpoint(model, preset="tiny")
    images = args.records * (args.frames if args.kind == "video" else 1)
    table = Table(title=f"training DataLoader, {args.kind}: {args.records} records / {images} images, "
                        f"num_crops {num_crops}, batch {args.batch} ({os.cpu_count()} CPUs)")
    for column in ("workers", "first batch (s)", "samples/s", "images/s"):
        table.add_column(column, justify="right")
    per_sample = images / args.records
    rates = {}
    for workers in (int(w) for w in args.workers.split(",")):
        loader = build_loader(data, model, num_crops=num_crops, batch=args.batch, workers=workers)
        first, rates[workers], _ = time_loader(loader)
        table.add_row(str(workers), f"{first:.2f}", f"{rates[workers]:.2f}", f"{rates[workers] * per_sample:.1f}")
    Console(width=120).print(table)
    print("dataloader samples/s: " + ", ".join(f"{rate:.2f} with {w} workers" for w, rate in rates.items())
          + f" ({args.kind}, {per_sample:g} images/sample, num_crops {num_crops}, batch {args.batch})")


if __name__ == "__main__":
    main()
