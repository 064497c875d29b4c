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

import itertools
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from phi3v_data.image_paths import ImageCheck, ImageChecker
from phi3v_data.images import ImageProblem
from phi3v_data.record_checks import (LengthSpec, LengthSpecError, Problem, aspect_problems, content_problems,
                                      length_problem, raw_text_problems, schema_problems)
from phi3v_data.io import atomic_write, parse_json
from phi3v_data.report import Finding, Stats, ValidationReport
from phi3v_data.workers import running, start_worker
from schemas import BINARY_ANSWERS, Record
from schemas.errors import utf8_error
from schemas.layout import images_beside

__all__ = ["ImageCheck", "LengthSpec", "LengthSpecError", "iter_valid_records", "validate_file", "validate_files"]

BLOCK_BYTES = 1 << 20  # bytes of whole lines per unit of work (a worker reads its block from the file itself)
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
        n_images = sum(len(turn.images) for turn in record.conversations)
        sizes = self._image_problems(record, problems, n_images)
        length = None
        if self.config.lengths is not None and not problems and sizes is not None:
            problems += aspect_problems(record, sizes, self.config.lengths.num_crops)
        if self.config.lengths is not None and not problems and sizes is not None:
            length, problem = length_problem(record, sizes, self.config.lengths)
            problems += [problem] if problem else []
        return Checked(line, record.id, problems, record.source, record.task, n_images, _labels(record),
                       record.labeled, length)

    def _image_problems(self, record: Record, problems: list[Problem], n_images: int) -> list[tuple[int, int]] | None:
        """Append each image's problem; return the sizes when every image has one (header modes, no problem)."""
        sizes: list[tuple[int, int]] = []
        for t, turn in enumerate(record.conversations):
            results = self.images.check_all(turn.images) if turn.images else None
            for j, result in enumerate(results or ()):
                if isinstance(result, ImageProblem):
                    problems.append((result.code, f"conversations[{t}].images[{j}]", str(result)))
                elif result is not None:
                    sizes.append(result)
        return sizes if len(sizes) == n_images else None


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
        return None, [("not_utf8", "", utf8_error(exc))], None
    value, error = parse_json(text)  # a lone surrogate is refused too: the tokenizer and UTF-8 writers fail on it
    if error is not None:
        return None, [("invalid_json", "", error)], None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        return None, [("schema", "", f"a record must be a JSON object, got {kind}")], None
    record_id = value.get("id") if isinstance(value.get("id"), str) and value.get("id") else None
    try:
        record = Record.model_validate(value)
    except ValidationError as exc:
        problems = schema_problems(exc, value)
        return None, problems + raw_text_problems(value, {field for _, field, _ in problems}), record_id
    return record, [], record.id


def _labels(record: Record) -> tuple[str, ...]:
    """What the label distribution counts: the answers of classification turns, the labels of binary turns."""
    if record.task == "classification":
        return tuple(t.assistant.strip() for t in record.conversations if t.assistant is not None)
    if record.task == "binary":
        return tuple(BINARY_ANSWERS[t.reference.label] if t.reference and t.reference.label is not None
                     else t.assistant for t in record.conversations if t.assistant is not None)
    return ()


def _blocks(path: Path, progress: Callable[[int], None] | None) -> Iterator[tuple[int, int, bytes]]:
    """The file as (first line number, byte offset, bytes) blocks of whole lines; reports bytes read to ``progress``."""
    line, offset = 1, 0
    with open(path, "rb") as handle:
        while data := handle.read(BLOCK_BYTES):
            if not data.endswith(b"\n"):
                data += handle.readline()  # finish the last line (a line longer than a block included)
            yield line, offset, data
            line += data.count(b"\n")
            offset += len(data)
            if progress:
                progress(len(data))


def _lines(first_line: int, data: bytes) -> list[tuple[int, bytes]]:
    """Non-blank lines of a block as (line number, bytes without the line ending)."""
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        raw = raw.rstrip(b"\r")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
            raw = raw[3:]
        if raw.strip():
            lines.append((number, raw))
    return lines


class ChunkResult(NamedTuple):
    """A chunk's verdicts, compact enough to send back from a worker: ids, problems by position, partial counts."""

    ids: list[str | None]
    problems: dict[int, list[Problem]]
    stats: Stats  # sources, tasks, images, labels, unlabeled, lengths of the chunk's schema-valid records


def check_chunk(checker: RecordChecker, chunk: list[tuple[int, bytes]]) -> ChunkResult:
    result = ChunkResult([], {}, Stats())
    for index, (line, raw) in enumerate(chunk):
        checked = checker.check(line, raw)
        result.ids.append(checked.id)
        if checked.problems:
            result.problems[index] = checked.problems
        if checked.task is not None:
            _count(result.stats, checked)
    return result


def _count(stats: Stats, checked: Checked) -> None:
    """Count one record into a chunk's stats (unbounded here: a chunk is small; merging into the report bounds them)."""
    stats.sources[checked.source or "(none)"] += 1
    stats.tasks[checked.task] += 1
    stats.images_per_record[checked.n_images] += 1
    stats.unlabeled += not checked.labeled
    if checked.labels:
        counter = stats.labels.get(checked.task) or stats.labels.setdefault(checked.task, Counter())
        counter.update(checked.labels)
    if checked.length is not None:
        stats.lengths[checked.length] += 1


_WORKER: RecordChecker | None = None


def _start_worker(config: CheckConfig, parent: int) -> None:
    global _WORKER  # noqa: PLW0603 - one checker per worker process, with its own directory caches
    start_worker(parent)
    if _WORKER is None or _WORKER.config != config:  # a forked worker inherits the parent's warm checker
        _WORKER = RecordChecker(config)


def _worker_block(path: Path, first_line: int, offset: int, size: int) -> ChunkResult:
    """Check one block, read here: sending offsets instead of lines keeps the parent's pickling work near zero."""
    assert _WORKER is not None
    with open(path, "rb") as handle:
        handle.seek(offset)
        return check_chunk(_WORKER, _lines(first_line, handle.read(size)))


def _chunk_results(path: Path, config: CheckConfig, *, workers: int, progress: Callable[[int], None] | None
                   ) -> Iterator[tuple[list[tuple[int, bytes]], ChunkResult]]:
    """(lines of a block, their result) in file order.

    With ``workers = N > 1``, N - 1 worker processes check blocks while this process checks every N-th block itself
    (besides reading and counting), so N processes share N cores; only a few blocks are in flight (constant memory).
    """
    checker = RecordChecker(config)
    if workers <= 1:
        for first_line, _, data in _blocks(path, progress):
            lines = _lines(first_line, data)
            yield lines, check_chunk(checker, lines)
        return
    blocks = _blocks(path, progress)
    for first_line, _, data in itertools.islice(blocks, 1):  # warms the directory listings the workers inherit
        lines = _lines(first_line, data)
        yield lines, check_chunk(checker, lines)
    global _WORKER  # noqa: PLW0603
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # A multiprocessing.Pool hung on Ctrl-C: terminate() killed a worker while it sent a result, holding the queue's
    # lock that the pool's own thread then waited for. stop_pool ends an executor's workers without that wait.
    pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context(method),
                               initializer=_start_worker, initargs=(config, os.getpid()))
    _WORKER = checker  # forked when tasks are submitted, the workers inherit its warm directory listings
    try:
        with running(pool):
            pending: deque = deque()
            for index, (first_line, offset, data) in enumerate(blocks):
                mine = index % workers == 0
                job = None if mine else pool.submit(_worker_block, path, first_line, offset, len(data))
                pending.append((first_line, data, job))
                while len(pending) > 2 * workers:
                    yield _block_result(checker, *pending.popleft())
            while pending:
                yield _block_result(checker, *pending.popleft())
    finally:
        _WORKER = None


def _block_result(checker: RecordChecker, first_line: int, data: bytes, job: Future[ChunkResult] | None
                  ) -> tuple[list[tuple[int, bytes]], ChunkResult]:
    lines = _lines(first_line, data)
    return lines, job.result() if job is not None else check_chunk(checker, lines)


class _Collector:
    """Turns chunk results into a report: duplicate ids, counts and the findings kept."""

    def __init__(self, path: Path, lengths: LengthSpec | None, max_findings: int) -> None:
        self.report = ValidationReport(files=[path])
        self.report.stats.max_length = lengths.max_length if lengths else None
        self.file, self.max_findings = str(path), max_findings
        self.first_line: dict[str, int] = {}

    def valid_lines(self, chunk: list[tuple[int, bytes]], result: ChunkResult) -> Iterator[tuple[int, bytes]]:
        """Count a chunk; yield the (line, raw) of its valid records."""
        stats = self.report.stats
        stats.merge(result.stats)
        stats.records += len(chunk)
        first_line = self.first_line
        for index, ((line, raw), record_id) in enumerate(zip(chunk, result.ids)):
            problems = result.problems.get(index)
            if record_id is not None and (first := first_line.setdefault(record_id, line)) != line:
                duplicate = ("duplicate_id", "id", f"id {record_id!r} was already used on line {first}")
                problems = [*(problems or []), duplicate]
            if problems:
                self._problems(line, record_id, problems)
            else:
                stats.ok += 1
                yield line, raw

    def _problems(self, line: int, record_id: str | None, problems: list[Problem]) -> None:
        stats = self.report.stats
        stats.with_problems += 1
        for code in {code for code, _, _ in problems}:
            stats.records_by_code[code] += 1
        for code, field, message in problems:
            self.finding(Finding(code, line, record_id, field, message, self.file))

    def finding(self, finding: Finding) -> None:
        self.report.stats.findings_by_code[finding.code] += 1
        if len(self.report.findings) < self.max_findings:
            self.report.findings.append(finding)
        else:
            self.report.findings_not_kept += 1

    def finish(self) -> ValidationReport:
        if self.report.stats.records == 0:
            self.finding(Finding("no_records", 0, None, "", "the file contains no records", self.file))
        return self.report


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
    config = CheckConfig(Path(images_dir) if images_dir is not None else images_beside(path), image_check, lengths)
    collector = _Collector(path, lengths, max_findings)
    results = _chunk_results(path, config, workers=workers, progress=progress)
    if output is None:
        for chunk, result in results:
            for _ in collector.valid_lines(chunk, result):
                pass
        return collector.finish()
    with atomic_write(output, "wb") as handle:
        for chunk, result in results:
            for _, raw in collector.valid_lines(chunk, result):
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
    """(line, record) for each record without findings, streamed (a record whose id repeats an earlier one is
    skipped)."""
    path = Path(path)
    config = CheckConfig(Path(images_dir) if images_dir is not None else images_beside(path), image_check, lengths)
    collector = _Collector(path, lengths, max_findings=0)
    for chunk, result in _chunk_results(path, config, workers=1, progress=None):
        for line, raw in collector.valid_lines(chunk, result):
            record = parse_record(raw)[0]  # a valid line parses (fast path, or the json.loads path it passed)
            assert record is not None
            yield line, record
