"""Small file primitives every part of the toolkit shares: atomic writes, streamed jsonl, safe paths."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import itertools
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from schemas import path_text_problem  # the one path rule; converters import it from here too
from schemas.errors import UserError, json_error, utf8_error

_TEMP_COUNTER = itertools.count()


class UnsafePathError(UserError, ValueError):
    """A path taken from a data file points outside the root it must stay in."""


SYMLINK_RULE = (
    "paths written in data files stay inside their root (no absolute paths, drive letters, '..' or NUL bytes); "
    "symlinked folders are followed (that is how big datasets are mounted); a symlinked file is read only when "
    "it points inside the root or inside the folder that holds it"
)
"""The one path rule of the toolkit: converters, validate, preview and training all apply it through resolve_inside."""


def resolve_inside(root: Path, relative: str | os.PathLike[str]) -> Path:
    """Join ``relative`` onto ``root`` under :data:`SYMLINK_RULE`; raise UnsafePathError naming the broken rule.

    Folders on the way may be symlinks (a dataset's ``img/`` on another disk works); a file that is a symlink must
    point inside ``root`` or inside the folder holding it (the folder's real location).

    >>> resolve_inside(Path("/data"), "img/a.png")
    PosixPath('/data/img/a.png')
    """
    rel = os.fspath(relative)
    problem = path_text_problem(rel)
    if problem is not None:
        raise UnsafePathError(problem)
    candidate = Path(root, *[p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")])
    try:
        linked_file = candidate.is_symlink() and not candidate.is_dir()
    except OSError:  # a name too long and the like: the caller's open() reports it
        linked_file = False
    if linked_file:
        check_file_link(candidate, root, shown=rel)
    return candidate


OUTPUT_RULE = (
    "an output never equals, contains or lies inside an input (it would replace, delete or mix into what is read), "
    "and a name given for output files is a plain name that stays in its folder"
)
"""The one output rule of the toolkit: every command that writes applies it through :func:`check_output_apart` (and
:func:`check_output_name` for ``--name``) before it writes anything."""


class OutputOverlapError(UserError, ValueError):
    """An output path that breaks :data:`OUTPUT_RULE`: refused before anything is written, a usage error (exit 2)."""

    exit_code = 2


Inputs = Iterable[tuple[str, "str | os.PathLike[str]"]]


def check_output_apart(
    out: str | os.PathLike[str], inputs: Inputs, *, flag: str = "--out", may_hold: Inputs = ()
) -> None:
    """Refuse an output ``out`` that is, contains or lies inside one of ``inputs`` (``(what, path)`` pairs such as
    ``("the source", src)``); paths are compared after symlinks are resolved, files also by inode (a hard link).

    ``may_hold`` are inputs ``out`` may lie inside but neither be nor contain: a run directory, of which only
    ``final/`` is read, may hold ``RUN/eval``. A file input is "lain inside" only by being the same file.

    >>> check_output_apart("data/x/x_val.jsonl", [("the split file", "data/x/x_val.jsonl")])
    Traceback (most recent call last):
    ...
    phi3v_data.io.OutputOverlapError: --out data/x/x_val.jsonl is the split file data/x/x_val.jsonl; writing there would replace it: choose another path
    """  # noqa: E501
    real_out = Path(os.path.realpath(out))
    checks = [(what, path, False) for what, path in inputs] + [(what, path, True) for what, path in may_hold]
    for what, path, inside_allowed in checks:
        real = Path(os.path.realpath(path))
        if real == real_out or _same_file(out, path):
            why = "writing there would replace it: choose another path"
            relation = "is"
        elif real_out in real.parents:
            why = "writing there could replace or delete it: choose a path beside it"
            relation = "contains"
        elif not inside_allowed and real in real_out.parents and real.is_dir():
            why = "the output would mix into what is read: choose a path outside it"
            relation = "is inside"
        else:
            continue
        raise OutputOverlapError(f"{flag} {out} {relation} {what} {path}; {why}")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist (yet)
        return False


def check_output_name(flag: str, name: str) -> None:
    """Refuse a name that becomes part of output file names (``--name N`` → ``N_train.jsonl``) but is a path:
    ``../escaped`` would write outside the output folder, ``a/b`` into a folder nobody asked for.

    >>> check_output_name("--name", "../escaped")
    Traceback (most recent call last):
    ...
    phi3v_data.io.OutputOverlapError: --name '../escaped': a name, not a path ('../escaped' climbs out with '..'); give a plain name such as 'docvqa'
    """  # noqa: E501
    problem = path_text_problem(name)
    if problem is None and ("/" in name or "\\" in name):
        problem = f"{name!r} holds a path separator"
    if problem is None and name.startswith("."):
        problem = f"{name!r} starts with '.' (the files would be hidden)"
    if problem is not None:
        raise OutputOverlapError(f"{flag} {name!r}: a name, not a path ({problem}); give a plain name such as 'docvqa'")


def check_file_link(link: Path, root: Path, *, shown: str | None = None) -> None:
    """Refuse a symlinked file whose target lies outside ``root`` and outside the folder that holds the link."""
    target = os.path.realpath(link)
    for inside in (os.path.realpath(root), os.path.realpath(link.parent)):
        if target == inside or target.startswith(inside.rstrip(os.sep) + os.sep):
            return
    raise UnsafePathError(f"{shown or link} is a symlink to a file outside the dataset ({target}); not read")


def special_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is no regular file that can be read without blocking (a FIFO would wait forever for a writer;
    a socket or device is no data), or None: a regular file, a directory, or nothing there (the caller's own open
    reports those). Asks ``stat``, which never blocks."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"is {kind}, not a regular file; not read"


def is_readable_file(path: Path, root: Path) -> bool:
    """A regular file, or a symlinked file :func:`check_file_link` accepts (scans of a folder use this)."""
    if not path.is_file():
        return False
    if path.is_symlink():
        try:
            check_file_link(path, root)
        except UnsafePathError:
            return False
    return True


def walk_files(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """``os.walk`` that follows symlinked folders (each real folder once, so link loops end): (folder, file names).

    Hidden folders are skipped; names are sorted, so the walk order is deterministic.
    """
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(folder), sorted(files)


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


def dumps_utf8(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` whose result always encodes as UTF-8: readable text, but a lone surrogate (``"\\udcff"``, which
    no UTF-8 file can hold) makes the whole value fall back to ``\\u`` escapes, as valid JSON as the readable form."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, **kwargs)
    return text


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write pretty JSON."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(dumps_utf8(data, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Atomically write one JSON value per line (pydantic models are dumped without None fields). Returns the count."""
    count = 0
    with atomic_write(path, "w", encoding="utf-8") as handle:
        for row in rows:
            if hasattr(row, "model_dump"):
                row = row.model_dump(mode="json", exclude_none=True)
            try:  # TextIOWrapper encodes in write(): a failed write leaves nothing behind
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            except UnicodeEncodeError:  # a lone surrogate: the escaped form (see dumps_utf8)
                handle.write(json.dumps(row) + "\n")
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class JsonlLine:
    """One line of a jsonl file: its 1-based number and either the parsed value or why it did not parse."""

    lineno: int
    text: str
    value: Any = None
    error: str | None = None


def parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, why not): a syntax error, nesting too deep, an integer too long to read, or a lone
    surrogate escape (``"\udcff"``: not text, and it would break every UTF-8 file it is written to). Never raises."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer over Python's digit limit
        return None, json_error(exc)
    if has_lone_surrogate(text, value):
        return None, LONE_SURROGATE
    return value, None


LONE_SURROGATE = "invalid JSON text: a \\uD800-\\uDFFF escape that is not part of a surrogate pair"


def has_lone_surrogate(text: str, value: Any) -> bool:
    """True when ``value`` (parsed from ``text``) holds a lone surrogate; costs a regex search when it does not."""
    return bool(_SURROGATE_ESCAPE.search(text)) and _has_lone_surrogate(value)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:  # no recursion: the value may be deep
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return False


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[JsonlLine]:
    """Stream a jsonl file line by line in constant memory, never raising on bad lines.

    Blank lines are skipped. Bytes that are not UTF-8 and what :func:`parse_json` refuses come back as ``error``.
    """
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield JsonlLine(lineno, raw.decode("utf-8", "replace"), error=utf8_error(exc))
                continue
            stripped = text.strip()
            if not stripped:
                continue
            value, error = parse_json(text.rstrip("\r\n"))  # leading blanks kept: a column counts from the line start
            yield JsonlLine(lineno, stripped[:200] if error else stripped, value=value, error=error)


def iter_json_array(text: str, *, start: int = 0) -> Iterator[JsonlLine]:
    """The elements of the JSON array that begins at ``text[start]``, each parsed on its own: one element that is
    nested too deeply or holds a 5000-digit number is an ``error`` entry and the next ones still come back.
    ``lineno`` is the line the element starts on. Raises ValueError when the array itself is broken.

    For files loaded whole (DocVQA json) after a plain ``json.loads`` of the whole file failed.
    """
    return iter_json_array_stream(io.StringIO(text), skip=start)


ARRAY_CHUNK = 1 << 20
"""Characters read at a time by :func:`iter_json_array_stream` (an element longer than this is read in several)."""


def iter_json_array_stream(
    handle: IO[str], *, skip: int = 0, after: int = 0, chunk: int | None = None
) -> Iterator[JsonlLine]:
    """:func:`iter_json_array` over an open text file, in memory bounded by the longest element, not the file.

    Element boundaries are found by counting brackets outside strings (no value is built), then each element is
    parsed with :func:`parse_json`; ``skip`` characters are passed over first (their newlines still count), and
    so are the first ``after`` elements (found, not parsed nor given).
    """
    text, eof = "", False
    chunk = chunk or ARRAY_CHUNK

    def more() -> bool:
        nonlocal text, eof
        if eof:
            return False
        read = handle.read(chunk)
        eof = not read
        text += read
        return not eof

    while len(text) < skip and more():
        pass
    line = 1 + text.count("\n", 0, skip)  # the line of text[mark]
    text, i, mark = text[skip:], 0, 0
    i = _skip_ws(text, i, more)
    if text[i : i + 1] != "[":
        raise ValueError("expected a JSON array")
    i, index = i + 1, 0
    while True:
        i = _skip_ws(text, i, more)
        line += text.count("\n", mark, i)
        mark = i
        if i > chunk:  # drop what is read: memory stays one chunk plus the current element
            text, i, mark = text[i:], 0, 0
        if text[i : i + 1] == "]":
            return
        while True:
            try:
                end = _value_end(text, i)
            except ValueError:
                if more():
                    continue
                raise
            if end < len(text) or not more():  # a bare token (number, true) may go on in the next chunk
                break
        if index >= after:
            value, error = parse_json(text[i:end])
            yield JsonlLine(line, text[i:end][:200], value=value, error=error)
        index += 1
        i = _skip_ws(text, end, more)
        if text[i : i + 1] == ",":
            i += 1
        elif text[i : i + 1] != "]":
            raise ValueError(f"expected ',' or ']' at line {line + text.count(chr(10), mark, i)}")


def _skip_ws(text: str, i: int, more: Callable[[], bool]) -> int:
    """Index of the first non-blank character at or after ``i``, reading more text while only blanks are left."""
    i = _WS.match(text, i).end()
    while i == len(text) and more():
        i = _WS.match(text, i).end()
    return i


@dataclass(frozen=True, slots=True)
class ArrayElement:
    """One element of a JSON array file: its position (``line`` only where it is known), its value or why not."""

    index: int
    line: int | None
    value: Any = None
    error: str | None = None


def stream_json_array(path: str | os.PathLike[str]) -> Iterator[ArrayElement]:
    """The elements of the top-level JSON array in ``path``, streamed in flat memory (LLaVA/ShareGPT files of
    millions of rows). Raises ValueError when the file is not one JSON array, UnicodeDecodeError when not UTF-8.

    ijson's C parser reads the file; at the first element it refuses (an integer beyond 64 bits, a lone surrogate,
    NaN, nesting deeper than it goes) or that is not an object (rows are; a list 50,000 deep is one json.loads
    refuses), the file is read again from the start by :func:`iter_json_array_stream`, which skips
    the elements already given and parses every later one on its own, so that one element fails (with its line)
    and the rest still come back, exactly as ``json.loads`` would read them.
    """
    import ijson  # noqa: PLC0415 - only the array readers need it

    given = 0
    with open(path, "rb") as handle:
        if handle.read(3) != b"\xef\xbb\xbf":  # a UTF-8 byte-order mark, as some editors write
            handle.seek(0)
        try:
            for value in ijson.items(handle, "item", use_float=True):
                if not isinstance(value, dict):  # a row that is no object: maybe nested too deeply for json.loads
                    break
                yield ArrayElement(given, None, value)
                given += 1
            else:
                return
        except (ijson.JSONError, UnicodeDecodeError, ValueError, MemoryError):  # MemoryError: yajl's depth limit
            pass
    with open(path, encoding="utf-8-sig") as text:
        for index, entry in enumerate(iter_json_array_stream(text, after=given), start=given):
            yield ArrayElement(index, entry.lineno, entry.value, entry.error)


def json_object_members(text: str) -> dict[str, tuple[int, int]]:
    """Top-level members of the JSON object in ``text`` as key → (start, end) of the value text, without parsing
    the values (so a broken value can be read element by element with :func:`iter_json_array`)."""
    i = _WS.match(text).end()
    if text[i : i + 1] != "{":
        raise ValueError("expected a JSON object")
    members: dict[str, tuple[int, int]] = {}
    i += 1
    while True:
        i = _WS.match(text, i).end()
        if text[i : i + 1] == "}":
            return members
        key_end = _value_end(text, i)
        key = json.loads(text[i:key_end])
        i = _WS.match(text, key_end).end()
        if text[i : i + 1] != ":" or not isinstance(key, str):
            raise ValueError("expected a string key and ':'")
        i = _WS.match(text, i + 1).end()
        end = _value_end(text, i)
        members[key] = (i, end)
        i = _WS.match(text, end).end()
        if text[i : i + 1] == ",":
            i += 1
        elif text[i : i + 1] != "}":
            raise ValueError("expected ',' or '}'")


_WS = re.compile(r"[ \t\r\n]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|[^\s,:\[\]{}"]+|[,:]', re.S)


def _value_end(text: str, i: int) -> int:
    """Where the JSON value starting at ``text[i]`` ends: brackets counted outside strings, iteratively."""
    depth = 0
    while True:
        i = _WS.match(text, i).end()
        match = _TOKEN.match(text, i)
        if match is None:
            raise ValueError(f"unterminated JSON value at line {text.count(chr(10), 0, i) + 1}")
        token, i = match.group(), match.end()
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        if depth == 0 and token not in (",", ":"):
            return i


class OutputLockedError(UserError, RuntimeError):
    """Another process holds the lock on an output folder."""


class OutputLock:
    """An exclusive lock on the folder ``out`` while a command writes into it (``flock`` on ``out/<name>``, a file
    that holds the holder's PID). Conversion and training both take one, each under its own file name.

    The kernel drops the lock when its holder dies, so a crashed run never leaves a lock behind that blocks the
    next one; the file itself may stay and is simply taken over. Without ``fcntl`` (Windows) there is no lock.
    ``error`` is the exception raised when the folder is taken, so each command keeps its own exit status.
    """

    def __init__(self, out: str | os.PathLike[str], *, name: str, what: str,
                 error: type[Exception] = OutputLockedError) -> None:
        self.path = Path(out) / name
        self.what = what
        self.error = error
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise self.error(
                f"another {self.what} (PID {holder}) is writing to {self.path.parent}; wait for it to end or choose "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
