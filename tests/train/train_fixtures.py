"""Plain builders for the training tests (the tiny model, a tiny memorisable dataset, run settings); the fixtures
that use them are in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

COLORS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
          "black": (5, 5, 5), "white": (250, 250, 250), "pink": (250, 120, 200), "brown": (120, 70, 20)}


def write_dataset(
    root: Path, *, name: str = "colors", split: str = "train", extra: list[dict] | None = None, count: int = 8
) -> Path:
    """``count`` (≤ 8) labeled records (one or two solid-colour images, answers = colour names) + ``extra`` raw
    records."""
    images = root / "images" / split
    images.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 40), COLORS["green"]).save(images / "green.png")
    sizes = [(40, 30), (30, 40), (64, 64), (50, 20)]
    records: list[dict[str, Any]] = []
    for index, (color, rgb) in enumerate(list(COLORS.items())[:count]):
        path = f"{split}/{color}.png"
        Image.new("RGB", sizes[index % len(sizes)], rgb).save(root / "images" / path)
        turns = [{"images": [path], "user": "What color is the image?" + " Answer in one word." * (index % 3),
                  "assistant": color}]
        if index % 4 == 3:  # a second turn about a second image: longer samples, global image numbering
            turns.append({"images": [f"{split}/green.png"], "user": "And this one?", "assistant": "green"})
        records.append({"id": f"{split}-{index}", "source": "colors", "task": "classification", "conversations": turns})
    records += extra or []
    (root / f"{name}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def make_tiny_model(path: Path) -> Path:
    """The model helper's tiny random checkpoint at ``path``, created unless it is already there."""
    from phi3v_train.model import create_tiny_checkpoint

    if not (path / "config.json").is_file():
        create_tiny_checkpoint(path, preset="tiny", seed=0)
    return path


def run_flags(data: Path, model: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    """Settings for a few fast CPU steps; tests override what they exercise."""
    flags: dict[str, Any] = {
        "data": str(data), "model": str(model), "output": str(output), "strategy": "full", "precision": "fp32",
        "num_crops": 1, "batch_size": 2, "max_steps": 4, "lr": 1e-3, "warmup": 0, "scheduler": "constant",
        "save_every": 100, "log_every": 1, "workers": 0, "tensorboard": False, "seed": 0,
        "gradient_checkpointing": False,
    }
    flags.update(overrides)
    return flags


def cli_args(flags: dict[str, Any]) -> list[str]:
    """The same settings as ``phi3v-train run`` flags."""
    args: list[str] = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args
