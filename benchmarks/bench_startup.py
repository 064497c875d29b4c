"""Start-up cost of each command: wall time, the part spent importing, and which heavy packages it imported.

Every command runs as a user would start it, under ``python -X importtime``, on a tiny model and a two-record
dataset made in a temporary folder. "imports" is the sum of the top-level imports' cumulative times; the heavy
columns say whether torch, transformers, peft, bitsandbytes, deepspeed or datasets were imported at all (peft pulls
in bitsandbytes, ~3 s together; only LoRA/QLoRA adapters need them). Run::

    .venv/bin/python benchmarks/bench_startup.py
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "deepspeed", "datasets")
LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)")


def measure(entry: str, args: list[str]) -> dict:
    """One command under -X importtime: wall seconds, import seconds, heavy packages imported, exit code."""
    code = f"import sys; from {entry} import main; sys.argv[0] = {entry!r}; main()"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    imports, seen = 0, set()
    for match in LINE.finditer(done.stderr):
        cumulative, indent, name = int(match[1]), match[2], match[3]
        seen.add(name)
        if len(indent) == 1:  # a top-level import (including the lazy ones a command does at run time)
            imports += cumulative
    return {"wall": wall, "imports": imports / 1e6, "heavy": [name for name in HEAVY if name in seen],
            "rc": done.returncode}


def tiny_dataset(root: Path) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rows = []
    for index, (color, rgb) in enumerate({"red": (220, 20, 20), "blue": (30, 40, 220)}.items()):
        Image.new("RGB", (32, 24), rgb).save(root / "images" / f"{color}.png")
        rows.append({"id": str(index), "source": "colors", "task": "classification",
                     "conversations": [{"images": [f"{color}.png"], "user": "Color?", "assistant": color}]})
    for split in ("train", "val"):
        (root / f"colors_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    work = Path(tempfile.mkdtemp(prefix="phi3v-startup-"))
    model, data, run = work / "model", tiny_dataset(work / "data"), work / "run"
    image = data / "images" / "red.png"
    predict = ["predict", "--image", str(image), "--num-crops", "1", "--max-new-tokens", "2", "Color?"]
    eval_ = ["eval", "--data", str(data), "--split", "val", "--num-crops", "1"]
    commands = [
        ("phi3v-data --help", "phi3v_data.cli", ["--help"]),
        ("phi3v-train --help", "phi3v_train.cli", ["--help"]),
        ("phi3v-data validate", "phi3v_data.cli", ["validate", str(data / "colors_train.jsonl")]),
        ("phi3v-train init-tiny", "phi3v_train.cli", ["init-tiny", str(model)]),
        ("phi3v-train predict (full model)", "phi3v_train.cli", [*predict, "--model", str(model)]),
        ("phi3v-train eval (full model)", "phi3v_train.cli", [*eval_, "--model", str(model), "--output",
                                                              str(work / "eval-full")]),
        ("phi3v-train run --strategy full", "phi3v_train.cli",
         ["run", "--data", str(data), "--model", str(model), "--strategy", "full", "--max-steps", "1", "--num-crops",
          "1", "--precision", "fp32", "--workers", "0", "--no-tensorboard", "--out", str(work / "full")]),
        ("phi3v-train run --strategy lora", "phi3v_train.cli",
         ["run", "--data", str(data), "--model", str(model), "--strategy", "lora", "--max-steps", "1", "--num-crops",
          "1", "--precision", "fp32", "--workers", "0", "--no-tensorboard", "--out", str(run)]),
        ("phi3v-train predict (LoRA adapter)", "phi3v_train.cli", [*predict, "--model", str(run / "final")]),
        ("phi3v-train export (LoRA adapter)", "phi3v_train.cli", ["export", "--adapter", str(run / "final"), "--out",
                                                                  str(work / "merged")]),
    ]
    table = Table(title="start-up per command (python -X importtime)")
    for column in ("command", "wall s", "imports s", "heavy packages imported", "exit"):
        table.add_column(column, justify="left" if column in ("command", "heavy packages imported") else "right")
    for label, entry, args in commands:
        row = measure(entry, args)
        table.add_row(label, f"{row['wall']:.2f}", f"{row['imports']:.2f}", ", ".join(row["heavy"]) or "—",
                      str(row["rc"]))
    console = Console(width=120)
    console.print(table)
    console.print(f"(work files in {work})")


if __name__ == "__main__":
    main()
