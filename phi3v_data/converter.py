"""The contract of a converter plugin: what a plugin author subclasses, yields, writes through and raises.

A converter knows only its source layout (see the README, "Writing a converter plugin")::

    class MyConverter(Converter):
        name = output_name = "mine"

        def plan(self, source: Path) -> Iterator[Item | Failure]:   # runs in the main process, in output order
            for path in sorted(source.glob("*.png")):
                yield Item(key=path.name, split="train", payload=str(path))

        def convert(self, item: Item, out: ImageWriter) -> list[dict]:   # runs in a worker process
            rel = out.copy(Path(item.payload), f"{item.split}/{item.key}")
            return [{"task": "caption", "conversations": [{"images": [rel], "user": "<|image_1|>\\nDescribe.",
                                                          "assistant": "..."}]}]

:func:`phi3v_data.convert.run_converter` does the rest for every converter: the worker pool, resume, the failures
report, ids, the manifest. Raise :class:`ConvertUsageError` from ``plan`` for a source it cannot read and
:class:`ConversionError` from ``convert`` for one bad item (reported, the run goes on).
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from phi3v_data.io import UnsafePathError, atomic_write, resolve_inside, write_bytes
from schemas.errors import UserError


class ConversionError(UserError):
    """An expected problem with one item (corrupt video, missing image): reported and skipped, never fatal.

    ``file`` and ``line`` name the annotation the item came from when the report should point there rather than at
    the item's key (a DocVQA question whose page is truncated)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.file, self.line = file, line


class ConvertUsageError(UserError):
    """The run cannot start (bad source layout, conflicting earlier run); the message says what to do."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work. ``key`` is unique and stable across runs; ``payload`` must be picklable.

    ``source_split`` is the release's name of the item's split (``validation``, ``dev_seen``): where it differs from
    ``split`` (written as ``val``) the engine stamps it on the item's records and the manifest lists it."""

    key: str
    split: str
    payload: Any = None
    source_split: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A problem with one input file or annotation line."""

    file: str
    reason: str
    split: str | None = None
    line: int | None = None


class ConverterOptions(BaseModel):
    """Options every converter accepts; subclasses add their own fields (each becomes a ``--flag``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(default=0, description="Seed for any random choice (split carving, answer choice).")


class Converter:
    """Base class of converters. Subclass, set the class attributes, implement ``plan`` and ``convert``."""

    name: ClassVar[str]
    """Name users type: ``phi3v-data convert NAME``."""
    version: ClassVar[str] = "1"
    """Bump when the output for the same input changes; recorded in the manifest and part of the resume key."""
    output_name: ClassVar[str]
    """Default prefix of the output files: ``<output_name>_<split>.jsonl``."""
    Options: ClassVar[type[ConverterOptions]] = ConverterOptions
    scans_source: ClassVar[bool] = False
    """True when ``plan`` takes every file under the source as input (informative: ``--out`` may overlap no input of
    any converter, see :func:`check_out_apart`)."""
    accepts_names: ClassVar[bool] = False
    """True when the source may also be a name that is not a local path (a Hugging Face Hub dataset id)."""

    def __init__(self, options: ConverterOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        """Scan ``source`` and yield the work items in output order, or a Failure for each unusable entry.

        Items convert while the plan goes on (it is not collected first), so a generator keeps memory flat at any
        size. Raise :class:`ConvertUsageError` before the first item when ``source`` is not a layout this converter
        reads: nothing is written then.
        """
        raise NotImplementedError

    def convert(self, item: Item, out: "ImageWriter") -> list[dict[str, Any]]:
        """Turn one item into records (dicts of the record schema; ``id`` optional). Runs in a worker process.

        Raise :class:`ConversionError` for a bad item; it is reported and the run goes on.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class ImageWriter:
    """Where converters put images: every path is relative to ``OUT/images`` and written atomically."""

    root: Path

    def path(self, rel: str) -> Path:
        """``root/rel``, refused if it leaves ``root``; symlink checks cached per directory (hot path: every frame)."""
        parent, _, name = rel.rpartition("/")
        if not name or name in (".", "..") or rel.startswith("/"):
            raise UnsafePathError(f"{rel!r} is not a file path")
        return _checked_dir(self.root, parent) / name

    def save(self, image: Any, rel: str, *, quality: int = 95) -> str:
        """Save a PIL image (JPEG when ``rel`` ends in .jpg/.jpeg, else by extension). Returns ``rel``."""
        target = self.path(rel)
        fmt = "JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else None
        if fmt == "JPEG" and image.mode not in ("RGB", "L"):
            from phi3v_data.images import to_rgb  # noqa: PLC0415 - numpy and PIL only when an image is re-encoded

            image = to_rgb(image)
        with atomic_write(target, "wb", durable=False) as handle:
            image.save(handle, format=fmt or target.suffix.lstrip(".").upper(), quality=quality)
        return rel

    def write(self, data: bytes, rel: str) -> str:
        """Write already encoded image bytes as they are. Returns ``rel``."""
        target = self.path(rel)
        try:
            write_bytes(target, data)
        except FileNotFoundError:  # the first image of its folder (cheaper than a mkdir per image)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(target, data)
        return rel

    def copy(self, src: Path, rel: str) -> str:
        """Copy an image file after checking that all of it decodes (a truncated page is a failure, not a record
        whose image ``validate --deep`` then refuses). Returns ``rel``."""
        from phi3v_data.images import ImageProblem, check_image

        try:
            check_image(src, deep=True, draft=True)
        except ImageProblem as exc:
            raise ConversionError(f"{src}: {exc}") from None
        target = self.path(rel)
        with open(src, "rb") as reader, atomic_write(target, "wb", durable=False) as writer:
            shutil.copyfileobj(reader, writer)
        return rel


class OutputClaims:
    """Output image paths claimed while planning, so two different inputs never silently share one output file.

    ``val/cat/1.png`` from both ``val/`` and ``valid/``, ``img/a.png`` and ``img2/a.png`` both → ``train/a.png``, or
    an image written at ``train`` where a folder ``train/`` must go: :meth:`claim` says so, the caller reports it.
    So do ``val/Cat/1.png`` and ``val/cat/1.png``: one file on a case-insensitive file system (macOS, Windows).
    """

    def __init__(self) -> None:
        self._files: dict[str, str] = {}
        self._dirs: set[str] = set()
        self._folded: dict[str, str] = {}
        """Casefolded path → the path claimed first under it, only where that path is not itself casefolded (most
        paths are: ``coco/train2017/000000033471.jpg``), which saves a third of the memory per image."""

    def claim(self, dest: str, source: str) -> str | None:
        """None when ``dest`` (under images/) is free or already ``source``'s; otherwise why it cannot be written."""
        owner = self._files.get(dest)
        if owner is not None:
            if owner == source:
                return None
            return f"{source} and {owner} would both be written to images/{dest}; rename one"
        folded = dest.casefold()
        twin = self._folded.get(folded, folded if folded in self._files else None)
        if twin is not None and self._files[twin] != source:
            return (f"{source} would be written to images/{dest} and {self._files[twin]} to images/{twin}: paths that "
                    "differ only by case are one file on case-insensitive file systems (macOS, Windows); rename one")
        if dest in self._dirs:
            return f"{source} would be written to images/{dest}, where other images need a folder of that name"
        parts = dest.split("/")
        prefixes = ["/".join(parts[:k]) for k in range(1, len(parts))]
        for prefix in prefixes:
            if prefix in self._files:
                return f"{source} needs a folder images/{prefix}, where the image {self._files[prefix]} is written"
        if folded != dest and folded not in self._files:
            self._folded.setdefault(folded, dest)
        self._files[dest] = source
        self._dirs.update(prefixes)
        return None


@functools.lru_cache(maxsize=4096)
def _checked_dir(root: Path, parent: str) -> Path:
    return resolve_inside(root, parent) if parent else root
