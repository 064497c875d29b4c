"""Small file primitives every part of the toolkit shares: atomic writes, streamed jsonl, safe paths."""

from __future__ import annotations

import contextlib
import json
import os
import itertools
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


_TEMP_COUNTER = itertools.count()


class UnsafePathError(ValueError):
    """A path taken from a data file points outside the root it must stay in."""


def resolve_inside(root: Path, relative: str | os.PathLike[str]) -> Path:
    """Join ``relative`` onto ``root`` and refuse anything that ends up outside ``root``.

    Absolute paths, ``..`` components and symlinks that lead out of ``root`` are refused.

    >>> resolve_inside(Path("/data"), "img/a.png")
    PosixPath('/data/img/a.png')
    """
    rel = str(relative)
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"{rel!r} is not a relative path")
    parts = rel.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafePathError(f"{rel!r} escapes {root}")
    candidate = Path(root, *[p for p in parts if p not in ("", ".")])
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(candidate))
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(f"{rel!r} leads outside {root} (through a symlink)")
    return candidate


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, durable: bool = True, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place only when the block succeeds.

    A crash or Ctrl-C inside the block leaves ``path`` as it was (absent or the previous version), never half-written.
    ``durable=False`` skips the fsync: the rename still protects against a killed process, only not against power
    loss — right for the many small files a converter writes and can redo (the fsync was ~25% of video conversion).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new hidden file beside ``path``, unique per process, thread and call, with open()'s usual permissions.

    Cheaper than ``tempfile.mkstemp`` (no random names, no chmod: mkstemp's 0600 would leak into the result), which
    matters for the tens of thousands of small images a converter writes.
    """
    while True:
        tmp = str(path.parent / f".{path.name}.{os.getpid()}-{threading.get_ident()}-{next(_TEMP_COUNTER)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # left by a killed process that had the same pid; take the next number
            continue


def write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Atomically write ``data`` (temp file + rename, no fsync) into an existing directory.

    The lean form of :func:`atomic_write` for the hot path of converters: one image per call, thousands per second.
    """
    fd, tmp = _create_temp(Path(path))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write pretty JSON."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Atomically write one JSON value per line (pydantic models are dumped without None fields). Returns the count."""
    count = 0
    with atomic_write(path, "w", encoding="utf-8") as handle:
        for row in rows:
            if hasattr(row, "model_dump"):
                row = row.model_dump(mode="json", exclude_none=True)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class JsonlLine:
    """One line of a jsonl file: its 1-based number and either the parsed value or why it did not parse."""

    lineno: int
    text: str
    value: Any = None
    error: str | None = None


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[JsonlLine]:
    """Stream a jsonl file line by line in constant memory, never raising on bad lines.

    Blank lines are skipped. Bytes that are not UTF-8 and JSON syntax errors come back as ``error``.
    """
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield JsonlLine(lineno, raw.decode("utf-8", "replace"), error=f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            stripped = text.strip()
            if not stripped:
                continue
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                yield JsonlLine(lineno, stripped, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            except RecursionError:
                yield JsonlLine(lineno, stripped[:200], error="invalid JSON: nested too deeply")
                continue
            yield JsonlLine(lineno, stripped, value=value)
