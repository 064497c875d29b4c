"""Every record's sequence length, measured once per (data, tokenizer, num_crops) and kept in a compact cache.

Measuring a record means counting its text's tokens (:mod:`phi3v_train.token_count`, exact and several times
cheaper than tokenizing) and reading each image's header (for the image-token count; each
worker remembers the sizes of the last 65,536 images it read, as rows share images); at a
million records that is the whole of a run's start-up, so it is done once, in a process pool, and the result is
kept as numpy arrays — byte offset, byte count and line of each usable record in its jsonl file, its length and
its images' (width, height) — in ``<data>/.phi3v-cache/lengths-<split>-<key>.npz`` (the run directory's when the
dataset's folder is read-only). A later run, a resume and every other rank read that file instead of measuring.

The file name's key is the tokenizer's content digest and ``num_crops``; inside, each jsonl file is recorded by
name, size, modification time and a blake2b content digest. A file whose size and mtime are unchanged is trusted
without reading it (the fast path); one whose mtime moved is re-read and trusted if its digest still matches, so
touching a file costs a hash, editing it costs a re-measure. Images are not part of the key (a million stats): an
image replaced after measuring is caught by the collator, which stands in for a sample whose length changed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from phi3v_data.images import ImageProblem, check_image
from phi3v_data.io import UnsafePathError, atomic_write, parse_json, resolve_inside
from phi3v_data.prompt import DEFAULT_FORMAT, PromptFormat, encode_record
from phi3v_data.tokens import elongation_problem, num_image_tokens
from phi3v_data.workers import running, start_worker
from phi3v_train.token_count import TokenCounter
from schemas import Record

Encode = Callable[[str], list[int]]

CACHE_VERSION = 2
"""Bump when what a length means changes (the prompt format of :func:`phi3v_data.prompt.encode_record`; 2: image
sizes are the upright, EXIF-oriented ones and data text never becomes a control token)."""
CACHE_DIR = ".phi3v-cache"
RANGE_BYTES = 4 << 20
"""Bytes of jsonl one pool task measures (a few thousand records: enough to amortise the task, small for the ETA)."""
POOL_MIN_BYTES = 1 << 20
"""Below this much jsonl the records are measured in-process: a pool costs more than it saves."""
MAX_PROBLEMS = 5

USABLE_FIELDS = ("file", "offset", "nbytes", "line", "length", "size_start", "sizes")


def image_sizes(
    record: Record, *, images_root: Path, num_crops: int, header: Callable[[str], tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """(width, height) of each image of ``record``, header-read (no pixel decoding; ``header`` reads one, cached).

    Raises ImageProblem or UnsafePathError for an image that cannot be used, including one so elongated that the HD
    transform would resize its short side to 0 pixels at ``num_crops`` (the official processor fails on it too).
    """
    sizes = []
    for rel in record.images:
        width, height = header(rel) if header else check_image(resolve_inside(images_root, rel))
        if problem := elongation_problem(width, height, num_crops):
            raise ImageProblem("image_aspect", f"{rel}: {problem}; crop or pad the image, or drop the record")
        sizes.append((width, height))
    return sizes


def sample_length(
    record: Record, *, encode: Encode, bos_id: int | None, image_tokens: Sequence[int],
    fmt: PromptFormat = DEFAULT_FORMAT,
) -> int:
    """Sequence length of ``record`` as the collator will build it."""
    return len(encode_record(record, encode=encode, image_tokens=image_tokens, bos_id=bos_id, fmt=fmt))


@dataclass
class Measured:
    """The usable records of a split's files as arrays (one entry per record), and what was left out.

    ``sizes[size_start[i]:size_start[i + 1]]`` are record i's images; ``line`` is 1-based, for messages.
    """

    files: list[Path]
    file: np.ndarray  # int32: index into files
    offset: np.ndarray  # int64: byte offset of the record's line
    nbytes: np.ndarray  # int32: bytes of the line (without its newline)
    line: np.ndarray  # int32
    length: np.ndarray  # int32: sequence length the model sees
    size_start: np.ndarray  # int64, one more entry than records
    sizes: np.ndarray  # int32 (images, 2): width, height
    unlabeled: int = 0
    unusable: int = 0
    problems: list[str] = field(default_factory=list)  # first few unusable records, "file:line: why"
    measured: bool = True  # False when read from the cache
    path: Path | None = None  # the cache file it was read from or written to

    def __len__(self) -> int:
        return len(self.length)


# -- measuring -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What a pool worker needs besides the byte range: given once, at fork or unpickling."""

    encode: Encode
    bos_id: int | None
    num_crops: int
    images_root: Path
    fmt: PromptFormat = DEFAULT_FORMAT  # image-tag layout and turns: they change the length
    header: Callable[[str], tuple[int, int]] | None = None  # set in the worker: header sizes, cached per path
    counts: dict[str, int] | None = None  # set in the worker: tokens of each text seen (prompts repeat a lot)
    count: Callable[[str], int] | None = None  # the fast, exact token counter, where the tokenizer has one


_JOB: _Job | None = None
TEXT_CACHE = 200_000
"""Texts whose token counts a worker remembers (emptied when full)."""


def _init(job: _Job) -> None:
    global _JOB
    header = functools.lru_cache(maxsize=65536)(lambda rel: check_image(resolve_inside(job.images_root, rel)))
    _JOB = dataclasses.replace(job, header=header, counts={})


def _init_worker(job: _Job, parent: int) -> None:
    start_worker(parent)
    _init(job)


def _parse(raw: bytes) -> Record | str | None:
    """The record on a line, why there is none, or None for a blank line.

    pydantic-core parses and validates the bytes in one call (the validator's fast path); a line it refuses is
    read again slowly for the message, and so is one with a surrogate escape (lone ones are refused as the validator
    refuses them).
    """
    if not _SURROGATE_ESCAPE.search(raw):
        try:
            return Record.model_validate_json(raw)
        except ValidationError:
            pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if not text.strip():
        return None
    value, error = parse_json(text.strip())
    if error is not None:
        return error.splitlines()[0]
    try:
        return Record.model_validate(value)
    except ValidationError as exc:
        return str(exc).splitlines()[0]


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _prepare(record: Record, job: _Job) -> tuple[str, list[tuple[int, int]], str]:
    """("ok", image sizes, "") or ("unlabeled" | "unusable", [], why)."""
    if not record.labeled:
        return "unlabeled", [], ""
    try:
        return "ok", image_sizes(record, images_root=job.images_root, num_crops=job.num_crops, header=job.header), ""
    except (ValueError, ImageProblem, UnsafePathError) as exc:
        return "unusable", [], str(exc).splitlines()[0]


def _lengths(records: list[tuple[Record, list[int]]], job: _Job) -> list[int | str]:
    """Each record's length (or why it has none).

    A length is the ids :func:`encode_record` places itself (BOS, image tokens) plus the ids of each text it asks
    ``encode`` for, so one pass with an ``encode`` that only counts gives it exactly. The counts come from the
    job's :class:`~phi3v_train.token_count.TokenCounter` (spot-checked against the tokenizer), else from the
    tokenizer, all of a chunk's new texts in one batch call.
    """
    count = _spot_checked(job.count, job.encode) if job.count is not None else _batch_counts(records, job)
    total = 0

    def counting(text: str) -> list[int]:
        nonlocal total
        total += count(text)
        return []

    out: list[int | str] = []
    for record, tokens in records:
        total = 0
        try:
            placed = encode_record(record, encode=counting, image_tokens=tokens, bos_id=job.bos_id, fmt=job.fmt)
        except ValueError as exc:  # a tag naming an image the record does not have
            out.append(str(exc).splitlines()[0])
            continue
        out.append(len(placed) + total)
    return out


class CountMismatch(RuntimeError):
    """The fast token counter disagreed with the tokenizer on a text: measure again with the tokenizer itself."""


SPOT_CHECK = 61
"""One text in this many that the fast counter counts is also tokenized, and a difference stops the fast path."""


def _spot_checked(count: Callable[[str], int], encode: Encode) -> Callable[[str], int]:
    calls = 0

    def checked(text: str) -> int:
        nonlocal calls
        calls += 1
        found = count(text)
        if calls % SPOT_CHECK == 1 and found != len(encode(text)):
            raise CountMismatch(f"{text!r}: counted {found} tokens, the tokenizer gives {len(encode(text))}")
        return found

    return checked


def _batch_counts(records: list[tuple[Record, list[int]]], job: _Job) -> Callable[[str], int]:
    """Token counts of the records' texts, the new ones tokenized in one batch call where the encoder has one."""
    counts = job.counts if job.counts is not None else {}
    wanted: dict[str, None] = {}

    def collect(text: str) -> list[int]:
        if text not in counts:
            wanted[text] = None
        return []

    for record, tokens in records:
        try:
            encode_record(record, encode=collect, image_tokens=tokens, bos_id=job.bos_id, fmt=job.fmt)
        except ValueError:
            pass  # reported by the caller's pass
    if len(counts) + len(wanted) > TEXT_CACHE:
        counts.clear()
    texts = list(wanted)
    batch = getattr(job.encode, "batch", None)
    for text, ids in zip(texts, batch(texts) if batch else map(job.encode, texts)):
        counts[text] = len(ids)
    return lambda text: counts[text] if text in counts else len(job.encode(text))


def _measure_range(path: str, start: int, end: int) -> dict[str, Any]:
    """Measure the records whose lines start in ``[start, end)`` of ``path`` (both on line starts).

    Lines are numbered from 1 within the range; ``newlines`` lets the caller make them absolute.
    """
    job = _JOB
    assert job is not None, "_init first"
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    usable: list[tuple[int, int, int, Record, list[tuple[int, int]]]] = []  # offset, bytes, line, record, sizes
    unlabeled, unusable, problems = 0, 0, []
    position, lineno = 0, 0
    while position < len(data):
        cut = data.find(b"\n", position)
        cut = len(data) if cut < 0 else cut
        raw, here = data[position:cut], start + position
        position, lineno = cut + 1, lineno + 1
        if here == 0 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark (iter_jsonl drops it too)
            raw, here = raw[3:], 3
        record = _parse(raw)
        if record is None:
            continue
        status, record_sizes, why = ("unusable", [], record) if isinstance(record, str) else _prepare(record, job)
        if status == "unlabeled":
            unlabeled += 1
        elif status == "unusable":
            unusable += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append((lineno, why))
        else:
            usable.append((here, len(raw), lineno, record, record_sizes))
    measured = _lengths([(record, [num_image_tokens(w, h, job.num_crops) for w, h in sizes])
                         for _, _, _, record, sizes in usable], job)
    offsets, nbytes, lines, lengths, counts, sizes_out = [], [], [], [], [], []
    for (here, size, line, _, record_sizes), length in zip(usable, measured):
        if isinstance(length, str):  # a tag naming an image the record does not have
            unusable += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append((line, length))
            continue
        offsets.append(here)
        nbytes.append(size)
        lines.append(line)
        lengths.append(length)
        counts.append(len(record_sizes))
        sizes_out += record_sizes
    problems.sort()
    return {"offset": offsets, "nbytes": nbytes, "line": lines, "length": lengths, "counts": counts,
            "sizes": sizes_out, "unlabeled": unlabeled, "unusable": unusable, "problems": problems[:MAX_PROBLEMS],
            "newlines": data.count(b"\n"), "bytes": end - start}


def _ranges(path: Path, size: int, step: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``step`` bytes covering ``path``, each starting on a line start."""
    cuts = [0]
    with open(path, "rb") as handle:
        while cuts[-1] + step < size:
            handle.seek(cuts[-1] + step)
            handle.readline()
            if handle.tell() >= size:
                break
            cuts.append(handle.tell())
    return list(zip(cuts, [*cuts[1:], size]))


def measure(
    files: Sequence[Path], *, images_root: Path, encode: Encode, bos_id: int | None, num_crops: int,
    workers: int | None = None, console: Console | None = None, fmt: PromptFormat = DEFAULT_FORMAT,
) -> Measured:
    """Measure every record of ``files`` (a pool of ``workers`` processes for more than a few MB), with a progress
    bar of records/s and ETA on ``console``.

    Tokens are counted by a :class:`~phi3v_train.token_count.TokenCounter` where ``encode`` is a tokenizer's
    (``encode.tokenizer``) it can count for; should a spot check ever find it off, everything is measured again
    with ``encode`` itself.
    """
    counter = TokenCounter.of(encode.tokenizer) if hasattr(encode, "tokenizer") else None
    job = _Job(encode, bos_id, num_crops, images_root, fmt, count=counter)
    try:
        return _measure(files, job, workers=workers, console=console)
    except CountMismatch as exc:
        if counter is None:
            raise
        (console or Console(stderr=True)).print(f"[yellow]warning[/]: the fast token count is off ({exc}); "
                                                "measuring again with the tokenizer", highlight=False)
        return _measure(files, dataclasses.replace(job, count=None), workers=workers, console=console)


def _measure(files: Sequence[Path], job: _Job, *, workers: int | None, console: Console | None) -> Measured:
    """:func:`measure` with the job made."""
    sizes = [path.stat().st_size for path in files]
    tasks = [(index, start, end) for index, path in enumerate(files)
             for start, end in _ranges(path, sizes[index], RANGE_BYTES)]
    workers = max(1, workers or available_cpus())
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    console = console or Console(stderr=True, quiet=True)
    columns = (TextColumn("measuring lengths"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("measure", total=sum(sizes), rate="")
        began, done_records = time.perf_counter(), 0

        def record(index: int, result: dict[str, Any]) -> None:
            nonlocal done_records
            results[index] = result
            done_records += len(result["length"]) + result["unlabeled"] + result["unusable"]
            rate = done_records / max(time.perf_counter() - began, 1e-9)
            progress.update(bar, advance=result["bytes"], rate=f"{done_records:,} records, {rate:,.0f}/s")

        if workers == 1 or sum(sizes) < POOL_MIN_BYTES:
            previous = _JOB
            _init(job)
            try:
                for index, (file_index, start, end) in enumerate(tasks):
                    record(index, _measure_range(str(files[file_index]), start, end))
            finally:
                globals()["_JOB"] = previous
        else:
            _measure_in_pool(files, tasks, job, workers, record)
    return _merge(files, tasks, results)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _measure_in_pool(files: Sequence[Path], tasks: list[tuple[int, int, int]], job: _Job, workers: int,
                     record: Callable[[int, dict[str, Any]], None]) -> None:
    # fork: the workers inherit the tokenizer instead of unpickling it (and torch is not imported again)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked children would warn and turn it off anyway
    with running(ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                     initargs=(job, os.getpid()))) as pool:
        pending: dict[Future, int] = {}
        queue = list(enumerate(tasks))[::-1]
        while queue or pending:
            while queue and len(pending) < workers * 2:  # a bounded number in flight: results arrive in any order
                index, (file_index, start, end) = queue.pop()
                pending[pool.submit(_measure_range, str(files[file_index]), start, end)] = index
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record(pending.pop(future), future.result())


def _merge(files: Sequence[Path], tasks: list[tuple[int, int, int]], results: list[dict[str, Any] | None]) -> Measured:
    """The ranges' results in file order, with absolute line numbers."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("file", "offset", "nbytes", "line", "length", "counts")}
    sizes: list[np.ndarray] = []
    unlabeled = unusable = 0
    problems: list[str] = []
    lines_before = 0
    for (file_index, start, _), result in zip(tasks, results):
        assert result is not None
        if start == 0:
            lines_before = 0
        count = len(result["length"])
        parts["file"].append(np.full(count, file_index, dtype=np.int32))
        parts["offset"].append(np.asarray(result["offset"], dtype=np.int64))
        parts["nbytes"].append(np.asarray(result["nbytes"], dtype=np.int32))
        parts["line"].append(np.asarray(result["line"], dtype=np.int32) + lines_before)
        parts["length"].append(np.asarray(result["length"], dtype=np.int32))
        parts["counts"].append(np.asarray(result["counts"], dtype=np.int64))
        sizes.append(np.asarray(result["sizes"], dtype=np.int32).reshape(-1, 2))
        unlabeled += result["unlabeled"]
        unusable += result["unusable"]
        problems += [f"{files[file_index]}:{lines_before + line}: {why}" for line, why in result["problems"]]
        lines_before += result["newlines"]
    joined = {name: np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64) for name, arrays in parts.items()}
    size_start = np.zeros(len(joined["length"]) + 1, dtype=np.int64)
    np.cumsum(joined.pop("counts"), out=size_start[1:])
    return Measured(files=list(files), size_start=size_start,
                    sizes=np.concatenate(sizes) if sizes else np.zeros((0, 2), dtype=np.int32),
                    unlabeled=unlabeled, unusable=unusable, problems=problems[:MAX_PROBLEMS], **joined)


# -- the cache -------------------------------------------------------------------------------------------------------


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of everything that decides token ids: the fast tokenizer's full JSON (vocabulary, merges, added and
    special tokens, normaliser), or its vocabulary where there is no such JSON."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def content_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LengthCache:
    """Where a split's lengths are kept and what they depend on (besides the files themselves).

    ``identity`` names the tokenizer and anything else lengths depend on (:func:`tokenizer_digest`); ``dirs`` are
    looked in in order (the dataset's folder, then the run's) and the first writable one is written.
    """

    identity: str
    dirs: tuple[Path, ...]

    def name(self, split: str, num_crops: int, bos_id: int | None) -> str:
        key = json.dumps([CACHE_VERSION, self.identity, num_crops, bos_id])
        return f"lengths-{split}-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.npz"

    def load(self, files: Sequence[Path], *, split: str, num_crops: int, bos_id: int | None) -> Measured | None:
        """The cached lengths of ``files`` when some directory holds them for the files as they are now."""
        for folder in self.dirs:
            path = folder / CACHE_DIR / self.name(split, num_crops, bos_id)
            found = _read(path, files)
            if found is not None:
                found.path = path
                return found
        return None

    def save(self, measured: Measured, *, split: str, num_crops: int, bos_id: int | None) -> Path | None:
        """Write the cache (atomically) into the first directory that takes it; None when none does."""
        meta = {"version": CACHE_VERSION, "files": file_states(measured.files), "unlabeled": measured.unlabeled,
                "unusable": measured.unusable, "problems": measured.problems}
        for folder in self.dirs:
            target = folder / CACHE_DIR / self.name(split, num_crops, bos_id)
            try:
                with atomic_write(target, "wb") as handle:
                    np.savez(handle, meta=np.array(json.dumps(meta)),
                             **{f"r_{name}": getattr(measured, name) for name in USABLE_FIELDS})
            except OSError:
                continue
            measured.path = target
            return target
        return None


def file_states(files: Sequence[Path]) -> list[dict[str, Any]]:
    """What a cache records of each file: name, size, modification time and content digest."""
    return [_file_state(path) | {"digest": content_digest(path)} for path in files]


def unchanged(recorded: Sequence[dict[str, Any]], files: Sequence[Path]) -> bool:
    """``files`` are still what :func:`file_states` recorded: same name and size, and the same mtime or, when the
    mtime moved, the same content digest."""
    if len(recorded) != len(files):
        return False
    for before, path in zip(recorded, files):
        now = _file_state(path)
        if before["name"] != now["name"] or before["size"] != now["size"]:
            return False
        if before["mtime_ns"] != now["mtime_ns"] and before["digest"] != content_digest(path):
            return False
    return True


def _file_state(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read(path: Path, files: Sequence[Path]) -> Measured | None:
    """The cache at ``path`` if it is for ``files`` as they are; None when absent, stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta.get("version") != CACHE_VERSION or not unchanged(meta["files"], files):
                return None
            arrays = {name: saved[f"r_{name}"] for name in USABLE_FIELDS}
    except (OSError, ValueError, KeyError, TypeError):  # absent, torn or from another version: measure again
        return None
    return Measured(files=list(files), unlabeled=meta["unlabeled"], unusable=meta["unusable"],
                    problems=meta["problems"], measured=False, **arrays)
