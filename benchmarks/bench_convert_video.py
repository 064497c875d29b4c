"""Converter vs the original recipe on UCF-like clips: 320x240, 25 fps, ~7 s, MPEG-4 AVI, class-per-folder.

(a) the toolkit: ``run_converter(VideoConverter(frames=8))`` with default workers (one per CPU), end to end
    (scan, decode, JPEG, jsonl, manifest);
(b) the baseline, what the original recipe did: for each clip, in order, PyAV decodes every frame, keeps 8 evenly
    spaced ones and saves them with PIL.

Both wall time (the figure users feel; the target is the toolkit >= 4x faster) and CPU seconds (this process plus its
finished workers) are printed. Both methods write the same 8 JPEG files per clip, and creating a file costs 40 us or 400
us depending on the file system's state: ext4 without a journal skips inodes deleted in the last minute (or six), so
creating files right after deleting many is ~10x slower. So every run writes to a new directory (older outputs are
deleted only after the timing), the two methods alternate for ``--rounds`` rounds (the order flips every round; each
run's files are synced to disk before the next starts), and the speed-up is the ratio of the best rounds — timeit's
rule: noise only ever adds time — with the ratio of the medians beside it. Clips are generated once and cached under
``--work``; leave a minute after deleting large outputs before timing. Run::

    .venv/bin/python benchmarks/bench_convert_video.py --work /tmp/ucf-bench [--clips 100] [--rounds 5] [--backend auto]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from converters.video import VideoConverter, VideoOptions
from phi3v_data.convert import run_converter

CLASSES = ("ApplyEyeMakeup", "Basketball", "Biking", "Diving", "PlayingGuitar")
WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 25, 7


def make_clips(root: Path, count: int) -> list[Path]:
    """UCF-named clips with moving texture (so the encoder makes real P-frames); reused when already there."""
    paths = []
    for i in range(count):
        cls = CLASSES[i % len(CLASSES)]
        path = root / cls / f"v_{cls}_g{i // 10 + 1:02d}_c{i % 10 + 1:02d}.avi"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        texture = rng.integers(0, 255, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        tmp = path.with_suffix(".tmp")
        with av.open(str(tmp), "w", format="avi") as container:
            stream = container.add_stream("mpeg4", rate=FPS)
            stream.width, stream.height, stream.pix_fmt, stream.bit_rate = WIDTH, HEIGHT, "yuv420p", 1_000_000
            for t in range(FPS * SECONDS + (i % 7)):
                frame = np.roll(texture, (t * 3, t), axis=(1, 0))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        tmp.rename(path)
    return paths


def baseline(clips: list[Path], out: Path, frames: int = 8) -> None:
    """The original recipe's loop: decode every frame in order, keep ``frames`` evenly spaced, save with PIL."""
    for clip in clips:
        target = out / clip.parent.name
        target.mkdir(parents=True, exist_ok=True)
        with av.open(str(clip)) as container:
            keep = list(np.linspace(0, container.streams.video[0].frames - 1, frames).astype(int))
            kept = {}
            for index, frame in enumerate(container.decode(video=0)):  # every frame, in order
                if index in keep:
                    kept[index] = frame.to_ndarray(format="rgb24")
        for k, index in enumerate(keep):
            Image.fromarray(kept[index]).save(target / f"{clip.stem}.{k}.jpg", quality=95)


def timed(fn, *args, **kwargs) -> tuple[float, float]:  # noqa: ANN001, ANN002, ANN003
    """(wall seconds, CPU seconds of this process and its finished workers): CPU time stays meaningful on a busy box."""

    def cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    wall, used = time.perf_counter(), cpu()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, cpu() - used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Directory for the cached clips and the outputs.")
    parser.add_argument("--clips", type=int, default=100, help="Clips to convert; 50 or more for a meaningful figure.")
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds of both methods.")
    parser.add_argument("--backend", choices=["auto", "decord", "pyav"], default="auto")
    parser.add_argument("--workers", type=int, default=None, help="Toolkit workers [default: CPU count].")
    args = parser.parse_args()
    console = Console()
    source = args.work / f"clips-{args.clips}"
    with console.status(f"generating {args.clips} clips in {source} (once)"):
        clips = make_clips(source, args.clips)
    size_mb = sum(p.stat().st_size for p in clips) / 1e6
    converter = VideoConverter(VideoOptions(frames=8, backend=args.backend, val_ratio=0, test_ratio=0))
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - progress output would distort nothing but clutters

    runs_dir = args.work / "runs"
    if runs_dir.exists():  # outputs of an earlier invocation, moved aside now and deleted after the timing
        runs_dir.rename(args.work / f"old-runs-{time.time_ns()}")

    def toolkit(out: Path) -> None:
        run_converter(converter, source, out, workers=args.workers, console=quiet)

    methods = {"toolkit": toolkit, "baseline": lambda out: baseline(clips, out)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for round_ in range(args.rounds):
        for name in ("toolkit", "baseline") if round_ % 2 == 0 else ("baseline", "toolkit"):
            os.sync()  # write back the previous run's files now, not during this run's timing
            runs[name].append(timed(methods[name], runs_dir / f"{name}-{round_}"))
    manifest = json.loads((runs_dir / "toolkit-0/manifest.json").read_text())
    assert manifest["failures"] == 0 and manifest["images"]["train"] == 8 * args.clips, manifest
    for old in args.work.glob("old-runs-*"):
        shutil.rmtree(old)

    best = {name: min(wall for wall, _ in rs) for name, rs in runs.items()}
    median = {name: statistics.median(wall for wall, _ in rs) for name, rs in runs.items()}
    cpu = {name: min(used for _, used in rs) for name, rs in runs.items()}
    workers = args.workers or os.cpu_count()
    table = Table(title=f"{args.clips} clips, {WIDTH}x{HEIGHT} {FPS} fps ~{SECONDS} s MPEG-4 AVI ({size_mb:.1f} MB), "
                        f"8 frames each, {args.rounds} alternating rounds")
    for col in ("method", "best s", "median s", "clips/s", "speed-up", "CPU s", "CPU ms/clip"):
        table.add_column(col, justify="right" if col != "method" else "left")
    labels = {"toolkit": f"toolkit ({args.backend}, {workers} workers)", "baseline": "baseline (decode all)"}
    for name in methods:
        table.add_row(
            labels[name], f"{best[name]:.2f}", f"{median[name]:.2f}", f"{args.clips / best[name]:.1f}",
            f"{best['baseline'] / best[name]:.1f}x", f"{cpu[name]:.2f}", f"{1000 * cpu[name] / args.clips:.0f}",
        )
    console.print(table)
    for name, rs in runs.items():
        print(f"{name} rounds (s): " + "  ".join(f"{wall:.3f}" for wall, _ in rs))
    print(
        f"toolkit {best['toolkit']:.2f}s  baseline {best['baseline']:.2f}s  "
        f"ratio {best['baseline'] / best['toolkit']:.2f}x "
        f"(best of {args.rounds}; medians {median['toolkit']:.2f}s vs {median['baseline']:.2f}s: "
        f"{median['baseline'] / median['toolkit']:.2f}x; CPU {cpu['baseline'] / cpu['toolkit']:.2f}x; "
        f"cpus={os.cpu_count()})"
    )


if __name__ == "__main__":
    main()
