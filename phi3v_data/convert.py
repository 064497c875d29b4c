"""The machinery every converter shares: plan → convert items in a worker pool → journal → assemble outputs.

A converter (see :class:`Converter`) only knows its source layout: ``plan`` lists the work items (deterministically),
``convert`` turns one item into records and writes that item's images. This module does the rest once for all:

- **resume**: each finished item is appended to ``OUT/.partial/journal.jsonl``; a rerun with the same arguments
  skips journaled items. The final ``<name>_<split>.jsonl`` files, ``reports/failures.jsonl`` and ``manifest.json``
  are written atomically only when every item is done, so they never appear half-written.
- **bad input**: an item whose conversion raises is recorded in ``reports/failures.jsonl`` (file, reason) and
  skipped. The journal stays while failures remain, so a rerun after a fix (the missing image added) converts the
  failed items and whatever the source gained, and reuses the rest.
- **determinism**: records are ordered by the plan, not by completion, and ids are ``<split>-<10-digit counter>``
  unless the converter sets its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from phi3v_data.io import OutputLock as SharedOutputLock
from phi3v_data.io import (
    OutputOverlapError, UnsafePathError, atomic_write, check_output_apart, check_output_name, dumps_utf8,
    resolve_inside, write_bytes, write_json, write_jsonl,
)
from phi3v_data.splits import Carved
from schemas import Record

JOURNAL_DIR = ".partial"
FAILURES_REPORT = "reports/failures.jsonl"
"""Under ``reports/``, so ``phi3v-data validate OUT/*.jsonl`` sees only data files."""
CHUNK_MAX = 8
"""Most items one worker task converts (a killed run redoes at most ``workers * 4`` tasks)."""


class ConversionError(Exception):
    """An expected problem with one item (corrupt video, missing image): reported and skipped, never fatal.

    ``file`` and ``line`` name the annotation the item came from when the report should point there rather than at
    the item's key (a DocVQA question whose page is truncated)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.file, self.line = file, line


class ConvertUsageError(Exception):
    """The run cannot start (bad source layout, conflicting earlier run); the message says what to do."""

    exit_code = 1


class OutputPathError(ConvertUsageError):
    """``--out`` overlaps an input (equals, contains or lies inside it): a usage error, exit status 2."""

    exit_code = 2


class OutputLockedError(ConvertUsageError):
    """Another conversion is writing into ``--out`` right now."""


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work. ``key`` is unique and stable across runs; ``payload`` must be picklable."""

    key: str
    split: str
    payload: Any = None


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

        Raise :class:`ConvertUsageError` when ``source`` is not a layout this converter reads.
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
        self._folded: dict[str, str] = {}  # casefolded path → the path claimed first under it

    def claim(self, dest: str, source: str) -> str | None:
        """None when ``dest`` (under images/) is free or already ``source``'s; otherwise why it cannot be written."""
        owner = self._files.get(dest)
        if owner is not None:
            return None if owner == source else f"{source} and {owner} would both be written to images/{dest}; rename one"
        twin = self._folded.get(dest.casefold())
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
        self._files[dest] = source
        self._folded.setdefault(dest.casefold(), dest)
        self._dirs.update(prefixes)
        return None


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


@functools.lru_cache(maxsize=4096)
def _checked_dir(root: Path, parent: str) -> Path:
    return resolve_inside(root, parent) if parent else root


# -- worker side -------------------------------------------------------------------------------------------------

_WORKER: tuple[Converter, ImageWriter] | None = None


def _init_pool_worker(converter: Converter, writer: ImageWriter, parent: int) -> None:
    """Pool workers die with the main process: a killed run must not go on writing (Linux: PR_SET_PDEATHSIG;
    elsewhere each task checks the parent)."""
    global _PARENT
    _PARENT = parent
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
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


def _read_journal(path: Path) -> dict[str, dict]:
    """Finished items of an interrupted run. A torn last line (killed mid-write) is ignored."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8", errors="replace") as handle:  # a torn last line may end mid-character
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["key"]] = entry
    return done


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
        manifest = json.loads((out / "manifest.json").read_text())
        if not manifest.get("failures"):
            console.print(f"[green]{out} is up to date[/] (same converter, source and options); --overwrite redoes it")
            return RunResult(out=out, counts=manifest.get("splits", {}), up_to_date=True)
        console.print(f"retrying the {manifest['failures']} failure(s) of the last run; finished items are kept")

    items, failures, carved = _plan(converter, source, console)  # before touching `out`: a wrong layout leaves nothing behind
    with OutputLock(out):
        return _run_locked(converter, items, failures, out=out, name=name, params=params, digest=digest,
                           overwrite=overwrite, workers=workers, console=console, carved=carved)


def _run_locked(converter: Converter, items: list[Item], failures: list[Failure], *, out: Path, name: str,
                params: dict[str, Any], digest: str, overwrite: bool, workers: int | None, console: Console,
                carved: list[Carved] | None = None) -> RunResult:
    targets = sorted({f"{name}_{item.split}.jsonl" for item in items} | {"reports", "manifest.json"})
    journal_path = _prepare_partial(out, digest, params, overwrite=overwrite, targets=targets)
    done = {key: entry for key, entry in _read_journal(journal_path).items() if "failure" not in entry}  # retried
    todo = [item for item in items if item.key not in done]
    writer = ImageWriter(out / "images")
    writer.root.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    reused = len(items) - len(todo)
    _convert_all(converter, writer, todo, journal_path, done, workers=workers, console=console, reused=reused)
    result = _assemble(converter, items, done, failures, out=out, name=name, params=params, digest=digest,
                       carved=carved or [])
    result.reused = reused
    return result


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
    manifest_path = out / "manifest.json"
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


def _plan(converter: Converter, source: Path, console: Console) -> tuple[list[Item], list[Failure], list[Carved]]:
    items: list[Item] = []
    failures: list[Failure] = []
    carved: list[Carved] = []
    keys: set[str] = set()
    with console.status(f"scanning {source}"):
        for entry in converter.plan(source):
            if isinstance(entry, Failure):
                failures.append(entry)
            elif isinstance(entry, Carved):  # what --val-ratio took: reported in the closing table and manifest
                carved.append(entry)
            elif entry.key in keys:
                failures.append(Failure(entry.key, "duplicate item (listed twice in the source)", entry.split))
            else:
                keys.add(entry.key)
                items.append(entry)
    if not items and not failures:
        raise ConvertUsageError(f"found nothing to convert in {source}: is this a {converter.name} dataset?")
    return items, failures, carved


def recorded_outputs(out: Path) -> list[str]:
    """What an earlier conversion in ``out`` recorded as its own (manifest ``outputs``): the only things
    ``--overwrite`` may delete. Names are single entries of ``out``; anything else in the list is ignored."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(manifest, dict) or "params_digest" not in manifest:
        return []  # not a manifest this toolkit wrote
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list):  # written before manifests listed their outputs
        files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
        outputs = ["images", *files.values(), "failures.jsonl", "manifest.json"]
    return [name for name in outputs if isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name]


def _remove_recorded(out: Path) -> None:
    """Delete an earlier conversion's recorded outputs (manifest last, so a crash here still leaves the list)."""
    names = recorded_outputs(out)
    for name in sorted(names, key=lambda n: n == "manifest.json"):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _prepare_partial(out: Path, digest: str, params: dict[str, Any], *, overwrite: bool, targets: Sequence[str] = ()) -> Path:
    """The journal of this run; an interrupted run with other arguments is refused unless ``overwrite``.

    ``overwrite`` deletes only what an earlier run recorded as its own; an ``images/`` folder in ``out`` that no run
    of this toolkit wrote is never deleted nor written into.
    """
    partial = out / JOURNAL_DIR
    params_path = partial / "params.json"
    if overwrite:  # the earlier conversion's images must not survive into this one
        _remove_recorded(out)
        if params_path.exists():  # an interrupted run of ours made images/ (a first run refuses a foreign one)
            shutil.rmtree(out / "images", ignore_errors=True)
    interrupted, recorded = params_path.exists(), recorded_outputs(out)
    foreign = [n for n in ("images", *targets) if (out / n).exists() and n not in recorded and not interrupted]
    if foreign:
        raise ConvertUsageError(
            f"{out} already holds {', '.join(foreign)}, which no earlier conversion recorded as its output; "
            "nothing was deleted or written: choose another --out, or move those away"
        )
    if params_path.exists() and json.loads(params_path.read_text()).get("digest") != digest:
        if not overwrite:
            raise ConvertUsageError(
                f"{out} holds an interrupted run with other arguments; rerun it with the same arguments, "
                "or pass --overwrite to start again"
            )
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(params_path, {"digest": digest, **params})
    return partial / "journal.jsonl"


def _convert_all(
    converter: Converter,
    writer: ImageWriter,
    todo: list[Item],
    journal_path: Path,
    done: dict[str, dict],
    *,
    workers: int,
    console: Console,
    reused: int,
) -> None:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with open(journal_path, "a", encoding="utf-8") as journal, Progress(*columns, console=console, transient=False) as progress:
        label = f"{converter.name}" + (f" (resumed, {reused} done before)" if reused else "")
        task = progress.add_task(label, total=len(todo))

        def record(result: tuple[str, list[dict] | None, dict | None]) -> None:
            key, records, failure = result
            entry = {"key": key, "records": records} if failure is None else {"key": key, "failure": failure}
            journal.write(dumps_utf8(entry) + "\n")
            journal.flush()
            done[key] = entry
            progress.advance(task)

        if workers == 1 or len(todo) <= 1:
            _init_worker(converter, writer)
            for item in todo:
                record(_run_item(item))
            return
        chunks = _chunks(todo, workers)
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_pool_worker, initargs=(converter, writer, os.getpid()))
        try:
            pending: set[Future] = set()
            for chunk in chunks:  # keep a bounded number of tasks in flight
                pending.add(pool.submit(_run_items, chunk))
                if len(pending) >= workers * 4:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        for result in future.result():
                            record(result)
            for future in pending:
                for result in future.result():
                    record(result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


def _chunks(todo: list[Item], workers: int) -> list[list[Item]]:
    """Worker tasks: up to CHUNK_MAX items while much work remains, one item each at the end.

    Each task costs the main process ~0.5 ms of pickling and bookkeeping, CPU the workers want on a small machine;
    shrinking tasks towards the end keeps every worker busy until the last item (guided scheduling).
    """
    chunks, start = [], 0
    while start < len(todo):
        size = max(1, min(CHUNK_MAX, (len(todo) - start) // (workers * 8)))
        chunks.append(todo[start : start + size])
        start += size
    return chunks


def _assemble(
    converter: Converter,
    items: list[Item],
    done: dict[str, dict],
    failures: list[Failure],
    *,
    out: Path,
    name: str,
    params: dict[str, Any],
    digest: str,
    carved: list[Carved],
) -> RunResult:
    result = RunResult(out=out, carved=carved)
    per_split: dict[str, list[Record]] = {}
    ids_seen: set[str] = set()
    for item in items:
        entry = done[item.key]
        if "failure" in entry:
            failures.append(Failure(**entry["failure"]))
            continue
        bucket = per_split.setdefault(item.split, [])
        for raw in entry["records"]:
            raw = dict(raw)
            raw.setdefault("id", f"{item.split}-{len(bucket):010d}")
            raw.setdefault("source", converter.name)
            try:
                record = Record.model_validate(raw)
            except ValidationError as exc:  # a converter bug; never write a record the validator would reject
                failures.append(Failure(item.key, f"converter produced an invalid record: {exc.errors()[0]['msg']}", item.split))
                continue
            if record.id in ids_seen:
                failures.append(Failure(item.key, f"duplicate record id {record.id!r}", item.split))
                continue
            ids_seen.add(record.id)
            bucket.append(record)
            if record.source_split:
                result.source_splits.setdefault(item.split, record.source_split)

    for split, records in per_split.items():
        path = out / f"{name}_{split}.jsonl"
        result.files[split] = path
        result.counts[split] = write_jsonl(path, records)
        result.images[split] = sum(len(r.images) for r in records)
    write_jsonl(out / FAILURES_REPORT, [asdict(f) for f in failures])
    result.failures = failures
    write_json(
        out / "manifest.json",
        {
            "converter": converter.name,
            "version": converter.version,
            "params": params,
            "params_digest": digest,
            "splits": result.counts,
            "images": result.images,
            "failures": len(failures),
            "failures_by_split": dict(Counter(f.split or "-" for f in failures)),
            "files": {split: path.name for split, path in result.files.items()},
            "source_splits": result.source_splits,
            "carved": [asdict(c) for c in carved],
            "failures_file": FAILURES_REPORT,
            # what --overwrite may delete later: everything this run wrote into `out`, and nothing else
            "outputs": ["images", *(path.name for path in result.files.values()), "reports", "manifest.json"],
        },
    )
    if not failures:  # while failures remain, the journal stays: a rerun retries them and reuses the rest
        shutil.rmtree(out / JOURNAL_DIR, ignore_errors=True)
    return result


def summary_table(result: RunResult) -> Table | Group:
    """The closing table of a conversion: records and images per split (with the release's split name), failures,
    then what ``--val-ratio`` carved."""
    table = Table(title=f"converted → {result.out}")
    table.add_column("split")
    table.add_column("records", justify="right")
    table.add_column("images", justify="right")
    table.add_column("file")
    for split, count in result.counts.items():
        path = result.files.get(split)
        label = f"{split} ({result.source_splits[split]})" if split in result.source_splits else split
        table.add_row(label, str(count), str(result.images.get(split, "")), path.name if path else "")
    table.caption = f"{len(result.failures)} failure(s)" + (f" — see {FAILURES_REPORT}" if result.failures else "")
    if not result.carved:
        return table
    return Group(table, *(Text(f"carved {c.describe()}") for c in result.carved))  # own lines: a caption would wrap
