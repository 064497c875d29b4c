"""Training samples from a converted dataset directory: which records are used, and how long each one is.

A converted dataset is ``<data>/images/`` plus ``<data>/<name>_<split>.jsonl`` files. Every record of the split is
measured once — text tokens through :func:`phi3v_data.prompt.encode_record`, image tokens from each image's
header-read size — so the sampler can group by real length and over-long samples can be dropped (and counted)
instead of being cut through their image tokens. Measuring happens in a process pool and its result is cached
(:mod:`phi3v_train.lengths`), so later runs, resumes and the other ranks start at once. Unlabeled records (test
splits) are skipped and counted, and so are records that cannot be trained on (a broken line, an image that is
missing or too elongated for the HD transform); with the pre-flight on, the run refuses those instead, naming file
and line.

The main process holds no record: :class:`SampleDataset` is numpy arrays (byte offset, length, image sizes per
record), and the data loader's workers read each record from its jsonl line when a batch needs it; pixels are
decoded there too (:mod:`phi3v_train.collator`). The pre-flight decodes them all first when the dataset is small
enough (:data:`DEEP_PREFLIGHT_BYTES`), and the collator stands in for a sample that still fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from torch.utils.data import Dataset

from phi3v_data.io import parse_json, walk_files, write_json
from phi3v_data.prompt import DEFAULT_FORMAT, PromptFormat
from phi3v_train.lengths import (CACHE_DIR, CACHE_VERSION, LengthCache, Measured, available_cpus,  # noqa: F401
                                 file_states, image_sizes, measure, sample_length, unchanged)
from schemas import Record, layout
from schemas.errors import UserError
from schemas.layout import images_dir

Encode = Callable[[str], list[int]]

DEEP_PREFLIGHT_BYTES = 2 << 30
"""The pre-flight decodes every image when images/ holds at most this many bytes (seconds per GB on a few cores);
above it only headers are read and the collator stands in for an image that fails to decode mid-run."""


class DataError(UserError, ValueError):
    """The dataset cannot be trained on as it is; the message says which file and what to do."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One trainable record, where it came from, and the sequence length the model will see."""

    record: Record
    length: int
    where: str  # "file:line", for messages
    image_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) per image, as measured: a stand-in's size
    source: int = 0  # which dataset of a mixture (index into the run's --data list)


@dataclass
class SplitSummary:
    """What loading a split kept and what it left out, and why."""

    files: list[Path]
    kept: int = 0
    unlabeled: int = 0
    too_long: int = 0
    unusable: int = 0
    longest_dropped: int = 0
    problems: list[str] = field(default_factory=list)  # first few unusable records, "file:line: why"
    cached: bool = False  # the lengths came from the cache (nothing was measured)
    cache_path: Path | None = None  # where the lengths are cached (None: not cached)


def split_files(data_dir: Path, split: str) -> list[Path]:
    """The ``*_<split>.jsonl`` files of a converted dataset (sorted), or DataError saying what is there instead."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such dataset directory (convert one with `phi3v-data convert`)")
    files = layout.split_files(data_dir, split)
    if not files:
        found = ", ".join(sorted(p.name for p in data_dir.glob(f"*{layout.SUFFIX}"))) or "no .jsonl files"
        raise DataError(f"{data_dir}: no {layout.split_glob(split)} file (found: {found}); pick another split")
    return files


class SampleDataset(Dataset):
    """The kept samples of one or several splits as arrays; ``dataset[i]`` reads record i from its jsonl line.

    Picklable and cheap to copy into the data loader's workers (a few numpy arrays, no record); each process opens
    the files itself and reads with ``pread``, so workers never share a file position.
    """

    def __init__(self, files: Sequence[Path], arrays: dict[str, np.ndarray]) -> None:
        self.files = [str(path) for path in files]
        self.file, self.offset, self.nbytes = arrays["file"], arrays["offset"], arrays["nbytes"]
        self.line, self.length, self.source = arrays["line"], arrays["length"], arrays["source"]
        self.size_start, self.sizes = arrays["size_start"], arrays["sizes"]
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    @classmethod
    def of(cls, measured: Measured, keep: np.ndarray, *, source: int = 0) -> "SampleDataset":
        """The records of ``measured`` where ``keep`` is true (all from dataset ``source`` of a mixture)."""
        counts = np.diff(measured.size_start)[keep]
        image_rows = np.repeat(keep, np.diff(measured.size_start))  # which rows of sizes belong to kept records
        size_start = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=size_start[1:])
        arrays = {name: getattr(measured, name)[keep] for name in ("file", "offset", "nbytes", "line", "length")}
        arrays |= {"source": np.full(int(keep.sum()), source, dtype=np.int16), "size_start": size_start,
                   "sizes": measured.sizes[image_rows]}
        return cls(measured.files, arrays)

    @classmethod
    def concat(cls, parts: Sequence["SampleDataset"]) -> "SampleDataset":
        """Datasets one after the other (a mixture); their files are numbered anew."""
        files: list[str] = []
        arrays: dict[str, list[np.ndarray]] = {name: [] for name in ("file", "offset", "nbytes", "line", "length",
                                                                      "source", "sizes")}
        counts = []
        for part in parts:
            arrays["file"].append(part.file + len(files))
            files += part.files
            for name in ("offset", "nbytes", "line", "length", "source", "sizes"):
                arrays[name].append(getattr(part, name))
            counts.append(np.diff(part.size_start))
        joined = {name: np.concatenate(values) for name, values in arrays.items()}
        joined["size_start"] = np.zeros(len(joined["length"]) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(counts), out=joined["size_start"][1:])
        return cls([Path(f) for f in files], joined)

    def __len__(self) -> int:
        return len(self.length)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[int(self.file[index])]
        where = f"{path}:{int(self.line[index])}"
        raw = os.pread(self._fd(int(self.file[index])), int(self.nbytes[index]), int(self.offset[index]))
        try:
            value, error = parse_json(raw.decode("utf-8").strip())
            if error is not None:
                raise ValueError(error)
            record = Record.model_validate(value)
        except (UnicodeDecodeError, ValueError, ValidationError) as exc:
            raise DataError(f"{where}: the line changed since its length was measured ({str(exc).splitlines()[0]});"
                            " restart the run (changed files are measured again)") from None
        start, end = self.size_start[index], self.size_start[index + 1]
        sizes = tuple((int(w), int(h)) for w, h in self.sizes[start:end])
        return Sample(record=record, length=int(self.length[index]), where=where, image_sizes=sizes,
                      source=int(self.source[index]))

    def _fd(self, file_index: int) -> int:
        if self._pid != os.getpid():  # a forked worker: descriptors are shared with the parent, open its own
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(file_index)
        if fd is None:
            fd = self._fds[file_index] = os.open(self.files[file_index], os.O_RDONLY)
        return fd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass

    @property
    def lengths(self) -> list[int]:
        return self.length.tolist()

    @property
    def samples(self) -> list[Sample]:
        """Every sample, read now (tests and small datasets; training reads them one by one in the workers)."""
        return [self[index] for index in range(len(self))]

    @property
    def text_only(self) -> bool:
        """Some sample has no image (the vision side then gets no gradient from its batch)."""
        return bool((np.diff(self.size_start) == 0).any())


def load_split(
    data_dir: Path, split: str, *, encode: Encode, bos_id: int | None, num_crops: int, max_length: int,
    source: int = 0, cache: LengthCache | None = None, write_cache: bool = True, workers: int | None = None,
    console: Console | None = None, fmt: PromptFormat = DEFAULT_FORMAT,
) -> tuple[SampleDataset, SplitSummary]:
    """Read, measure and filter one split. Bad lines are counted and skipped (the pre-flight refuses them earlier).

    With ``cache``, lengths measured before for the same files, tokenizer and ``num_crops`` are read instead of
    measured, and new ones are written there (unless ``write_cache`` is false: the ranks that only read).
    """
    files = split_files(data_dir, split)
    summary = SplitSummary(files=files)
    measured = cache.load(files, split=split, num_crops=num_crops, bos_id=bos_id) if cache else None
    if measured is None:
        measured = measure(files, images_root=images_dir(data_dir), encode=encode, bos_id=bos_id,
                           num_crops=num_crops, workers=workers, console=console, fmt=fmt)
        if cache is not None and write_cache:
            cache.save(measured, split=split, num_crops=num_crops, bos_id=bos_id)
    summary.cached, summary.cache_path = not measured.measured, measured.path
    summary.unlabeled, summary.unusable, summary.problems = measured.unlabeled, measured.unusable, measured.problems
    keep = measured.length <= max_length
    summary.too_long = int((~keep).sum())
    summary.longest_dropped = int(measured.length[~keep].max()) if summary.too_long else 0
    summary.kept = int(keep.sum())
    if not summary.kept:
        raise DataError(_nothing_left(summary, split=split, max_length=max_length))
    return SampleDataset.of(measured, keep, source=source), summary


def source_names(dirs: Sequence[Path]) -> list[str]:
    """Short names for a mixture's datasets (logs, eval folders): directory names, the path where two share one.

    >>> source_names([Path("data/docvqa"), Path("a/memes"), Path("b/memes")])
    ['docvqa', 'a-memes', 'b-memes']
    """
    names = [path.name or str(path) for path in dirs]
    return [
        "-".join(part for part in path.parts if part not in ("/", "..", ".")) if names.count(name) > 1 else name
        for path, name in zip(dirs, names)
    ]


def load_mixture(
    dirs: Sequence[Path], split: str, *, encode: Encode, bos_id: int | None, num_crops: int, max_length: int,
    cache: Callable[[Path], LengthCache] | None = None, write_cache: bool = True, workers: int | None = None,
    console: Console | None = None, fmt: PromptFormat = DEFAULT_FORMAT,
) -> tuple[SampleDataset, list[SplitSummary]]:
    """:func:`load_split` of each directory, concatenated in order; ``Sample.source`` says which one it came from.

    ``cache`` gives each dataset directory its :class:`LengthCache`."""
    parts, summaries = [], []
    for index, data_dir in enumerate(dirs):
        dataset, summary = load_split(data_dir, split, encode=encode, bos_id=bos_id, num_crops=num_crops,
                                      max_length=max_length, source=index, cache=cache(data_dir) if cache else None,
                                      write_cache=write_cache, workers=workers, console=console, fmt=fmt)
        parts.append(dataset)
        summaries.append(summary)
    return SampleDataset.concat(parts) if len(parts) > 1 else parts[0], summaries


def _nothing_left(summary: SplitSummary, *, split: str, max_length: int) -> str:
    files = ", ".join(str(p) for p in summary.files)
    reasons = [f"{summary.unlabeled} unlabeled", f"{summary.too_long} longer than --max-length {max_length}"
               f" (longest {summary.longest_dropped})", f"{summary.unusable} unusable"]
    hint = "; first problems: " + "; ".join(summary.problems) if summary.problems else ""
    return f"no trainable record in split {split!r} ({files}): {', '.join(reasons)}{hint}"


def preflight(
    data_dir: Path, split: str, *, report_dir: Path, workers: int | None = None, name: str | None = None,
    deep: bool | None = None, remember: bool = False,
) -> str | None:
    """Run the validator's checks on the split; None when clean, else why training must not start.

    With ``remember``, a clean verdict is kept in ``<data>/.phi3v-cache/`` (or ``report_dir``'s) with the files'
    sizes, mtimes and digests, and a later call on unchanged files returns None at once (a resume or a second run on
    a million records). Images are not re-checked then; one broken since is stood in for by the collator.

    ``deep`` decodes every image (what the data loader will do) instead of reading headers; by default it does when
    ``images/`` holds at most :data:`DEEP_PREFLIGHT_BYTES`.

    The full report goes to ``report_dir/preflight-<split>.json`` (``preflight-<name>-<split>.json`` for a
    mixture's dataset ``name``). Over-long records are not problems here: training
    drops and counts them. Unlabeled records are fine too (skipped and counted).
    """
    from phi3v_data.validate import validate_files  # noqa: PLC0415 - the validator is only needed when asked for

    files = split_files(data_dir, split)
    # every core (up to 8): nothing else runs yet. Its workers take SIGTERM's default back (phi3v_data.workers), so
    # one forked while a run's "save, then stop" handler was left installed no longer outlives its pool.
    workers = workers or max(1, min(8, available_cpus()))
    if deep is None:
        deep = _tree_bytes(images_dir(data_dir), limit=DEEP_PREFLIGHT_BYTES) <= DEEP_PREFLIGHT_BYTES
    markers = [folder / CACHE_DIR / f"preflight-{split}-{'deep' if deep else 'header'}.json"
               for folder in (data_dir, report_dir)]
    if remember and any(_passed(marker, files) for marker in markers):
        return None
    report = validate_files(files, images_dir=images_dir(data_dir), image_check="deep" if deep else "header",
                            workers=workers)
    if report.valid:
        if remember:
            _remember_pass(markers, files)
        return None
    report_path = report_dir / f"preflight-{name + '-' if name else ''}{split}.json"
    write_json(report_path, report.to_dict())
    first = "; ".join(f"{Path(f.file).name}:{f.line}{' ' + f.field if f.field else ''}: {f.message}"
                      for f in report.findings[:3])
    return (
        f"the dataset has problems ({report.stats.with_problems} of {report.stats.records} records; first: {first}). "
        f"Full report: {report_path}. Fix them, or write a clean copy with `phi3v-data validate {files[0]} "
        f"--output CLEAN.jsonl` (or skip this check with --no-preflight)"
    )


def _passed(marker: Path, files: Sequence[Path]) -> bool:
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
        return saved.get("version") == CACHE_VERSION and unchanged(saved["files"], files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remember_pass(markers: Sequence[Path], files: Sequence[Path]) -> None:
    """Record a clean pre-flight in the first folder that takes it (the dataset's, else the run's)."""
    states = file_states(files)
    for marker in markers:
        try:
            write_json(marker, {"version": CACHE_VERSION, "files": states})
        except OSError:
            continue
        return


def _tree_bytes(root: Path, *, limit: int) -> int:
    """Bytes of the files under ``root`` (symlinked folders followed once, as the loader reads them); stops past
    ``limit``."""
    total = 0
    for folder, names in walk_files(root):
        for name in names:
            try:
                total += (folder / name).stat().st_size
            except OSError:
                continue
            if total > limit:
                return total
    return total
