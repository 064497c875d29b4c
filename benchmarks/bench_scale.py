"""Real-size datasets: time and peak memory of convert, validate, preview and a LoRA run's first step at 10k–1M rows.

Synthetic LLaVA-style rows (one ``<image>`` per row, one to three turns of varied length, ids as in
llava_instruct_150k) over a pool of real JPEG files made once, as one ``.json`` array. Each command runs in its own
process as a user would start it; "peak RSS" is the largest single process of the command (for ``torchrun``: the
largest rank), from ``wait4``. Training is the tiny model, ``--strategy lora --max-steps 1`` with the pre-flight on;
"first step" is the wall time until ``RUN/log.jsonl`` holds step 1, "cold" measures the lengths (none cached),
"warm" is a second run on the same data (lengths from the cache), "resume" is ``--resume latest`` of the cold run
with one more step. ``--train-only`` keeps the dataset it wrote under ``--work`` and reuses it. Run::

    .venv/bin/python benchmarks/bench_scale.py --sizes 10000,100000 [--ranks 1,2] [--work /tmp/bench_scale]
    .venv/bin/python benchmarks/bench_scale.py --sizes 100000,1000000 --convert-only   # convert time and memory
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORDS = ("the a of image color shape left right top bottom person car dog table red blue green large small two "
         "three what where which how many is are there this picture shows near behind wearing holding").split()


def image_pool(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` real JPEGs of varied sizes (noise over a gradient, so they do not compress to nothing)."""
    import numpy as np
    from PIL import Image

    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        width, height = int(rng.integers(160, 800)), int(rng.integers(160, 800))
        base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
        pixels = np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:05d}.jpg", quality=85)


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def llava_file(path: Path, rows: int, *, pool: int, seed: int = 0) -> None:
    """A LLaVA json array of ``rows`` rows, streamed to disk."""
    if path.is_file():
        return
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("[\n")
        for k in range(rows):
            image = rng.randrange(pool)
            turns = [{"from": "human", "value": "<image>\n" + sentence(rng, 4, 20) + "?"},
                     {"from": "gpt", "value": sentence(rng, 2, 60) + "."}]
            for _ in range(rng.randrange(3)):
                turns += [{"from": "human", "value": sentence(rng, 3, 15) + "?"},
                          {"from": "gpt", "value": sentence(rng, 1, 40) + "."}]
            row = {"id": f"{image:012d}", "image": f"pool/{image:05d}.jpg", "conversations": turns}
            handle.write(("," if k else "") + json.dumps(row) + "\n")
        handle.write("]\n")
    tmp.rename(path)


def converted_dataset(data: Path, rows: int, *, pool_dir: Path, pool: int, seed: int = 0) -> None:
    """What ``convert llava`` makes of :func:`llava_file`'s rows, written directly (``--train-only``: a million
    rows without converting them first); ``images/train/pool`` is a symlink to the image pool."""
    rng = random.Random(seed)
    (data / "images" / "train").mkdir(parents=True, exist_ok=True)
    link = data / "images" / "train" / "pool"
    if not link.exists():
        link.symlink_to(pool_dir.resolve(), target_is_directory=True)
    target = data / "llava_train.jsonl"
    if target.is_file():  # written before (whole: it is renamed into place) from the same seed and size
        return
    with open(target.with_suffix(".tmp"), "w", encoding="utf-8") as handle:
        for k in range(rows):
            image = rng.randrange(pool)
            turns = [{"images": [f"train/pool/{image:05d}.jpg"], "user": "<|image_1|>\n" + sentence(rng, 4, 20) + "?",
                      "assistant": sentence(rng, 2, 60) + "."}]
            for _ in range(rng.randrange(3)):
                turns.append({"images": [], "user": sentence(rng, 3, 15) + "?",
                              "assistant": sentence(rng, 1, 40) + "."})
            handle.write(json.dumps({"id": f"train-{k:010d}", "source": "llava", "task": "chat",
                                     "conversations": turns}) + "\n")
    target.with_suffix(".tmp").rename(target)


def timed(command: list[str], *, log: Path, first_step: Path | None = None, timeout: float = 3600) -> dict:
    """Run ``command``: wall seconds, seconds until ``first_step`` exists and is not empty, peak RSS (MB), rc."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        step = None
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            now = time.perf_counter() - start
            if step is None and first_step is not None and first_step.is_file() and first_step.stat().st_size:
                step = now
            if pid:
                break
            if now > timeout:
                process.kill()
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"wall": time.perf_counter() - start, "first_step": step, "rss_mb": usage.ru_maxrss / 1024,
            "rc": process.returncode}


def cell(result: dict, key: str = "wall", rss: bool = True) -> str:
    if result["rc"] != 0:
        return f"failed (rc {result['rc']})"
    value = result[key]
    text = "–" if value is None else f"{value:,.1f} s"
    return f"{text} / {result['rss_mb']:,.0f} MB" if rss else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000",
                        help="Row counts, comma-separated (e.g. 10000,100000,1000000).")
    parser.add_argument("--pool", type=int, default=1000, help="Distinct image files the rows share.")
    parser.add_argument("--ranks", default="1", help="Training ranks to time, comma-separated (2: torchrun on CPU).")
    parser.add_argument("--workers", type=int, default=2, help="Converter workers.")
    parser.add_argument("--skip-train", action="store_true", help="Only convert, validate and preview.")
    parser.add_argument("--convert-only", action="store_true", help="Only time `convert llava` (implies --skip-train).")
    parser.add_argument("--train-only", action="store_true",
                        help="Write the converted dataset directly and time only training "
                        "(no convert/validate/preview).")
    parser.add_argument("--work", type=Path, default=None, help="Working folder (kept; the sources are reused).")
    args = parser.parse_args()
    args.skip_train = args.skip_train or args.convert_only
    sizes = [int(s) for s in args.sizes.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    work = args.work = args.work or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    console = Console()
    image_pool(work / "src" / "pool", args.pool)
    tiny = work / "tiny"
    if not args.convert_only and not (tiny / "config.json").is_file():
        subprocess.run([str(BIN / "phi3v-train"), "init-tiny", str(tiny), "--num-crops", "1"], check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows: dict[str, dict[int, str]] = {}
    notes = []
    for size in sizes:
        base = work / str(size)
        out = base / "data"
        if args.train_only:  # the written dataset is kept and reused (a million rows take minutes to write)
            for old in [*base.glob("run-*"), out / ".phi3v-cache"]:
                shutil.rmtree(old, ignore_errors=True)
            converted_dataset(out, size, pool_dir=work / "src" / "pool", pool=args.pool)
            console.print(f"[bold]{size:,} rows[/] ({(out / 'llava_train.jsonl').stat().st_size / 1e6:,.0f} MB jsonl, "
                          "written directly)")
        else:
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            _convert_validate_preview(args, base, out, size, rows, console)
        if args.skip_train:
            continue
        for world in ranks:
            shutil.rmtree(out / ".phi3v-cache", ignore_errors=True)
            label = f"{world} rank{'s' if world > 1 else ''}"
            for kind in ("cold", "warm", "resume"):
                run_dir = base / f"run-{world}" if kind != "warm" else base / f"run-{world}-warm"
                flags = ["run", "--data", str(out), "--model", str(tiny), "--strategy", "lora", "--num-crops", "1",
                         "--max-steps", "2" if kind == "resume" else "1", "--batch-size", "1", "--precision", "fp32",
                         "--log-every", "1", "--save-every", "1", "--workers", "1", "--no-tensorboard",
                         "--out", str(run_dir)] + (["--resume", "latest"] if kind == "resume" else [])
                if world > 1:
                    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(world), "-m",
                               "phi3v_train.cli.run", *flags[1:]]
                else:
                    command = [str(BIN / "phi3v-train"), *flags]
                log_file = run_dir / "log.jsonl"
                if kind == "resume":  # the resume's own first step is step 2: wait for a second line
                    result = _resume(command, log=base / f"train-{world}-{kind}.log", log_file=log_file)
                else:
                    result = timed(command, log=base / f"train-{world}-{kind}.log", first_step=log_file)
                rows.setdefault(f"`run` first step, {kind}, {label}", {})[size] = \
                    cell(result, "first_step")
                console.print(f"  train {label} {kind}: first step {cell(result, 'first_step')} (whole run "
                              f"{result['wall']:.1f} s)")
                measured = [line for line in (base / f"train-{world}-{kind}.log").read_text().splitlines()
                            if "lengths " in line]
                if measured:
                    notes.append(f"{size:,} rows, {label}, {kind}: {measured[0].strip()}")
                if "measured the data itself" in (base / f"train-{world}-{kind}.log").read_text():
                    notes.append(f"{size:,} rows, {label}, {kind}: a rank other than 0 measured too")
    table = Table(title=f"bench_scale: synthetic LLaVA rows over {args.pool} real JPEGs, {os.cpu_count()} CPUs; "
                        "time / peak RSS (run: time to step 1 / peak RSS per rank)")
    table.add_column("command")
    for size in sizes:
        table.add_column(f"{size:,}", justify="right")
    for name, by_size in rows.items():
        table.add_row(name, *(by_size.get(size, "") for size in sizes))
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)


def _convert_validate_preview(args: argparse.Namespace, base: Path, out: Path, size: int,
                              rows: dict[str, dict[int, str]], console: Console) -> None:
    source = args.work / "src" / f"llava-{size}.json"
    llava_file(source, size, pool=args.pool)
    console.print(f"[bold]{size:,} rows[/] ({source.stat().st_size / 1e6:,.0f} MB json)")
    convert = timed([str(BIN / "phi3v-data"), "convert", "llava", str(source), "--image-folder", str(source.parent),
                     "--out", str(out), "--workers", str(args.workers)], log=base / "convert.log")
    rows.setdefault("`convert llava`", {})[size] = cell(convert)
    if args.convert_only:
        console.print(f"  convert {cell(convert)}")
        return
    jsonl = out / "llava_train.jsonl"
    validate = timed([str(BIN / "phi3v-data"), "validate", str(jsonl), "-q"], log=base / "validate.log")
    rows.setdefault("`validate` (header)", {})[size] = cell(validate)
    preview = timed([str(BIN / "phi3v-data"), "preview", str(jsonl), "--out", str(base / "preview.html")],
                    log=base / "preview.log")
    rows.setdefault("`preview`", {})[size] = cell(preview)
    console.print(f"  convert {cell(convert)}, validate {cell(validate)}, preview {cell(preview)}")


def _resume(command: list[str], *, log: Path, log_file: Path) -> dict:
    """Like :func:`timed`, with "first step" the moment log.jsonl gains a line past what the cold run wrote."""
    before = log_file.read_text().count("\n") if log_file.is_file() else 0
    marker = log_file.with_name(".bench-first-step")
    marker.unlink(missing_ok=True)
    watcher = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\n"
        f"log, marker, before = pathlib.Path({str(log_file)!r}), pathlib.Path({str(marker)!r}), {before}\n"
        "while True:\n"
        "    try:\n"
        "        if log.read_text().count('\\n') > before: marker.write_text('1'); break\n"
        "    except OSError: pass\n"
        "    time.sleep(0.05)\n")])
    try:
        return timed(command, log=log, first_step=marker)
    finally:
        watcher.kill()
        watcher.wait()


if __name__ == "__main__":
    main()
