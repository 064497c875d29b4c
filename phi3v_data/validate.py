"""Pre-flight check of a dataset ``.jsonl`` before GPU time is spent: every problem, with line, id and field.

Library API (``phi3v-data validate``, the trainer's pre-flight and ``phi3v-data preview`` use it)::

    from phi3v_data.validate import LengthSpec, iter_valid_records, validate_file
    report = validate_file("data/ucf101_train.jsonl")       # images dir: <dir of the jsonl>/images
    report.valid, report.stats, report.findings             # see phi3v_data.report
    report.findings_by_line[12]                             # [Finding(code, line, id, field, message, file), ...]
    validate_file(path, images_dir=Path("imgs"), image_check="deep",
                  lengths=LengthSpec(num_crops=16, max_length=4096, processor=Path("ckpt")),
                  output=Path("clean.jsonl"), workers=2)   # output: only the records without findings, atomically
    for line, record in iter_valid_records(path): ...      # the records without findings, streamed

The file is streamed: memory holds the ids seen (duplicate detection), one listing per recently used image directory
and a bounded cache of image sizes — never the records. ``image_check`` picks how images are checked: ``"exists"``
(each directory listed once, names looked up, no file opened: the fast path), ``"header"`` (default: also read each
distinct image's header once — format and size; decompression bombs refused) or ``"deep"`` (decode every pixel,
catches truncated files). Finding codes and their meaning: :data:`phi3v_data.report.CODES`.
A record is valid when it has no finding; unlabeled records (every assistant null) are counted, not flagged.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from phi3v_data.image_index import ImageCheck, ImageChecker
from phi3v_data.images import ImageProblem
from phi3v_data.record_checks import (LengthSpec, LengthSpecError, Problem, content_problems, length_problem,
                                      schema_problems)
from phi3v_data.io import atomic_write
from phi3v_data.report import Finding, Stats, ValidationReport, bounded_add
from schemas import BINARY_ANSWERS, Record

__all__ = ["ImageCheck", "LengthSpec", "LengthSpecError", "iter_valid_records", "validate_file", "validate_files"]

CHUNK_LINES = 2000  # lines per unit of work sent to a worker process
MAX_FINDINGS = 1_000_000  # findings kept in memory per file; per-code counts always cover all of them


class Checked(NamedTuple):
    """What one non-blank line holds: its problems and, for a schema-valid record, what the statistics count."""

    line: int
    id: str | None
    problems: list[Problem]
    source: str | None = None
    task: str | None = None  # None: the line is not a schema-valid record
    n_images: int = 0
    labels: tuple[str, ...] = ()
    labeled: bool = True
    length: int | None = None


@dataclass(frozen=True)
class CheckConfig:
    """Everything a (possibly separate worker) process needs to check lines; picklable."""

    images_dir: Path
    image_check: ImageCheck = "header"
    lengths: LengthSpec | None = None


class RecordChecker:
    """Checks one line at a time; keeps only the image-directory caches between lines."""

    def __init__(self, config: CheckConfig) -> None:
        self.config = config
        self.images = ImageChecker(config.images_dir, config.image_check)

    def check(self, line: int, raw: bytes) -> Checked:
        """Never raises: a bug in a check becomes an ``internal_error`` finding instead of ending the run."""
        try:
            return self._check(line, raw)
        except Exception as exc:  # noqa: BLE001 - the promise is "never a traceback for any input"
            return Checked(line, None, [("internal_error", "", f"{type(exc).__name__}: {exc}")])

    def _check(self, line: int, raw: bytes) -> Checked:
        record, problems, record_id = parse_record(raw)
        if record is None:
            return Checked(line, record_id, problems)
        problems = content_problems(record)
        sizes = self._image_problems(record, problems)
        length = None
        if self.config.lengths is not None and not problems and sizes is not None:
            length, problem = length_problem(record, sizes, self.config.lengths)
            problems += [problem] if problem else []
        return Checked(line, record.id, problems, record.source, record.task, len(record.images),
                       _labels(record), record.labeled, length)

    def _image_problems(self, record: Record, problems: list[Problem]) -> list[tuple[int, int]] | None:
        """Append each image's problem; return the sizes when every image has one (header modes, no problem)."""
        sizes: list[tuple[int, int]] = []
        for t, turn in enumerate(record.conversations):
            for j, path in enumerate(turn.images):
                result = self.images.check(path)
                if isinstance(result, ImageProblem):
                    problems.append((result.code, f"conversations[{t}].images[{j}]", str(result)))
                elif result is not None:
                    sizes.append(result)
        return sizes if len(sizes) == len(record.images) else None


def parse_record(raw: bytes) -> tuple[Record | None, list[Problem], str | None]:
    """(record or None, problems, id when one can be read). The fast path parses and validates in one call."""
    try:
        record = Record.model_validate_json(raw)
        return record, [], record.id
    except ValidationError:
        pass  # redo it slowly below to say exactly what is wrong
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [("not_utf8", "", f"not valid UTF-8 at byte {exc.start} ({exc.reason}); save the file as UTF-8")], None
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        message = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return None, [("invalid_json", "", f"invalid JSON: {message}")], None
    except RecursionError:
        return None, [("invalid_json", "", "invalid JSON: nested too deeply")], None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        return None, [("schema", "", f"a record must be a JSON object, got {kind}")], None
    record_id = value.get("id") if isinstance(value.get("id"), str) and value.get("id") else None
    try:
        record = Record.model_validate(value)
    except ValidationError as exc:
        return None, schema_problems(exc, value), record_id
    return record, [], record.id


def _labels(record: Record) -> tuple[str, ...]:
    """What the label distribution counts: the answers of classification turns, the labels of binary turns."""
    if record.task == "classification":
        return tuple(t.assistant.strip() for t in record.conversations if t.assistant is not None)
    if record.task == "binary":
        return tuple(BINARY_ANSWERS[t.reference.label] if t.reference and t.reference.label is not None
                     else t.assistant for t in record.conversations if t.assistant is not None)
    return ()


def _chunks(path: Path, progress: Callable[[int], None] | None) -> Iterator[list[tuple[int, bytes]]]:
    """Non-blank lines in chunks of (line number, bytes without the newline); reports bytes read to ``progress``."""
    chunk: list[tuple[int, bytes]] = []
    read = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            read += len(raw)
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
                raw = raw[3:]
            if raw.strip():
                chunk.append((number, raw))
            if len(chunk) >= CHUNK_LINES:
                yield chunk
                chunk = []
                if progress:
                    progress(read)
                    read = 0
    if chunk:
        yield chunk
    if progress and read:
        progress(read)


_WORKER: RecordChecker | None = None


def _start_worker(config: CheckConfig) -> None:
    global _WORKER  # noqa: PLW0603 - one checker per worker process, with its own directory caches
    _WORKER = RecordChecker(config)


def _check_chunk(chunk: list[tuple[int, bytes]]) -> list[Checked]:
    assert _WORKER is not None
    return [_WORKER.check(line, raw) for line, raw in chunk]


def _checked_lines(path: Path, config: CheckConfig, *, workers: int,
                   progress: Callable[[int], None] | None) -> Iterator[tuple[bytes, Checked]]:
    """(raw line, result) in file order; with ``workers > 1`` chunks are checked in parallel, a few in flight at once."""
    if workers <= 1:
        checker = RecordChecker(config)
        for chunk in _chunks(path, progress):
            for line, raw in chunk:
                yield raw, checker.check(line, raw)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, _start_worker, (config,)) as pool:
        pending: deque = deque()
        for chunk in _chunks(path, progress):
            pending.append((chunk, pool.apply_async(_check_chunk, (chunk,))))
            while len(pending) > 2 * workers:  # bounded read-ahead keeps memory constant
                yield from _ready(*pending.popleft())
        while pending:
            yield from _ready(*pending.popleft())


def _ready(chunk: list[tuple[int, bytes]], result: multiprocessing.pool.AsyncResult) -> Iterator[tuple[bytes, Checked]]:
    for (_, raw), checked in zip(chunk, result.get()):
        yield raw, checked


class _Collector:
    """Turns checked lines into a report: duplicate ids, counts, kept findings and the clean output."""

    def __init__(self, path: Path, lengths: LengthSpec | None, max_findings: int) -> None:
        self.report = ValidationReport(files=[path])
        self.report.stats.max_length = lengths.max_length if lengths else None
        self.file, self.max_findings = str(path), max_findings
        self.first_line: dict[str, int] = {}

    def add(self, checked: Checked) -> bool:
        """Count one line; True when the record is valid."""
        problems = checked.problems
        if checked.id is not None:
            first = self.first_line.setdefault(checked.id, checked.line)
            if first != checked.line:
                problems = [*problems, ("duplicate_id", "id", f"id {checked.id!r} was already used on line {first}")]
        stats = self.report.stats
        stats.records += 1
        if checked.task is not None:
            self._count(stats, checked)
        if not problems:
            stats.ok += 1
            return True
        stats.with_problems += 1
        for code in {code for code, _, _ in problems}:
            stats.records_by_code[code] += 1
        for code, field, message in problems:
            self.finding(Finding(code, checked.line, checked.id, field, message, self.file))
        return False

    def finding(self, finding: Finding) -> None:
        self.report.stats.findings_by_code[finding.code] += 1
        if len(self.report.findings) < self.max_findings:
            self.report.findings.append(finding)
        else:
            self.report.findings_not_kept += 1

    @staticmethod
    def _count(stats: Stats, checked: Checked) -> None:
        bounded_add(stats.sources, checked.source or "(none)")
        stats.tasks[checked.task] += 1
        stats.images_per_record[checked.n_images] += 1
        stats.unlabeled += not checked.labeled
        for label in checked.labels:
            stats.add_label(checked.task, label)
        if checked.length is not None:
            stats.lengths[checked.length] += 1

    def finish(self) -> ValidationReport:
        if self.report.stats.records == 0:
            self.finding(Finding("no_records", 0, None, "", "the file contains no records", self.file))
        return self.report


def default_images_dir(path: Path) -> Path:
    """Where a dataset's images live unless told otherwise: ``images/`` beside the jsonl."""
    return Path(path).parent / "images"


def validate_file(
    path: str | os.PathLike[str],
    *,
    images_dir: Path | None = None,
    image_check: ImageCheck = "header",
    lengths: LengthSpec | None = None,
    output: Path | None = None,
    workers: int = 1,
    max_findings: int = MAX_FINDINGS,
    progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Check every line of one jsonl file; with ``output``, atomically write the valid lines there unchanged.

    ``progress`` is called with the number of bytes read since its last call. Raises ``OSError`` when the file
    cannot be read and :class:`LengthSpecError` when ``lengths`` names an unusable tokenizer.
    """
    path = Path(path)
    if lengths is not None:
        lengths.text_encoder()  # fail before the run, not on every line
    config = CheckConfig(Path(images_dir) if images_dir is not None else default_images_dir(path), image_check, lengths)
    collector = _Collector(path, lengths, max_findings)
    lines = _checked_lines(path, config, workers=workers, progress=progress)
    if output is None:
        for _, checked in lines:
            collector.add(checked)
        return collector.finish()
    with atomic_write(output, "wb") as handle:
        for raw, checked in lines:
            if collector.add(checked):
                handle.write(raw + b"\n")
                collector.report.written += 1
    collector.report.output = Path(output)
    return collector.finish()


def validate_files(paths: list[Path], **options) -> ValidationReport:
    """:func:`validate_file` on each file (ids must be unique within a file), combined into one report."""
    return ValidationReport.combine([validate_file(path, **options) for path in paths])


def iter_valid_records(
    path: str | os.PathLike[str], *, images_dir: Path | None = None, image_check: ImageCheck = "header",
    lengths: LengthSpec | None = None,
) -> Iterator[tuple[int, Record]]:
    """(line, record) for each record without findings, streamed (a record whose id repeats an earlier one is skipped)."""
    path = Path(path)
    config = CheckConfig(Path(images_dir) if images_dir is not None else default_images_dir(path), image_check, lengths)
    collector = _Collector(path, lengths, max_findings=0)
    for raw, checked in _checked_lines(path, config, workers=1, progress=None):
        if collector.add(checked):
            yield checked.line, Record.model_validate_json(raw)
