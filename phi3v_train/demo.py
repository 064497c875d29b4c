"""The README's first command: the whole pipeline on a small generated video dataset, on CPU, in a few minutes.

Runs, as a user would type them: sample data in UCF-101's layout → ``phi3v-data convert video`` → ``phi3v-data
validate`` → ``phi3v-train init-tiny`` → ``phi3v-train eval`` (before) → ``phi3v-train run --strategy lora`` →
``phi3v-train eval`` (after), then prints a closing table. Everything lands under one output directory.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from schemas.layout import manifest_path, split_file_name

console = Console()


def _step(title: str, args: list[str], *, log: Path) -> float:
    """Run one CLI step as its own process (exactly the command a user would type), teeing output to ``log``."""
    console.rule(f"[bold]{title}")
    console.print(f"$ {shlex.join(args)}", style="cyan", highlight=False)
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n$ {shlex.join(args)}\n")
        handle.flush()
        proc = subprocess.run(args, stdout=None, stderr=None)
    if proc.returncode != 0:
        console.print(f"[red]step failed with exit code {proc.returncode}[/]: {shlex.join(args)}")
        raise SystemExit(proc.returncode)
    return time.perf_counter() - start


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _accuracy(metrics: dict) -> str:
    entry = metrics.get("tasks", {}).get("classification", {})
    return f"{entry['accuracy']:.1%} of {entry['scored']}" if "accuracy" in entry else "n/a"


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--steps", type=int, default=60, show_default=True, help="LoRA optimizer steps.")
@click.option("--classes", type=int, default=4, show_default=True)
@click.option("--clips-per-class", type=int, default=10, show_default=True)
def main(out: Path, steps: int, classes: int, clips_per_class: int) -> None:
    """Generate data, convert, validate, train a tiny model with LoRA, evaluate, and summarise."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    raw, data, model, run = out / "raw", out / "data", out / "model", out / "run"
    data_cli, train_cli = _bin("phi3v-data"), _bin("phi3v-train")
    started = time.perf_counter()

    _step("1. sample videos in UCF-101's layout", [data_cli, "sample", "video", str(raw), "--classes", str(classes),
          "--clips-per-class", str(clips_per_class)], log=log)
    _step("2. convert", [data_cli, "convert", "video", str(raw), "--out", str(data), "--frames", "8"], log=log)
    for split in ("train", "val", "test"):
        path = data / split_file_name("ucf101", split)
        if path.exists():
            _step(f"3. validate {split}", [data_cli, "validate", str(path), "--report",
                                            str(out / f"validate_{split}.json")], log=log)
    _step("4. tiny model", [train_cli, "init-tiny", str(model), "--overwrite"], log=log)  # the demo's own model
    eval_split = "test" if (data / split_file_name("ucf101", "test")).exists() else "val"
    common_eval = ["--data", str(data), "--split", eval_split, "--num-crops", "1", "--batch-size", "8"]
    _step("5. evaluate before training", [train_cli, "eval", "--model", str(model), *common_eval,
                                          "--output", str(out / "eval_before")], log=log)
    _step("6. finetune with LoRA", [train_cli, "run", "--data", str(data), "--model", str(model), "--strategy", "lora",
          "--output", str(run), "--num-crops", "1", "--max-steps", str(steps), "--batch-size", "4",
          "--global-batch-size", "8", "--lr", "5e-3", "--precision", "fp32", "--save-every", str(steps),
          "--lora.rank", "16", "--lora.alpha", "32", "--overwrite"], log=log)  # the demo's own run: a rerun replaces it
    _step("7. evaluate after training", [train_cli, "eval", "--model", str(run / "final"), *common_eval,
                                         "--output", str(out / "eval_after")], log=log)

    manifest = _read_json(manifest_path(data))
    before, after = _read_json(out / "eval_before" / "metrics.json"), _read_json(out / "eval_after" / "metrics.json")
    log_lines = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").exists() else []
    losses = [json.loads(line)["loss"] for line in log_lines if "loss" in json.loads(line)]
    table = Table(title=f"demo finished in {time.perf_counter() - started:.0f} s — everything is under {out}/")
    table.add_column("what")
    table.add_column("value", justify="right")
    for split, count in manifest.get("splits", {}).items():
        table.add_row(f"records ({split})", str(count))
    table.add_row("classes (chance accuracy)", f"{classes} ({1 / classes:.0%})")
    if losses:
        table.add_row("training loss first → last", f"{losses[0]:.3f} → {losses[-1]:.3f}")
    table.add_row(f"accuracy before ({eval_split})", _accuracy(before))
    table.add_row(f"accuracy after ({eval_split})", _accuracy(after))
    for label, path in [("dataset", data), ("run (checkpoints, TensorBoard)", run),
                        ("predictions", out / "eval_after")]:
        table.add_row(label, str(path))
    console.print(table)


if __name__ == "__main__":
    main()
