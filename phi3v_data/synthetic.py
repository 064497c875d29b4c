"""A small synthetic video dataset in UCF-101's on-disk layout, for the demo and for trying the pipeline offline.

Each class has its own look — a dominant background colour, a foreground shape and a motion — so that a tiny model
can learn them from a few sampled frames; clips vary in shade, size, phase, speed and noise so it has to generalise.
Clip names follow UCF-101 (``v_<Class>_gXX_cYY.avi``, three clips per group) including its one naming quirk: the
folder ``HandstandPushups`` holds files named ``v_HandStandPushups_*``.

Layouts: ``ucf101`` writes ``UCF-101/<Class>/*.avi`` and ``ucfTrainTestlist/`` (classInd.txt and three train/test
splits with CRLF line endings, test groups rotating like the official ones); ``presplit`` writes
``{train,val,test}/<Class>/*.avi``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from phi3v_data.io import atomic_write, write_json
from schemas.errors import UserError

Layout = Literal["ucf101", "presplit"]
CLIPS_PER_GROUP = 3
MARKER = ".phi3v-sample.json"
"""Written first into the folder of a sample: only a folder holding it (or a new or empty one) is written into."""


class SampleOutputError(UserError, ValueError):
    """The sample's folder already holds files that are not an earlier sample (a real dataset, say): a usage error."""

    exit_code = 2


@dataclass(frozen=True)
class ClassLook:
    name: str
    file_name: str
    """The class as spelled in the clip file names (differs for HandstandPushups, as in UCF-101)."""
    background: tuple[int, int, int]
    foreground: tuple[int, int, int]
    shape: Literal["disc", "square", "bar"]
    motion: Literal["right", "left", "down", "circle", "pulse", "diagonal"]


LOOKS: tuple[ClassLook, ...] = (
    ClassLook("ApplyEyeMakeup", "ApplyEyeMakeup", (200, 40, 40), (250, 250, 250), "disc", "right"),
    ClassLook("Basketball", "Basketball", (40, 170, 60), (250, 220, 30), "square", "down"),
    ClassLook("HandstandPushups", "HandStandPushups", (40, 60, 200), (250, 250, 250), "bar", "pulse"),
    ClassLook("JumpingJack", "JumpingJack", (230, 210, 50), (20, 20, 20), "disc", "circle"),
    ClassLook("PlayingGuitar", "PlayingGuitar", (190, 50, 190), (40, 220, 90), "square", "pulse"),
    ClassLook("Rowing", "Rowing", (40, 200, 210), (200, 30, 30), "bar", "left"),
    ClassLook("Surfing", "Surfing", (240, 140, 30), (30, 60, 200), "disc", "diagonal"),
    ClassLook("YoYo", "YoYo", (120, 120, 120), (10, 10, 10), "square", "circle"),
)


@dataclass(frozen=True)
class SampleSummary:
    root: Path
    layout: str
    classes: list[str]
    clips: int
    splits: dict[str, int]


def write_video_sample(
    out_dir: Path,
    *,
    classes: int = 4,
    clips_per_class: int = 12,
    seed: int = 0,
    layout: Layout = "ucf101",
    size: tuple[int, int] = (96, 72),
    seconds: float = 1.6,
    fps: int = 25,
) -> SampleSummary:
    """Write the dataset under ``out_dir`` (deterministic for a seed); returns what was written."""
    if not 1 <= classes <= len(LOOKS):
        raise ValueError(f"classes must be between 1 and {len(LOOKS)}, got {classes}")
    if clips_per_class < 1:
        raise ValueError(f"clips_per_class must be at least 1, got {clips_per_class}")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"frame size {size} must be even in both dimensions (MPEG-4 with 4:2:0 chroma)")
    out_dir = Path(out_dir)
    _refuse_foreign_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MARKER, {"sample": "video", "layout": layout})
    looks = LOOKS[:classes]
    n_frames = max(1, round(seconds * fps))
    splits: dict[str, int] = {}
    listed: list[tuple[int, str, int]] = []  # (class number, relative path, group)
    for number, look in enumerate(looks, start=1):
        for clip in range(clips_per_class):
            group, take = clip // CLIPS_PER_GROUP + 1, clip % CLIPS_PER_GROUP + 1
            file = f"v_{look.file_name}_g{group:02d}_c{take:02d}.avi"
            split = _presplit_of(group)
            rel = f"{split}/{look.name}/{file}" if layout == "presplit" else f"UCF-101/{look.name}/{file}"
            rng = np.random.default_rng([seed, number, clip])
            _write_clip(out_dir / rel, _frames(look, rng, size=size, count=n_frames), fps=fps)
            listed.append((number, f"{look.name}/{file}", group))
            splits[split] = splits.get(split, 0) + 1
    if layout == "ucf101":
        splits = _write_lists(out_dir / "ucfTrainTestlist", [look.name for look in looks], listed)
    return SampleSummary(out_dir, layout, [look.name for look in looks], len(listed), splits)


def _refuse_foreign_folder(out_dir: Path) -> None:
    """A sample overwrites clips and ``classInd.txt`` by their UCF-101 names, so it goes only into a new or empty
    folder or over an earlier sample (which holds :data:`MARKER`), never into a folder holding a real dataset."""
    if not out_dir.is_dir() or (out_dir / MARKER).is_file():
        return  # a file in the way is reported by mkdir, naming the path
    entries = sorted(entry.name for entry in out_dir.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise SampleOutputError(
            f"{out_dir} already holds files that no sample wrote ({shown}); a sample would overwrite or mix into "
            "them (UCF-101 clip names, classInd.txt): give a new or empty folder"
        )


def _presplit_of(group: int) -> str:
    return {1: "test", 2: "val"}.get((group - 1) % 4 + 1, "train")


def _write_lists(lists: Path, names: list[str], listed: list[tuple[int, str, int]]) -> dict[str, int]:
    """classInd.txt and trainlist0K/testlist0K for K = 1..3 (test = every 4th group, rotating), CRLF like UCF."""

    def write(name: str, lines: list[str]) -> None:
        with atomic_write(lists / name, "w", encoding="utf-8", newline="") as handle:
            handle.write("".join(line + "\r\n" for line in lines))

    write("classInd.txt", [f"{i} {name}" for i, name in enumerate(names, start=1)])
    counts: dict[str, int] = {}
    for k in (1, 2, 3):
        test = [(n, rel) for n, rel, g in listed if (g - 1) % 4 == k - 1]
        train = [(n, rel) for n, rel, g in listed if (g - 1) % 4 != k - 1]
        write(f"trainlist{k:02d}.txt", [f"{rel} {n}" for n, rel in train])
        write(f"testlist{k:02d}.txt", [rel for _, rel in test])
        if k == 1:
            counts = {"train": len(train), "test": len(test)}
    return counts


def _frames(look: ClassLook, rng: np.random.Generator, *, size: tuple[int, int], count: int) -> np.ndarray:
    """(count, h, w, 3) uint8 frames: jittered background, the class's shape moving its way, mild noise."""
    width, height = size
    background = np.clip(np.array(look.background) + rng.integers(-25, 26, 3), 0, 255)
    radius = rng.uniform(0.12, 0.2) * height
    phase, speed = rng.uniform(0, 1), rng.uniform(0.6, 1.0)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        s = phase + speed * t / count  # progress along the motion, in [0, 2)
        cx, cy, r = _position(look.motion, s % 1.0, width, height, radius)
        if look.shape == "disc":
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        elif look.shape == "square":
            mask = (abs(xs - cx) <= r) & (abs(ys - cy) <= r)
        else:
            mask = (abs(xs - cx) <= 2.2 * r) & (abs(ys - cy) <= 0.5 * r)
        frame = np.where(mask[..., None], np.array(look.foreground), background)
        frame = frame + rng.integers(-8, 9, frame.shape)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _position(motion: str, s: float, width: int, height: int, radius: float) -> tuple[float, float, float]:
    """Centre and radius of the shape at progress ``s`` in [0, 1)."""
    if motion == "right":
        return s * width, height / 2, radius
    if motion == "left":
        return (1 - s) * width, height / 2, radius
    if motion == "down":
        return width / 2, s * height, radius
    if motion == "diagonal":
        return s * width, s * height, radius
    if motion == "circle":
        angle = 2 * np.pi * s
        return width / 2 + 0.3 * width * np.cos(angle), height / 2 + 0.3 * height * np.sin(angle), radius
    return width / 2, height / 2, radius * (0.6 + 0.8 * abs(np.sin(2 * np.pi * s)))  # pulse


def _write_clip(path: Path, frames: np.ndarray, *, fps: int) -> None:
    """MPEG-4 Part 2 in AVI, as UCF-101 ships (there DivX/XviD), written atomically."""
    import av

    with atomic_write(path, "wb") as handle, av.open(handle, "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 400_000
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
