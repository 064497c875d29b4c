"""UCF-101 and any class-per-folder video collection → N JPEG frames + a classification prompt per clip.

Layouts recognised (first match wins):

- official UCF-101: ``ucfTrainTestlist/{classInd.txt,trainlist0K.txt,testlist0K.txt}`` inside SOURCE (videos in
  ``SOURCE/UCF-101/<Class>/`` or ``SOURCE/<Class>/``) or beside SOURCE (SOURCE is the ``UCF-101`` folder). The lists
  have Windows line endings; the test lists carry no label (the folder names the class). Paths are matched
  case-insensitively when the exact one is missing, and the class always comes from the folder or label, never
  from the file name (folder ``HandstandPushups`` holds ``v_HandStandPushups_*``).
- pre-split: ``SOURCE/{train,val,test}/<Class>/<video>``.
- any ``SOURCE/<Class>/<video>``: split into train/val/test by ``--val-ratio``/``--test-ratio`` and ``--seed``.

A val split is carved from train when the source has none. Carving moves whole groups (UCF's ``_gXX_``; other
clips are their own group), so the clips of one group never straddle splits, spread over the classes, and as close to
the requested share of clips as whole groups allow; the closing table and the manifest say what was carved.
Output per clip: ``images/<split>/<Class>/<stem>.<k>.jpg`` (k = 0..N-1) and one record whose user text lists every
class of the dataset and whose assistant text is the clip's class.

One line of ``ucfTrainTestlist/trainlist01.txt`` (``\\r\\n``-terminated; the number is the class in ``classInd.txt``)::

    ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1

with ``--frames 8`` becomes 8 frames ``images/train/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.{0..7}.jpg`` and, in
``ucf101_train.jsonl``::

    {"id": "train-0000000000", "source": "ucf101", "task": "classification",
     "conversations": [{"images": ["train/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.0.jpg", …,
                                   "train/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.7.jpg"],
                        "user": "Classify the video into one of the following classes: ApplyEyeMakeup, ApplyLipstick, …, YoYo.",
                        "assistant": "ApplyEyeMakeup"}]}
"""  # noqa: E501 (the example record's user text is one JSON string)

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from converters import _video_decode
from converters._common import NOT_UTF8, undecodable_name
from converters._video_decode import decode_frames, to_jpeg
from phi3v_data.converter import (
    ConversionError, Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item, OutputClaims,
)
from phi3v_data.io import UnsafePathError, check_file_link, resolve_inside, special_file_problem
from phi3v_data.splits import Carved, carve_splits

VIDEO_SUFFIXES = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv", ".3gp", ".ogv"}
)
PROMPT = "Classify the video into one of the following classes: {classes}."
UCF_NAME = re.compile(r"^v_.+_(g\d+)_c\d+$", re.IGNORECASE)
LISTS_DIR = "ucfTrainTestlist"
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class VideoOptions(ConverterOptions):
    frames: int = Field(default=8, ge=1, le=128, description="Frames per clip, at the centres of equal segments.")
    backend: Literal["auto", "decord", "pyav"] = Field(
        default="auto", description="Decoder; auto tries PyAV (keyframe seeking), then decord."
    )
    quality: int = Field(default=95, ge=1, le=100, description="JPEG quality of the saved frames.")
    max_side: int | None = Field(default=None, ge=16, description="Shrink frames whose longer side exceeds this.")
    split_list: int = Field(default=1, ge=1, le=3, description="Official UCF-101 split (trainlist0K/testlist0K).")
    val_ratio: float = Field(
        default=0.1, ge=0, lt=1, description="Share of train carved out as val when the source has no val."
    )
    test_ratio: float = Field(
        default=0.1, ge=0, lt=1, description="Share held out as test (class-per-folder layout only)."
    )

    @model_validator(mode="after")
    def _ratios(self) -> "VideoOptions":
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError("--val-ratio plus --test-ratio must stay below 1")
        return self


@dataclass(frozen=True)
class Clip:
    """Payload of one item: where the video is and what its record says."""

    path: str
    label: str
    prompt: str


@dataclass(frozen=True)
class _Entry:
    split: str
    label: str
    key: str
    path: Path


@dataclass
class _Scan:
    """A source layout read into entries; ``failures`` are unusable list lines or files."""

    classes: list[str]
    entries: list[_Entry] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    has_val: bool = False
    carved: list[Carved] = field(default_factory=list)


class VideoConverter(Converter):
    """UCF-101 (official lists or pre-split) and any class-per-folder video collection → frames + classification."""

    name = "video"
    version = "1"
    output_name = "ucf101"
    scans_source = True
    Options = VideoOptions
    options: VideoOptions

    def plan(self, source: Path) -> Iterator[Item | Failure | Carved]:
        _require_decoder(self.options.backend)
        scan = self._scan(Path(source))
        yield from scan.failures
        for entry in [e for e in scan.entries if undecodable_name(e.key) is not None]:  # Latin-1 names: no record
            scan.entries.remove(entry)  # can hold them; their class leaves the prompt's class list too
            yield Failure(undecodable_name(entry.key) or entry.key, NOT_UTF8, entry.split)
        scan.classes = [c for c in scan.classes if undecodable_name(c) is None]
        if not scan.has_val and self.options.val_ratio > 0:
            scan.entries, carved = _carve(
                scan.entries, {"val": self.options.val_ratio}, seed=self.options.seed, source="train"
            )
            scan.carved += carved
        yield from scan.carved
        prompt = PROMPT.format(classes=", ".join(scan.classes))
        order = {name: i for i, name in enumerate(scan.classes)}
        splits = {"train": 0, "val": 1, "test": 2}
        claims = OutputClaims()
        for entry in sorted(scan.entries, key=lambda e: (splits[e.split], order[e.label], e.key)):
            # e.g. clip.avi and clip.mp4 in one folder would write the same frames (Clip.avi too, on macOS/Windows)
            clash = claims.claim(f"{entry.split}/{entry.label}/{entry.path.stem}.*.jpg", entry.key)
            if clash is not None:
                yield Failure(entry.key, clash, entry.split)
                continue
            if entry.path.is_symlink():  # symlinked class folders are followed; a video linked from outside is not read
                try:
                    check_file_link(entry.path, source, shown=entry.key)
                except UnsafePathError as exc:
                    yield Failure(entry.key, f"refused: {exc}", entry.split)
                    continue
            yield Item(entry.key, entry.split, Clip(str(entry.path), entry.label, prompt))

    def _scan(self, source: Path) -> _Scan:
        for lists in (source / LISTS_DIR, source.parent / LISTS_DIR):
            if lists.is_dir():
                videos = source / "UCF-101" if (source / "UCF-101").is_dir() else source
                return _scan_official(videos, lists, split_list=self.options.split_list)
        root = source / "UCF-101" if (source / "UCF-101").is_dir() else source
        split_dirs = {d.name.lower(): d for d in _subdirs(root) if d.name.lower() in SPLIT_DIRS}
        if "train" in split_dirs:
            return _scan_presplit(root, split_dirs)
        scan = _scan_folders(root)
        if not scan.entries:
            raise ConvertUsageError(
                f"no videos found in {source}: expected UCF-101 with {LISTS_DIR}/, {{train,val,test}}/<class>/<video>, "
                f"or <class>/<video> (video files: {', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        ratios = {"test": self.options.test_ratio, "val": self.options.val_ratio}
        scan.entries, scan.carved = _carve(scan.entries, ratios, seed=self.options.seed, source="train")
        scan.has_val = True
        return scan

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        clip: Clip = item.payload
        path = Path(clip.path)
        special = special_file_problem(path)
        if special is not None:  # a FIFO would block the decoder forever
            raise ConversionError(f"{path}: {special}")
        if not path.is_file():
            raise ConversionError(f"{path}: no such video file")
        frames = decode_frames(path, self.options.frames, backend=self.options.backend)
        images = []
        for k, frame in enumerate(frames):
            jpeg = to_jpeg(frame, quality=self.options.quality, max_side=self.options.max_side)
            images.append(out.write(jpeg, f"{item.split}/{clip.label}/{path.stem}.{k}.jpg"))
        turn = {"images": images, "user": clip.prompt, "assistant": clip.label}
        return [{"source": "ucf101", "task": "classification", "conversations": [turn]}]


# -- layouts -------------------------------------------------------------------------------------------------------


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")
                  and (p.is_file() or special_file_problem(p) is not None))  # a FIFO is reported, not passed over


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Numbered, stripped, non-empty lines; CRLF (as UCF ships them), LF and a UTF-8 BOM are all fine."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _read_class_index(path: Path) -> list[str]:
    if not path.is_file():
        raise ConvertUsageError(f"{path} is missing: the official split lists need it to number the classes")
    by_number: dict[int, str] = {}
    for lineno, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ConvertUsageError(f"{path}:{lineno}: expected '<number> <ClassName>', got {line!r}")
        by_number[int(parts[0])] = parts[1]
    if sorted(by_number) != list(range(1, len(by_number) + 1)):
        raise ConvertUsageError(f"{path}: class numbers must run 1..{len(by_number)} without gaps")
    return [by_number[i] for i in range(1, len(by_number) + 1)]


def _scan_official(videos: Path, lists: Path, *, split_list: int) -> _Scan:
    classes = _read_class_index(lists / "classInd.txt")
    scan = _Scan(classes=classes)
    index: dict[str, str] = {}  # lower-case relative path → actual one, built on the first miss
    for split, name in (("train", f"trainlist{split_list:02d}.txt"), ("test", f"testlist{split_list:02d}.txt")):
        list_path = lists / name
        if not list_path.is_file():
            raise ConvertUsageError(f"{list_path} is missing (--split-list {split_list})")
        for lineno, line in _read_lines(list_path):
            try:
                label, path = _list_entry(line, videos, classes, index)
            except ValueError as exc:  # UnsafePathError is one
                scan.failures.append(Failure(f"{LISTS_DIR}/{name}", str(exc), split, lineno))
                continue
            scan.entries.append(_Entry(split, label, path.relative_to(videos).as_posix(), path))
    return scan


def _list_entry(line: str, videos: Path, classes: list[str], index: dict[str, str]) -> tuple[str, Path]:
    """Class and video of one split-list line (``Class/v_….avi [label]``); ValueError says what is wrong."""
    parts = line.split()
    rel = parts[0].replace("\\", "/")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) or "/" not in rel:
        raise ValueError(f"expected '<Class>/<video> [label]', got {line!r}")
    try:
        path = resolve_inside(videos, rel)
    except UnsafePathError as exc:
        raise ValueError(f"refused: {exc}") from None
    if not path.is_file():  # e.g. a list written on a case-insensitive file system
        index.update(index or _index_videos(videos))
        path = resolve_inside(videos, index.get(rel.lower(), rel))
    if not path.is_file():
        raise ValueError(f"{rel}: no such video under {videos}")
    folder = path.relative_to(videos).parts[0]
    if len(parts) == 2:
        if not 1 <= int(parts[1]) <= len(classes):
            raise ValueError(f"label {parts[1]} is not in classInd.txt (1..{len(classes)})")
        label = classes[int(parts[1]) - 1]
    else:
        label = next((c for c in classes if c.lower() == folder.lower()), folder)
    if label.lower() != folder.lower():
        raise ValueError(f"{rel} sits in folder {folder!r} but is labelled {label!r} (classInd.txt)")
    return label, path


def _index_videos(videos: Path) -> dict[str, str]:
    return {f"{d.name}/{v.name}".lower(): f"{d.name}/{v.name}" for d in _subdirs(videos) for v in _videos(d)}


def _scan_presplit(root: Path, split_dirs: dict[str, Path]) -> _Scan:
    entries = [
        _Entry(SPLIT_DIRS[name], cls.name, video.relative_to(root).as_posix(), video)
        for name, folder in split_dirs.items()
        for cls in _subdirs(folder)
        for video in _videos(cls)
    ]
    classes = sorted({e.label for e in entries})
    return _Scan(classes=classes, entries=entries, has_val=any(e.split == "val" for e in entries))


def _scan_folders(root: Path) -> _Scan:
    entries = [
        _Entry("train", cls.name, video.relative_to(root).as_posix(), video)
        for cls in _subdirs(root)
        for video in _videos(cls)
    ]
    return _Scan(classes=sorted({e.label for e in entries}), entries=entries)


def _group(entry: _Entry) -> str:
    """UCF's ``_gXX_`` group (clips of one actor/scene), else the clip itself."""
    match = UCF_NAME.match(entry.path.stem)
    return match.group(1).lower() if match else entry.path.stem


def _carve(
    entries: list[_Entry], ratios: dict[str, float], *, seed: int, source: str
) -> tuple[list[_Entry], list[Carved]]:
    """Move whole groups of ``source`` clips into the splits of ``ratios`` (in order), deterministically.

    Each split gets the whole groups that come closest to ``ratio`` × the ``source`` clips, spread over the classes
    (see :func:`phi3v_data.splits.carve_groups`); one group of each class always stays in ``source``.
    """
    # a clip listed twice counts once
    pool = list({entry.key: entry for entry in entries if entry.split == source}.values())
    groups: dict[tuple[str, str], list[str]] = {}
    for entry in pool:
        groups.setdefault((entry.label, _group(entry)), []).append(entry.key)
    moved, carved = carve_splits(groups, ratios, seed=seed, source=source)
    return [_Entry(moved.get(e.key, e.split), e.label, e.key, e.path) for e in entries], carved


def _require_decoder(backend: str) -> None:
    """Refuse to start without the decoder (every clip would fail): one message naming the extra to install."""
    if _video_decode.av is None:
        raise ModuleNotFoundError("the video converter needs PyAV: pip install 'phi3v[video]'", name="av")
    if backend == "decord":
        try:
            import decord  # noqa: F401
        except ImportError:
            raise ModuleNotFoundError(
                "--backend decord needs decord: pip install 'phi3v[video]'", name="decord"
            ) from None
