"""What the document and image-pair converters share: finding annotation files, reading JSON lines into Failures,
finding images by basename, safe paths, and checking embedded image bytes (reading Hugging Face parquet/arrow
exports is :mod:`converters._hf_reader`).

Kept here so each converter module is only its source layout and its prompt.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from phi3v_data.converter import ConversionError, Failure, ImageWriter
from phi3v_data.images import MAX_PIXELS
from phi3v_data.io import UnsafePathError, iter_jsonl, path_text_problem, resolve_inside, walk_files
from schemas import BINARY_ANSWERS
from schemas.errors import first_validation_line

ESCAPES = "refused: escapes the dataset root"
MISSING_LABEL = "field 'label' is missing (other lines of this file have labels)"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"})
M = TypeVar("M", bound=BaseModel)


def find_named_files(source: Path, names: Sequence[str], *, subdirs: Sequence[str] = ("", "data")) -> list[Path]:
    """Files among ``names`` in ``source`` (or the first of ``subdirs`` that holds any), in the order of ``names``."""
    for sub in subdirs:
        folder = source / sub if sub else source
        found = [folder / name for name in names if (folder / name).is_file()]
        if found:
            return found
    return []


def relative_name(path: Path, root: Path) -> str:
    """How reports name a file: relative to the dataset root when inside it (stable across machines)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


NOT_UTF8 = ("the name is not valid UTF-8 (written in another encoding, e.g. Latin-1), so no record can hold it; "
            "rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 -r --notest SOURCE) and rerun")


def undecodable_name(rel: str) -> str | None:
    """``rel`` (a path as Python reads it from the file system) shown with its undecodable bytes as ``\\xe9``, or
    None when it is valid UTF-8. Python keeps such bytes as lone surrogates, which no UTF-8 record can hold: a class
    folder named in Latin-1 would put them into every prompt, and ``validate`` would refuse each record."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")
    return None


def read_json_lines(path: Path, model: type[M], *, file: str) -> Iterator[tuple[int, M] | Failure]:
    """Each line of a JSON-lines annotation file parsed into ``model``, or a Failure naming file and line."""
    for line in iter_jsonl(path):
        if line.error is not None:
            yield Failure(file, line.error, line=line.lineno)
            continue
        try:
            yield line.lineno, model.model_validate(line.value)
        except ValidationError as exc:
            yield Failure(file, f"malformed line: {first_validation_line(exc)}", line=line.lineno)


def binary_turn(images: list[str], user: str, label: int | None) -> dict[str, Any]:
    """A yes/no turn; ``label`` None makes it unlabeled (assistant null, no reference)."""
    if label is None:
        return {"images": images, "user": user, "assistant": None}
    return {"images": images, "user": user, "assistant": BINARY_ANSWERS[label], "reference": {"label": label}}


def check_template(template: str, *fields: str) -> str:
    """Refuse a prompt template that lacks a placeholder or has unknown ones (caught before any work starts)."""
    for name in fields:
        if "{" + name + "}" not in template:
            raise ValueError(f"the template must contain {{{name}}}")
    try:
        template.format(**{name: "" for name in fields})
    except (KeyError, IndexError, ValueError) as exc:
        hint = "write {{ for a literal brace"
        raise ValueError(f"the template has an unknown placeholder or a stray brace ({exc}); {hint}") from None
    return template


@dataclass
class BasenameIndex:
    """Image files under ``root`` by file name, built on first use (downloads ship images flat or nested)."""

    root: Path
    _paths: dict[str, Path] | None = field(default=None, repr=False)

    def _build(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder, files in walk_files(self.root):  # symlinked folders too (images mounted from another disk)
            for name in files:
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    found.setdefault(name, folder / name)  # the first in sorted walk order wins: deterministic
        return found

    def find(self, name: str) -> Path | None:
        """The file called ``name``; UnsafePathError when it is a symlink to a file outside the dataset."""
        if self._paths is None:
            self._paths = self._build()
        path = self._paths.get(name)
        return None if path is None else resolve_inside(self.root, path.relative_to(self.root).as_posix())


def locate(root: Path, rel: str, index: BasenameIndex, *, bases: Sequence[Path] = ()) -> Path | None:
    """Find the file an annotation names: ``rel`` under each of ``bases`` (folders inside ``root``; default: root),
    else by basename anywhere under ``root``.

    Raises :class:`UnsafePathError` naming the rule ``rel`` breaks (absolute, ``..``, NUL byte) or when the file found
    is a symlink to a file outside the dataset (see :data:`phi3v_data.io.SYMLINK_RULE`).
    """
    problem = path_text_problem(rel)
    if problem is not None:  # refuse before looking anywhere
        raise UnsafePathError(problem)
    for base in bases or (root,):
        if resolve_inside(base, rel).is_file():
            return resolve_inside(base, rel)
    return index.find(rel.replace("\\", "/").rsplit("/", 1)[-1])


_MAGIC = (
    (b"\x89PNG", ".png"),
    (b"\xff\xd8", ".jpg"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
)


def sniff_suffix(data: bytes) -> str:
    """File suffix of encoded image bytes (what the bytes are, whatever a stored path claims)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".png")


def write_image_bytes(out: ImageWriter, data: bytes, rel: str) -> str:
    """Write encoded image bytes as they are (no re-encoding) after checking that they decode."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ConversionError(f"embedded image is {image.width}x{image.height}, over the pixel limit")
                image.load()
    except ConversionError:
        raise
    except Image.UnidentifiedImageError:
        raise ConversionError("embedded image is not in a recognised image format") from None
    except Exception as exc:  # PIL raises many kinds for broken bytes
        raise ConversionError(f"embedded image does not decode: {exc}") from None
    return out.write(data, rel)
