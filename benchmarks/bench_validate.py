"""How fast ``phi3v-data validate`` checks a dataset: records/s per image-check mode and worker count.

The issue's target: a 100k-record file with 8 image paths per record, paths checked for existence, at least
50k records/s on a 2-core machine. The dataset looks like a converted video set: one directory per class, each record
8 distinct frame files (empty files: existence mode never opens them). The header mode (the default) reads each
distinct image's header once, so it is measured on a smaller set of real tiny JPEGs.

Data is generated once and reused under ``--work``. Run::

    .venv/bin/python benchmarks/bench_validate.py --work /tmp/validate-bench [--records 100000] [--header-records 20000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from phi3v_data.validate import validate_file

CLASSES = 101  # like UCF-101
FRAMES = 8


def make_dataset(root: Path, records: int, *, real_images: bool) -> Path:
    """``root/data.jsonl`` + ``root/images/``: ``records`` records of FRAMES distinct frames each; reused if present."""
    path = root / "data.jsonl"
    if path.exists() and sum(1 for _ in open(path, "rb")) == records:
        return path
    payload = b""
    if real_images:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), "gray").save(buffer, "JPEG")
        payload = buffer.getvalue()
    for c in range(CLASSES):
        (root / "images" / "train" / f"Class{c:03d}").mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for r in range(records):
            folder = f"train/Class{r % CLASSES:03d}"
            frames = [f"{folder}/v_{r:07d}.{f}.jpg" for f in range(FRAMES)]
            for frame in frames:
                with open(root / "images" / frame, "wb") as handle:
                    handle.write(payload)
            turn = {"images": frames, "user": "Classify the video into one of the following classes: ...",
                    "assistant": f"Class{r % CLASSES:03d}"}
            out.write(json.dumps({"id": f"train-{r:010d}", "source": "bench", "task": "classification",
                                  "conversations": [turn]}) + "\n")
    return path


def measure(path: Path, mode: str, workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and its workers, records)."""
    before, start = os.times(), time.perf_counter()
    report = validate_file(path, image_check=mode, workers=workers)
    seconds, after = time.perf_counter() - start, os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user + system, self + reaped worker processes
    assert report.valid, report.findings[:3]
    return seconds, cpu, report.stats.records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/validate-bench"))
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--header-records", type=int, default=20_000)
    args = parser.parse_args()
    console = Console(width=120)
    start = time.perf_counter()
    exists_file = make_dataset(args.work / f"exists-{args.records}", args.records, real_images=False)
    header_file = make_dataset(args.work / f"header-{args.header_records}", args.header_records, real_images=True)
    console.print(f"data ready in {time.perf_counter() - start:.1f}s under {args.work} ({os.cpu_count()} CPUs)")
    table = Table(title="phi3v-data validate throughput", title_justify="left")
    for column in ("mode", "records", "image paths", "workers", "seconds", "records/s", "CPU s", "records/CPU-s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    runs = [(exists_file, "exists", w) for w in (1, 2)] + [(header_file, "header", w) for w in (1, 2)]
    for path, mode, workers in runs:
        measure(path, mode, workers)  # warm the page cache and directory entries first
        seconds, cpu, records = min(measure(path, mode, workers) for _ in range(2))
        table.add_row(mode, f"{records:,}", f"{records * FRAMES:,}", str(workers), f"{seconds:.2f}",
                      f"{records / seconds:,.0f}", f"{cpu:.2f}", f"{records / cpu:,.0f}")
    table.caption = ("load average while measuring: {:.1f} {:.1f} {:.1f} "
                     "(other work on the machine slows the wall clock)").format(*os.getloadavg())
    console.print(table)


if __name__ == "__main__":
    main()
