"""A user's own images → records, in one of three layouts (``--mode``; ``auto`` detects it).

**classes** — class-per-folder classification like torchvision's ImageFolder: ``root/<class>/**/<image>``, or
pre-split ``root/{train,val,test}/<class>/…``. ``root/cat/01.png`` (with classes cat and dog) becomes::

    {"id": "train-0000000000", "source": "folder", "task": "classification",
     "conversations": [{"images": ["train/cat/01.png"],
                        "user": "Classify the image into one of the following classes: cat, dog.", "assistant": "cat"}]}

**captions** — ``root/**/<stem>.<ext>`` beside ``<stem>.txt`` holding its caption: task ``caption``, user text
``Describe the image.``, assistant = the caption (stripped). An image without its ``.txt`` is reported.

**manifest** — a CSV or JSONL file with columns ``image`` (one path, several joined by ``|``, or a JSON list in
jsonl), ``question``, ``answer`` (empty = unlabeled), optional ``split`` and ``id``; image paths are relative to the
manifest's folder and refused if they lead out of it. The CSV line ``a.png|b.png,Which is larger?,the left one,val``
becomes::

    {"id": "val-0000000000", "source": "folder", "task": "vqa",
     "conversations": [{"images": ["val/a.png", "val/b.png"], "user": "Which is larger?", "assistant": "the left one"}]}

Auto-detection: a file, or a folder with exactly one top-level ``.csv``/``.jsonl``, is a manifest; a folder where some
image has a same-stem ``.txt`` holds captions; any other folder holds classes.

``--prompt`` templates fill ``{classes}`` (classes mode: sorted class names joined by ", ") and ``{question}``
(manifest mode); write ``{{``/``}}`` for literal braces. Splits: top-level ``train``/``val``/``test`` folders
(``valid``/``validation`` count as ``val``) are kept, and without a ``val`` folder one is carved from train by
``--val-ratio``. Otherwise (and for manifest rows without ``split``) ``round(n × val_ratio)`` items go to val and
``round(n × test_ratio)`` to test (at least one when the ratio is above 0), spread over the classes in proportion
to their size, chosen with ``--seed``; the closing table and the manifest say what was carved.
Images are copied to ``images/<split>/<path inside the split folder or root>``; hidden files and extensions outside
``IMAGE_SUFFIXES`` are ignored; an image that does not decode is reported and skipped.
"""

from __future__ import annotations

import csv
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from converters._common import IMAGE_SUFFIXES, NOT_UTF8, undecodable_name
from phi3v_data.converter import (
    ConversionError, Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item, OutputClaims,
)
from phi3v_data.io import (
    UnsafePathError, check_file_link, iter_jsonl, resolve_inside, special_file_problem, walk_files,
)
from phi3v_data.splits import Carved, carve_splits
from schemas import Task
from schemas.errors import first_validation_line

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MANIFEST_SUFFIXES = (".csv", ".jsonl")
Mode = Literal["classes", "captions", "manifest"]
PROMPTS: dict[Mode, str] = {
    "classes": "Classify the image into one of the following classes: {classes}.",
    "captions": "Describe the image.",
    "manifest": "{question}",
}
PLACEHOLDERS: dict[Mode, frozenset[str]] = {
    "classes": frozenset({"classes"}), "captions": frozenset(), "manifest": frozenset({"question"})
}
TASKS: dict[Mode, Task] = {"classes": "classification", "captions": "caption", "manifest": "vqa"}
Entry = tuple[str | None, Path, Path]
"""(split of a pre-split folder or None, the folder the image's path is taken from, the image file)."""


class FolderOptions(ConverterOptions):
    mode: Literal["auto", "classes", "captions", "manifest"] = Field(
        default="auto", description="Layout of the source (auto detects it)."
    )
    prompt: str | None = Field(
        default=None,
        description="User text template: {classes} (classes mode), {question} (manifest mode) [default: per mode].",
    )
    task: Task | None = Field(
        default=None, description="Task of the records [default: classification, caption or vqa by mode]."
    )
    val_ratio: float = Field(
        default=0.1, ge=0, lt=1, description="Share carved into val when the source is not pre-split."
    )
    test_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Share carved into test when the source is not pre-split."
    )

    @model_validator(mode="after")
    def _ratios_leave_train(self) -> "FolderOptions":
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError("val_ratio + test_ratio must stay below 1 so that train keeps some images")
        return self


class ManifestRow(BaseModel):
    """One manifest line, as read from CSV (all strings) or JSONL."""

    model_config = ConfigDict(extra="ignore")
    image: list[str] = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str | None
    split: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    id: str | None = None

    @field_validator("image", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return [part.strip() for part in value.split("|") if part.strip()] if isinstance(value, str) else value

    @field_validator("answer", "split", "id", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None if value == "" else value


@dataclass(frozen=True, slots=True)
class _Job:
    images: tuple[tuple[str, str], ...]  # (source file, destination under images/)
    user: str
    assistant: str | None
    task: Task
    caption: str | None = None  # caption file, read in the worker
    id: str | None = None


def ratio_split(
    pools: dict[str, Sequence[str]], *, seed: int, val_ratio: float, test_ratio: float = 0.0
) -> tuple[dict[str, str], list[Carved]]:
    """Split of each key of ``pools`` (class → keys) and what was carved: ``round(n·val)`` keys → val, then
    ``round(n·test)`` → test, over all ``n`` keys, spread over the classes (:func:`phi3v_data.splits.carve_groups`)."""
    groups = {(cls, key): [key] for cls, keys in pools.items() for key in keys}
    moved, carved = carve_splits(groups, {"val": val_ratio, "test": test_ratio}, seed=seed)
    chosen = {key: moved.get(key, "train") for keys in pools.values() for key in keys}
    return chosen, carved


class FolderConverter(Converter):
    """Your own images: class folders, image + .txt captions, or a CSV/JSONL manifest of questions.

    --mode (detected when auto): classes = ROOT/<class>/<image> or ROOT/{train,val,test}/<class>/<image>;
    captions = <stem>.<ext> beside <stem>.txt; manifest = a .csv/.jsonl with columns image, question, answer and
    optional split, id (several images joined by |, paths relative to the manifest). Sources that are not
    pre-split get val/test carved by --val-ratio/--test-ratio with --seed (per class for classes).

    \b
    Example:
        phi3v-data convert folder my_pets/ --out data/pets --val-ratio 0.2
        phi3v-data convert folder qa/manifest.csv --out data/qa --prompt "Answer briefly. {question}"
    """

    name: ClassVar[str] = "folder"
    output_name: ClassVar[str] = "folder"
    scans_source: ClassVar[bool] = True
    Options = FolderOptions
    options: FolderOptions

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        mode = self.options.mode
        if source.is_file() and (mode not in ("auto", "manifest") or source.suffix.lower() not in MANIFEST_SUFFIXES):
            raise ConvertUsageError(f"{source} is a file: give a .csv/.jsonl manifest, or a folder of images")
        manifests = [source] if source.is_file() else _top_level_manifests(source)
        if mode == "manifest" or (mode == "auto" and len(manifests) == 1):
            if len(manifests) != 1:
                raise ConvertUsageError(
                    f"{source} holds {len(manifests)} .csv/.jsonl files: give the manifest file itself"
                )
            yield from self._plan_manifest(manifests[0], self._template("manifest"))
            return
        entries = _entries(source)
        if mode == "auto":
            mode = "captions" if any(path.with_suffix(".txt").is_file() for _, _, path in entries) else "classes"
        yield from self._plan_folder(source, entries, mode)

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        job: _Job = item.payload
        assistant = _read_caption(Path(job.caption)) if job.caption else job.assistant
        images = [out.copy(Path(src), rel) for src, rel in job.images]
        record: dict[str, Any] = {
            "task": job.task, "conversations": [{"images": images, "user": job.user, "assistant": assistant}]
        }
        if job.id is not None:
            record["id"] = job.id
        return [record]

    def _template(self, mode: Mode) -> str:
        """The prompt template for ``mode``, refused at once when it names a placeholder the mode does not fill."""
        template = self.options.prompt or PROMPTS[mode]
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ConvertUsageError(f"--prompt {template!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
        unknown = sorted(names - PLACEHOLDERS[mode])
        if unknown:
            known = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS[mode])) or "none"
            raise ConvertUsageError(
                f"--prompt uses {{{unknown[0]}}}, which {mode} mode does not fill (it fills: {known})"
            )
        return template

    def _plan_folder(self, root: Path, entries: list[Entry], mode: Mode) -> Iterator[Item | Failure | Carved]:
        template = self._template(mode)
        usable = []
        for entry in entries:  # before the class list is made: one Latin-1 class name would spoil every prompt
            shown = undecodable_name(entry[2].relative_to(root).as_posix())
            if shown is None:
                usable.append(entry)
            else:
                yield Failure(shown, NOT_UTF8, entry[0])
        entries = usable
        if mode == "classes":
            for _, base, path in entries:
                if len(path.relative_to(base).parts) == 1:
                    yield Failure(path.relative_to(root).as_posix(), "image is not inside a class folder")
            entries = [entry for entry in entries if len(entry[2].relative_to(entry[1]).parts) > 1]
            group_of: Callable[[Path, Path], str] = _class_of
            user = template.format(classes=", ".join(sorted({_class_of(b, p) for _, b, p in entries})))
        else:
            group_of, user = _one_group, template.format()
        task = self.options.task or TASKS[mode]
        splits, carved = self._splits(root, entries, group_of)
        yield from carved
        claims = OutputClaims()
        for _, base, path in entries:
            key = path.relative_to(root).as_posix()
            split = splits[key]
            images = ((str(path), f"{split}/{path.relative_to(base).as_posix()}"),)
            caption = path.with_suffix(".txt")
            try:  # a symlinked image or caption that leads out of the source is reported, never read
                for file in (path, caption) if mode == "captions" and caption.is_file() else (path,):
                    if file.is_symlink():
                        check_file_link(file, root, shown=file.relative_to(root).as_posix())
            except UnsafePathError as exc:
                yield Failure(key, f"refused: {exc}", split)
                continue
            clash = claims.claim(images[0][1], key)  # val/ and valid/ both become val/
            if clash is not None:
                yield Failure(key, clash, split)
                continue
            if mode == "classes":
                yield Item(key, split, _Job(images, user, group_of(base, path), task))
            elif path.with_suffix(".txt").is_file():
                yield Item(key, split, _Job(images, user, None, task, caption=str(path.with_suffix(".txt"))))
            else:
                yield Failure(key, f"no caption: expected {path.with_suffix('.txt').name} beside it", split)

    def _splits(
        self, root: Path, entries: list[Entry], group_of: Callable[[Path, Path], str]
    ) -> tuple[dict[str, str], list[Carved]]:
        """Split of each image (by path under root): pre-split folders kept, the rest carved by ratio per group."""
        presplit = any(split is not None for split, _, _ in entries)
        has_val = any(split == "val" for split, _, _ in entries)
        chosen: dict[str, str] = {}
        pools: dict[str, list[str]] = {}
        for split, base, path in entries:
            key = path.relative_to(root).as_posix()
            if split is None or (split == "train" and not has_val):
                pools.setdefault(group_of(base, path), []).append(key)
            else:
                chosen[key] = split
        if not pools:
            return chosen, []
        test_ratio = 0.0 if presplit else self.options.test_ratio
        split_of, carved = ratio_split(
            pools, seed=self.options.seed, val_ratio=self.options.val_ratio, test_ratio=test_ratio
        )
        return chosen | split_of, carved

    def _plan_manifest(self, path: Path, template: str) -> Iterator[Item | Failure | Carved]:
        task = self.options.task or TASKS["manifest"]
        rows: list[tuple[int, ManifestRow, list[tuple[str, str]]]] = []
        for line, raw, error in _manifest_rows(path):
            try:
                if error:
                    raise ValueError(error)
                row = ManifestRow.model_validate(raw)
                images = [(str(resolve_inside(path.parent, p)), _normalised(p)) for p in row.image]
            except ValidationError as exc:
                yield Failure(path.name, f"malformed row: {first_validation_line(exc)}", line=line)
                continue
            except UnsafePathError as exc:
                yield Failure(path.name, f"image refused: {exc}", line=line)
                continue
            except ValueError as exc:
                yield Failure(path.name, str(exc), line=line)
                continue
            rows.append((line, row, images))
        unsplit = [str(line) for line, row, _ in rows if row.split is None]
        carved, report = ratio_split({"": unsplit}, seed=self.options.seed, val_ratio=self.options.val_ratio,
                                     test_ratio=self.options.test_ratio)
        yield from report if unsplit else ()
        for line, row, images in rows:
            split = row.split or carved[str(line)]
            placed = tuple((src, f"{split}/{rel}") for src, rel in images)
            job = _Job(placed, template.format(question=row.question), row.answer, task, id=row.id)
            yield Item(f"{path.name}:{line}", split, job)


def _entries(root: Path) -> list[Entry]:
    """Every usable image under ``root``, with its pre-split folder when ``root`` is split into train/val/test."""
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if dirs and all(d.name.lower() in SPLIT_DIRS for d in dirs):
        return [(SPLIT_DIRS[d.name.lower()], d, path) for d in dirs for path in _images_under(d)]
    return [(None, root, path) for path in _images_under(root)]


def _class_of(base: Path, path: Path) -> str:
    return path.relative_to(base).parts[0]


def _one_group(base: Path, path: Path) -> str:
    return ""


def _images_under(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, files in walk_files(root):  # symlinked folders are followed, each real folder once
        found += [folder / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _top_level_manifests(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)


def _manifest_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line, raw row, parse error) of a JSONL or CSV manifest."""
    if path.suffix.lower() == ".jsonl":
        for entry in iter_jsonl(path):
            yield entry.lineno, entry.value, entry.error
        return
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = sorted({"image", "question", "answer"} - set(reader.fieldnames or []))
            if missing:
                raise ConvertUsageError(
                    f"{path}: the header line has no column {', '.join(missing)} "
                    f"(it has {', '.join(reader.fieldnames or [])}); "
                    "a manifest needs image, question, answer and may add split, id"
                )
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if isinstance(k, str)}, None
    except UnicodeDecodeError as exc:
        raise ConvertUsageError(f"{path}: not UTF-8 text ({exc.reason}); save the manifest as UTF-8") from None


def _normalised(rel: str) -> str:
    return "/".join(part for part in rel.replace("\\", "/").split("/") if part not in ("", "."))


def _read_caption(path: Path) -> str:
    special = special_file_problem(path)
    if special is not None:  # a FIFO would block the read forever
        raise ConversionError(f"{path.name}: the caption {special}")
    try:
        caption = path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path.name}: cannot read the caption ({exc})") from None
    if not caption:
        raise ConversionError(f"{path.name}: the caption file is empty")
    return caption
