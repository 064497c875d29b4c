"""The run engine every converter shares: plan → convert items in a worker pool → journal → assemble outputs.

A converter (the contract: :mod:`phi3v_data.converter`) only knows its source layout: ``plan`` lists the work items
(deterministically), ``convert`` turns one item into records and writes that item's images. This module does the
rest once for all:

- **resume**: each finished item is appended to ``OUT/.partial/journal.jsonl``; a rerun with the same arguments
  skips journaled items. The final ``<name>_<split>.jsonl`` files, ``reports/failures.jsonl`` and ``manifest.json``
  are written atomically only when every item is done, so they never appear half-written.
- **bad input**: an item whose conversion raises is recorded in ``reports/failures.jsonl`` (file, reason) and
  skipped. The journal stays while failures remain, so a rerun after a fix (the missing image added) converts the
  failed items and whatever the source gained, and reuses the rest.
- **determinism**: records are ordered by the plan, not by completion, and ids are ``<split>-<10-digit counter>``
  unless the converter sets its own.
- **flat memory**: the plan is consumed while items convert, results go to the journal as they arrive, and the
  outputs are streamed from the journal; per item only a key digest, its split and a journal offset stay in memory
  (a million LLaVA rows convert in well under 500 MB).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import traceback
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from phi3v_data.converter import ConversionError, Converter, ConvertUsageError, Failure, ImageWriter, Item
from phi3v_data.io import OutputLock as SharedOutputLock
from phi3v_data.io import (
    OutputOverlapError, atomic_write, check_output_apart, check_output_name, dumps_utf8, write_json, write_jsonl,
)
from phi3v_data.splits import Carved
from phi3v_data.workers import running, start_worker
from schemas import Record
from schemas.errors import first_validation_line
from schemas.layout import FAILURES_REPORT, IMAGES_DIR, MANIFEST, REPORTS_DIR, failures_path, split_file_name
from schemas.layout import manifest_path as manifest_path_of

JOURNAL_DIR = ".partial"
CHUNK_MAX = 8
"""Most items one worker task converts (a killed run redoes at most ``workers * 4`` tasks)."""


class OutputPathError(ConvertUsageError):
    """``--out`` overlaps an input (equals, contains or lies inside it): a usage error, exit status 2."""

    exit_code = 2


class OutputLockedError(ConvertUsageError):
    """Another conversion is writing into ``--out`` right now."""


@dataclass
class RunResult:
    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    reused: int = 0
    up_to_date: bool = False
    carved: list[Carved] = field(default_factory=list)
    source_splits: dict[str, str] = field(default_factory=dict)
    """Output split → its name in the release, where the converter renamed it (``val`` → ``dev_seen``)."""


# -- worker side -------------------------------------------------------------------------------------------------

_WORKER: tuple[Converter, ImageWriter] | None = None


def _init_pool_worker(converter: Converter, writer: ImageWriter, parent: int) -> None:
    """Pool workers die with the main process: a killed run must not go on writing (Linux: PR_SET_PDEATHSIG;
    elsewhere each task checks the parent)."""
    global _PARENT
    _PARENT = parent
    start_worker(parent)
    _init_worker(converter, writer)


_PARENT: int | None = None


def _init_worker(converter: Converter, writer: ImageWriter) -> None:
    global _WORKER
    _WORKER = (converter, writer)
    # Converters decode or make thousands of same-sized images. Pillow returns each image's memory to the OS by
    # default, so the next one page-faults it back in (~0.2 ms for a 320x240 RGB image); keep a few blocks.
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        from PIL import Image

        Image.core.set_blocks_max(max(Image.core.get_blocks_max(), 16))


def _run_items(items: list[Item]) -> list[tuple[str, list[dict] | None, dict | None]]:
    results = []
    for item in items:
        if _PARENT is not None and os.getppid() != _PARENT:  # orphaned (no PDEATHSIG here): stop writing
            os._exit(1)
        results.append(_run_item(item))
    return results


def _run_item(item: Item) -> tuple[str, list[dict] | None, dict | None]:
    """Convert one item; never raises (a failure comes back as data)."""
    assert _WORKER is not None
    converter, writer = _WORKER
    try:
        records = converter.convert(item, writer)
        if item.source_split not in (None, item.split):  # the release's name of a renamed split, on each record
            records = [{**record, "source_split": record.get("source_split", item.source_split)} for record in records]
        return item.key, records, None
    except ConversionError as exc:
        return item.key, None, {"file": exc.file or item.key, "reason": str(exc), "split": item.split, "line": exc.line}
    except Exception as exc:  # a bug or an unforeseen input: report it with its type, keep going
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        return item.key, None, {"file": item.key, "reason": reason, "split": item.split}


# -- the run -----------------------------------------------------------------------------------------------------


def _params(converter: Converter, source: Path, name: str) -> dict[str, Any]:
    return {
        "converter": converter.name,
        "version": converter.version,
        "source": str(source.resolve()) if source.exists() else source.as_posix(),  # a Hub name stays a name
        "name": name,
        "options": converter.options.model_dump(mode="json"),
    }


def key_digest(key: str) -> int:
    """A 64-bit digest of an item key: what the engine keeps per item instead of the key (16x less memory at 1M)."""
    raw = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


class DigestSet:
    """A set of 64-bit digests at ~8 bytes each (a Python set of ints costs ~60): a sorted array, and the digests
    added since the last merge in a small set, merged into the array every ``merge`` additions."""

    def __init__(self, digests: Any = None, *, merge: int = 1 << 16) -> None:
        import numpy as np  # noqa: PLC0415 - not for every CLI start

        self._np, self._merge = np, merge
        self._sorted = np.unique(np.asarray(digests if digests is not None else [], dtype=np.int64))
        self._recent: set[int] = set()

    def __contains__(self, digest: int) -> bool:
        if digest in self._recent:
            return True
        at = int(self._sorted.searchsorted(digest))
        return at < len(self._sorted) and int(self._sorted[at]) == digest

    def add(self, digest: int) -> None:
        self._recent.add(digest)
        if len(self._recent) >= self._merge:
            recent = self._np.fromiter(self._recent, dtype=self._np.int64, count=len(self._recent))
            self._sorted, self._recent = self._np.union1d(self._sorted, recent), set()


class Journal:
    """``.partial/journal.jsonl``: one line per finished item, appended as each result arrives.

    In memory stay each entry's key digest and byte offset (17 bytes an entry), never its records: assembly reads
    them back one at a time. A torn last line (killed mid-write) is cut off, so the next entry starts a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digests, self.offsets, self.failed = array("q"), array("q"), bytearray()
        self._end = self._read()
        self._handle: BinaryIO | None = None
        keys, _, failed = self._latest()
        self.done = DigestSet(keys[~failed])
        """Digests of the items an earlier run converted (a failure is retried, so it is not done)."""

    def _read(self) -> int:
        """Index the entries of an interrupted run; returns where the next one goes."""
        if not self.path.exists():
            return 0
        offset = good = 0
        with open(self.path, "rb") as handle:
            for line in handle:
                start, offset = offset, offset + len(line)
                if not line.endswith(b"\n"):
                    break  # killed mid-write
                good = offset
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                self._index(key_digest(entry["key"]), start, failed="failure" in entry)
        if good < offset:
            os.truncate(self.path, good)
        return good

    def _index(self, digest: int, offset: int, *, failed: bool) -> None:
        self.digests.append(digest)
        self.offsets.append(offset)
        self.failed.append(failed)

    def __enter__(self) -> "Journal":
        self._handle = open(self.path, "ab")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def append(self, key: str, records: list[dict] | None, failure: dict | None) -> None:
        """Journal one finished item (flushed: a kill right after loses nothing)."""
        assert self._handle is not None
        entry = {"key": key, "records": records} if failure is None else {"key": key, "failure": failure}
        line = (dumps_utf8(entry) + "\n").encode("utf-8")
        self._handle.write(line)
        self._handle.flush()
        self._index(key_digest(key), self._end, failed=failure is not None)
        self._end += len(line)

    def _latest(self) -> tuple[Any, Any, Any]:
        """(digests, offsets, failed) of each item's latest entry, sorted by digest (numpy arrays)."""
        import numpy as np  # noqa: PLC0415 - not for every CLI start

        def of(values: array | bytearray, dtype: Any) -> Any:
            return np.frombuffer(values, dtype=dtype) if len(values) else np.zeros(0, dtype)

        keys, offsets, failed = of(self.digests, np.int64), of(self.offsets, np.int64), of(self.failed, np.bool_)
        order = np.lexsort((np.arange(len(keys)), keys))  # by digest, then by position: the last entry wins
        latest = order[np.append(keys[order][1:] != keys[order][:-1], True)] if len(keys) else order
        return keys[latest], offsets[latest], failed[latest]

    def offsets_of(self, digests: array) -> Any:
        """Byte offset of each digest's latest entry (an int64 array, in the order of ``digests``)."""
        import numpy as np  # noqa: PLC0415 - not for every CLI start

        keys, offsets, _ = self._latest()
        wanted = np.frombuffer(digests, dtype=np.int64) if len(digests) else np.zeros(0, np.int64)
        where = np.searchsorted(keys, wanted)
        if len(wanted) and (where.max() >= len(keys) or not np.array_equal(keys[where], wanted)):
            raise RuntimeError(f"{self.path}: planned items missing from the journal")  # a bug, never a user mistake
        return offsets[where]


def run_converter(
    converter: Converter,
    source: Path,
    out: Path,
    *,
    name: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Convert ``source`` into ``out`` (``out/images/…`` + ``out/<name>_<split>.jsonl``), resuming if interrupted."""
    console = console or Console(stderr=True)
    source, out = Path(source), Path(out)
    if not source.exists() and not converter.accepts_names:
        raise ConvertUsageError(f"source {source} does not exist")
    check_out_apart(converter, source, out)
    if name is not None:
        try:
            check_output_name("--name", name)
        except OutputOverlapError as exc:
            raise OutputPathError(str(exc)) from None
    name = name or converter.output_name
    params = _params(converter, source, name)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    if not overwrite and _up_to_date(out, digest):
        manifest = json.loads((out / MANIFEST).read_text())
        if not manifest.get("failures"):
            console.print(f"[green]{out} is up to date[/] (same converter, source and options); --overwrite redoes it")
            return RunResult(out=out, counts=manifest.get("splits", {}), up_to_date=True)
        console.print(f"retrying the {manifest['failures']} failure(s) of the last run; finished items are kept")

    plan = PlanStream(converter, source, console)  # its first item before touching `out`: a wrong layout leaves nothing
    with OutputLock(out):
        return _run_locked(converter, plan, out=out, name=name, params=params, digest=digest,
                           overwrite=overwrite, workers=workers, console=console)


def _run_locked(converter: Converter, plan: PlanStream, *, out: Path, name: str, params: dict[str, Any], digest: str,
                overwrite: bool, workers: int | None, console: Console) -> RunResult:
    first = [split_file_name(name, plan.first_split)] if plan.first_split is not None else []
    journal_path = _prepare_partial(out, digest, params, overwrite=overwrite, targets=[*first, REPORTS_DIR, MANIFEST])
    plan.on_new_split = lambda split: _refuse_foreign(out, [split_file_name(name, split)])
    writer = ImageWriter(out / IMAGES_DIR)
    writer.root.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    with Journal(journal_path) as journal:
        todo = _Todo(plan, journal)
        _convert_all(converter, writer, todo, journal, workers=workers, console=console, plan=plan)
    result = _assemble(converter, plan, journal, out=out, name=name, params=params, digest=digest)
    result.reused = todo.reused
    return result


class _Todo:
    """The planned items not journaled as done, counting those reused."""

    def __init__(self, plan: PlanStream, journal: Journal) -> None:
        self.plan, self.journal, self.reused, self.queued = plan, journal, 0, 0

    def __iter__(self) -> Iterator[Item]:
        for item in self.plan.items():
            if self.plan.order[-1] in self.journal.done:
                self.reused += 1
            else:
                self.queued += 1
                yield item


def _inputs(converter: Converter, source: Path) -> list[tuple[str, Path]]:
    """What a run reads: the source and every path option (``--image-folder``, ``--images``)."""
    found = [("the source", source)]
    for field_name, value in converter.options:
        if isinstance(value, Path):
            found.append((f"--{field_name.replace('_', '-')}", value))
    return found


def check_out_apart(converter: Converter, source: Path, out: Path) -> None:
    """Refuse an ``--out`` that equals, contains or lies inside an input (:data:`phi3v_data.io.OUTPUT_RULE`): the run
    would read its own output, and a later ``--overwrite`` could delete what the user owns."""
    try:
        check_output_apart(out, _inputs(converter, source), flag="--out")
    except OutputOverlapError as exc:
        raise OutputPathError(str(exc)) from None


LOCK_NAME = ".phi3v-convert.lock"


class OutputLock(SharedOutputLock):
    """The conversion's lock on ``out`` (:class:`phi3v_data.io.OutputLock`, file ``out/.phi3v-convert.lock``)."""

    def __init__(self, out: Path) -> None:
        super().__init__(out, name=LOCK_NAME, what="conversion", error=OutputLockedError)


def _up_to_date(out: Path, digest: str) -> bool:
    """True when ``out`` holds a finished conversion with the same arguments; refuses one with other arguments."""
    manifest_path = manifest_path_of(out)
    if not manifest_path.exists():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or "params_digest" not in manifest:
        raise ConvertUsageError(f"{manifest_path} was not written by a conversion; choose another --out")
    if manifest.get("params_digest") == digest:
        return True
    raise ConvertUsageError(
        f"{out} already holds a conversion with other arguments ({manifest.get('converter')}); "
        "choose another --out or pass --overwrite"
    )


class PlanStream:
    """A converter's plan, consumed while the items convert: per item only its key digest and split stay in memory.

    The first item is pulled on construction, before ``out`` is touched, so a wrong source layout (which ``plan``
    raises on its first step) leaves nothing behind. Failures, carve reports and duplicate keys are collected.
    """

    def __init__(self, converter: Converter, source: Path, console: Console) -> None:
        self.failures: list[Failure] = []
        self.carved: list[Carved] = []
        self.splits: list[str] = []
        """Output splits in order of their first item."""
        self.order = array("q")
        """Key digest of every planned item, in plan order (the order records are written in)."""
        self.split_index = array("H")
        """Per planned item: its split's index in :attr:`splits`."""
        self.exhausted = False
        self.on_new_split: Callable[[str], None] | None = None
        self._keys = DigestSet()
        self._entries = iter(converter.plan(source))
        with console.status(f"scanning {source}"):
            self._head = self._next_item()
        if self._head is None and not self.failures:
            raise ConvertUsageError(f"found nothing to convert in {source}: is this a {converter.name} dataset?")
        self.first_split = self._head.split if self._head is not None else None

    def _next_item(self) -> Item | None:
        for entry in self._entries:
            if isinstance(entry, Failure):
                self.failures.append(entry)
            elif isinstance(entry, Carved):  # what --val-ratio took: reported in the closing table and manifest
                self.carved.append(entry)
            elif (digest := key_digest(entry.key)) in self._keys:
                self.failures.append(Failure(entry.key, "duplicate item (listed twice in the source)", entry.split))
            else:
                self._keys.add(digest)
                self.order.append(digest)
                return entry
        self.exhausted, self._keys = True, DigestSet()
        return None

    def items(self) -> Iterator[Item]:
        """The planned items, each registered (split, order) as it is handed out."""
        item, self._head = self._head, None
        index = {split: k for k, split in enumerate(self.splits)}
        while item is not None:
            if item.split not in index:
                if self.on_new_split is not None:
                    self.on_new_split(item.split)
                index[item.split] = len(self.splits)
                self.splits.append(item.split)
            self.split_index.append(index[item.split])
            yield item
            item = self._next_item()


def recorded_outputs(out: Path) -> list[str]:
    """What an earlier conversion in ``out`` recorded as its own (manifest ``outputs``): the only things
    ``--overwrite`` may delete. Names are single entries of ``out``; anything else in the list is ignored."""
    try:
        manifest = json.loads(manifest_path_of(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(manifest, dict) or "params_digest" not in manifest:
        return []  # not a manifest this toolkit wrote
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list):  # written before manifests listed their outputs
        files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
        outputs = [IMAGES_DIR, *files.values(), "failures.jsonl", MANIFEST]  # failures.jsonl: where they were then
    return [name for name in outputs if isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name]


def _remove_recorded(out: Path) -> None:
    """Delete an earlier conversion's recorded outputs (manifest last, so a crash here still leaves the list)."""
    names = recorded_outputs(out)
    for name in sorted(names, key=lambda n: n == MANIFEST):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _refuse_foreign(out: Path, names: Sequence[str]) -> None:
    """Refuse to write over entries of ``out`` that no conversion recorded as its own (nor this run began writing:
    see :data:`ASSEMBLING`). Checked for each split as the plan reaches it, before any of its records is written."""
    ours = {*recorded_outputs(out), *_assembling(out)}
    foreign = [n for n in names if (out / n).exists() and n not in ours]
    if foreign:
        raise ConvertUsageError(
            f"{out} already holds {', '.join(foreign)}, which no earlier conversion recorded as its output; "
            "nothing was deleted or written there: choose another --out, or move those away"
        )


ASSEMBLING = "assembling.json"
"""Under ``.partial/``: the outputs an assembly is writing, so a run killed halfway may write them again."""


def _assembling(out: Path) -> list[str]:
    try:
        names = json.loads((out / JOURNAL_DIR / ASSEMBLING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _prepare_partial(
    out: Path, digest: str, params: dict[str, Any], *, overwrite: bool, targets: Sequence[str] = ()
) -> Path:
    """The journal of this run; an interrupted run with other arguments is refused unless ``overwrite``.

    ``overwrite`` deletes only what an earlier run recorded as its own; an ``images/`` folder in ``out`` that no run
    of this toolkit wrote is never deleted nor written into.
    """
    partial = out / JOURNAL_DIR
    params_path = partial / "params.json"
    if overwrite:  # the earlier conversion's images must not survive into this one, nor its journal
        _remove_recorded(out)
        if params_path.exists():  # an interrupted run of ours made images/ (a first run refuses a foreign one)
            shutil.rmtree(out / IMAGES_DIR, ignore_errors=True)
            shutil.rmtree(partial)  # its records name the images just deleted
    if not params_path.exists():  # an interrupted run of ours made images/
        _refuse_foreign(out, [IMAGES_DIR])
    _refuse_foreign(out, targets)
    if params_path.exists() and json.loads(params_path.read_text()).get("digest") != digest:
        raise ConvertUsageError(
            f"{out} holds an interrupted run with other arguments; rerun it with the same arguments, "
            "or pass --overwrite to start again"
        )
    partial.mkdir(parents=True, exist_ok=True)
    write_json(params_path, {"digest": digest, **params})
    return partial / "journal.jsonl"


def _convert_all(converter: Converter, writer: ImageWriter, todo: _Todo, journal: Journal, *, workers: int,
                 console: Console, plan: PlanStream) -> None:
    """Convert every item of ``todo`` as the plan yields it, journaling each result as it arrives."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(converter.name, total=None)  # known once the plan is exhausted
        shown = [0, False]  # the reused count and whether the total are on the bar

        def record(result: tuple[str, list[dict] | None, dict | None]) -> None:
            journal.append(*result)
            progress.advance(task)
            if todo.reused != shown[0] or plan.exhausted != shown[1]:
                shown[:] = todo.reused, plan.exhausted
                progress.update(
                    task, total=todo.queued if plan.exhausted else None, description=_label(converter, todo)
                )

        items = iter(todo)
        head = list(itertools.islice(items, 2))
        if workers == 1 or len(head) <= 1:
            _init_worker(converter, writer)
            for item in itertools.chain(head, items):
                record(_run_item(item))
        else:
            _pool_run(converter, writer, itertools.chain(head, items), record, workers=workers)
        progress.update(task, total=todo.queued, description=_label(converter, todo))


def _label(converter: Converter, todo: _Todo) -> str:
    return converter.name + (f" (resumed, {todo.reused} done before)" if todo.reused else "")


def _pool_run(converter: Converter, writer: ImageWriter, items: Iterator[Item],
              record: Callable[[tuple[str, list[dict] | None, dict | None]], None], *, workers: int) -> None:
    """Worker processes convert chunks of items; a bounded number of tasks is in flight (memory stays flat)."""
    with running(ProcessPoolExecutor(max_workers=workers, initializer=_init_pool_worker,
                                     initargs=(converter, writer, os.getpid()))) as pool:
        pending: set[Future] = set()
        for chunk in _stream_chunks(items, workers):
            pending.add(pool.submit(_run_items, chunk))
            if len(pending) >= workers * 4:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    for result in future.result():
                        record(result)
        for future in pending:
            for result in future.result():
                record(result)


def _stream_chunks(items: Iterator[Item], workers: int) -> Iterator[list[Item]]:
    """Worker tasks: up to CHUNK_MAX items while much work remains, one item each at the end.

    Each task costs the main process ~0.5 ms of pickling and bookkeeping, CPU the workers want on a small machine;
    shrinking tasks towards the end keeps every worker busy until the last item (guided scheduling: size =
    remaining // (workers * 8)). Only ``workers * 8 * CHUNK_MAX`` items are read ahead of the plan: enough to know
    that a task may be full while the plan goes on.
    """
    window = workers * 8 * CHUNK_MAX
    buffer: deque[Item] = deque()
    exhausted = False
    while True:
        while not exhausted and len(buffer) < window:
            item = next(items, None)
            if item is None:
                exhausted = True
            else:
                buffer.append(item)
        if not buffer:
            return
        size = max(1, min(CHUNK_MAX, len(buffer) // (workers * 8)))
        yield [buffer.popleft() for _ in range(size)]


def _chunks(todo: Sequence[Item], workers: int) -> list[list[Item]]:
    """:func:`_stream_chunks` of a list."""
    return list(_stream_chunks(iter(todo), workers))


def _assemble(converter: Converter, plan: PlanStream, journal: Journal, *, out: Path, name: str,
              params: dict[str, Any], digest: str) -> RunResult:
    """Write the outputs from the journal, streamed in plan order, then the failures report and the manifest."""
    result = RunResult(out=out, carved=plan.carved)
    failures = list(plan.failures)
    targets = [split_file_name(name, split) for split in plan.splits]
    write_json(out / JOURNAL_DIR / ASSEMBLING, [*targets, REPORTS_DIR, MANIFEST])
    with _SplitFiles(out, name) as files:
        _write_records(converter, plan, journal, files, failures, result)
    result.files, result.counts, result.images = files.paths, files.counts, files.images
    write_jsonl(failures_path(out), [asdict(f) for f in failures])
    result.failures = failures
    write_json(out / MANIFEST, _manifest(converter, result, params=params, digest=digest))
    if not failures:  # while failures remain, the journal stays: a rerun retries them and reuses the rest
        shutil.rmtree(out / JOURNAL_DIR, ignore_errors=True)
    return result


def _write_records(converter: Converter, plan: PlanStream, journal: Journal, files: _SplitFiles,
                   failures: list[Failure], result: RunResult) -> None:
    """Each planned item's journal entry, read back one at a time: its records validated, ids given, written."""
    ids_seen = DigestSet()  # digests of the ids written
    offsets = journal.offsets_of(plan.order)
    with open(journal.path, "rb") as reader:
        for position, offset in _positions(offsets):
            split = plan.splits[plan.split_index[position]]
            reader.seek(offset)
            entry = json.loads(reader.readline())
            if "failure" in entry:
                failures.append(Failure(**entry["failure"]))
                continue
            for raw in entry["records"]:
                raw.setdefault("id", f"{split}-{files.counts.get(split, 0):010d}")
                raw.setdefault("source", converter.name)
                try:
                    record = Record.model_validate(raw)
                except ValidationError as exc:  # a converter bug; never write a record the validator would reject
                    failures.append(Failure(entry["key"], f"converter produced an invalid record: "
                                            f"{first_validation_line(exc)}", split))
                    continue
                if (id_digest := key_digest(record.id)) in ids_seen:
                    failures.append(Failure(entry["key"], f"duplicate record id {record.id!r}", split))
                    continue
                ids_seen.add(id_digest)
                files.write(split, record)
                if record.source_split:
                    result.source_splits.setdefault(split, record.source_split)


def _positions(offsets: Any, block: int = 1 << 16) -> Iterator[tuple[int, int]]:
    """(position, offset) of an int64 array as Python ints, a block at a time (no list of a million ints)."""
    for start in range(0, len(offsets), block):
        yield from enumerate(offsets[start : start + block].tolist(), start)


class _SplitFiles:
    """The ``<name>_<split>.jsonl`` files being written, each a temp file renamed into place when all succeeded."""

    def __init__(self, out: Path, name: str) -> None:
        self.out, self.name = out, name
        self.paths: dict[str, Path] = {}
        self.counts: dict[str, int] = {}
        self.images: dict[str, int] = {}
        self._stack = contextlib.ExitStack()
        self._handles: dict[str, IO[str]] = {}

    def __enter__(self) -> "_SplitFiles":
        self._stack.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._stack.__exit__(*exc)

    def write(self, split: str, record: Record) -> None:
        handle = self._handles.get(split)
        if handle is None:  # a split's file exists once it has a record
            path = self.paths[split] = self.out / split_file_name(self.name, split)
            handle = self._handles[split] = self._stack.enter_context(atomic_write(path, "w", encoding="utf-8"))
            self.counts[split] = self.images[split] = 0
        row = record.model_dump(mode="json", exclude_none=True)
        try:  # TextIOWrapper encodes in write(): a failed write leaves nothing behind
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        except UnicodeEncodeError:  # a lone surrogate: the escaped form (see dumps_utf8)
            handle.write(json.dumps(row) + "\n")
        self.counts[split] += 1
        self.images[split] += len(record.images)


def _manifest(converter: Converter, result: RunResult, *, params: dict[str, Any], digest: str) -> dict[str, Any]:
    return {
        "converter": converter.name,
        "version": converter.version,
        "params": params,
        "params_digest": digest,
        "splits": result.counts,
        "images": result.images,
        "failures": len(result.failures),
        "failures_by_split": dict(Counter(f.split or "-" for f in result.failures)),
        "files": {split: path.name for split, path in result.files.items()},
        "source_splits": result.source_splits,
        "carved": [asdict(c) for c in result.carved],
        "failures_file": FAILURES_REPORT,
        # what --overwrite may delete later: everything this run wrote into `out`, and nothing else
        "outputs": [IMAGES_DIR, *(path.name for path in result.files.values()), REPORTS_DIR, MANIFEST],
    }
