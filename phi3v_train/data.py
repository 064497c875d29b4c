"""Training samples from a converted dataset directory: which records are used, and how long each one is.

A converted dataset is ``<data>/images/`` plus ``<data>/<name>_<split>.jsonl`` files. Every record of the split is
measured once at start-up — text tokens through :func:`phi3v_data.prompt.encode_record`, image tokens from each
image's header-read size — so the sampler can group by real length and over-long samples can be dropped (and
counted) instead of being cut through their image tokens. Unlabeled records (test splits) are skipped and counted, and
so are records that cannot be trained on (a broken line, an image that is missing or too elongated for the HD
transform); with the pre-flight on, the run refuses those instead, naming file and line. Pixels are decoded later, in
the data loader's workers (:mod:`phi3v_train.collator`); the pre-flight decodes them all first when the dataset is
small enough (:data:`DEEP_PREFLIGHT_BYTES`), and the collator stands in for a sample that still fails.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from torch.utils.data import Dataset

from phi3v_data.images import ImageProblem, check_image
from phi3v_data.io import UnsafePathError, iter_jsonl, resolve_inside, walk_files, write_json
from phi3v_data.prompt import DEFAULT_FORMAT, PromptFormat, encode_record
from phi3v_data.tokens import elongation_problem, num_image_tokens
from schemas import Record

Encode = Callable[[str], list[int]]

DEEP_PREFLIGHT_BYTES = 2 << 30
"""The pre-flight decodes every image when images/ holds at most this many bytes (seconds per GB on a few cores);
above it only headers are read and the collator stands in for an image that fails to decode mid-run."""


class DataError(ValueError):
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


def split_files(data_dir: Path, split: str) -> list[Path]:
    """The ``*_<split>.jsonl`` files of a converted dataset (sorted), or DataError saying what is there instead."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such dataset directory (convert one with `phi3v-data convert`)")
    files = sorted(data_dir.glob(f"*_{split}.jsonl"))
    if not files:
        found = ", ".join(sorted(p.name for p in data_dir.glob("*.jsonl"))) or "no .jsonl files"
        raise DataError(f"{data_dir}: no *_{split}.jsonl file (found: {found}); pick another split")
    return files


def images_dir(data_dir: Path) -> Path:
    return data_dir / "images"


def image_sizes(record: Record, *, images_root: Path, num_crops: int) -> list[tuple[int, int]]:
    """(width, height) of each image of ``record``, header-read (no pixel decoding).

    Raises ImageProblem or UnsafePathError for an image that cannot be used, including one so elongated that the HD
    transform would resize its short side to 0 pixels at ``num_crops`` (the official processor fails on it too).
    """
    sizes = []
    for rel in record.images:
        width, height = check_image(resolve_inside(images_root, rel))
        if problem := elongation_problem(width, height, num_crops):
            raise ImageProblem("image_aspect", f"{rel}: {problem}; crop or pad the image, or drop the record")
        sizes.append((width, height))
    return sizes


def image_token_counts(record: Record, *, images_root: Path, num_crops: int) -> list[int]:
    """Tokens of each image of ``record``, from header-read sizes; raises as :func:`image_sizes` does."""
    return [num_image_tokens(w, h, num_crops) for w, h in image_sizes(record, images_root=images_root,
                                                                      num_crops=num_crops)]


def sample_length(
    record: Record, *, encode: Encode, bos_id: int | None, image_tokens: Sequence[int],
    fmt: PromptFormat = DEFAULT_FORMAT,
) -> int:
    """Sequence length of ``record`` as the collator will build it."""
    return len(encode_record(record, encode=encode, image_tokens=image_tokens, bos_id=bos_id, fmt=fmt))


class SampleDataset(Dataset):
    """The kept samples of a split; ``lengths`` feeds the length-grouped sampler."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def lengths(self) -> list[int]:
        return [sample.length for sample in self.samples]


def load_split(
    data_dir: Path, split: str, *, encode: Encode, bos_id: int | None, num_crops: int, max_length: int,
    source: int = 0, fmt: PromptFormat = DEFAULT_FORMAT,
) -> tuple[SampleDataset, SplitSummary]:
    """Read, measure and filter one split. Bad lines are counted and skipped (the pre-flight refuses them earlier)."""
    files = split_files(data_dir, split)
    summary = SplitSummary(files=files)
    cached = functools.lru_cache(maxsize=65536)(lambda text: tuple(encode(text)))  # prompts repeat a lot
    encode_cached: Encode = lambda text: list(cached(text))  # noqa: E731
    samples: list[Sample] = []
    for path in files:
        for line in iter_jsonl(path):
            where = f"{path}:{line.lineno}"
            sample = _measure(line.value, line.error, where=where, data_dir=data_dir, encode=encode_cached,
                              bos_id=bos_id, num_crops=num_crops, summary=summary, fmt=fmt)
            if sample is None:
                continue
            if sample.length > max_length:
                summary.too_long += 1
                summary.longest_dropped = max(summary.longest_dropped, sample.length)
                continue
            samples.append(sample if source == 0 else dataclasses.replace(sample, source=source))
    summary.kept = len(samples)
    if not samples:
        raise DataError(_nothing_left(summary, split=split, max_length=max_length))
    return SampleDataset(samples), summary


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
    fmt: PromptFormat = DEFAULT_FORMAT,
) -> tuple[SampleDataset, list[SplitSummary]]:
    """:func:`load_split` of each directory, concatenated in order; ``Sample.source`` says which one it came from."""
    samples: list[Sample] = []
    summaries = []
    for index, data_dir in enumerate(dirs):
        dataset, summary = load_split(data_dir, split, encode=encode, bos_id=bos_id, num_crops=num_crops,
                                      max_length=max_length, source=index, fmt=fmt)
        samples += dataset.samples
        summaries.append(summary)
    return SampleDataset(samples), summaries


def _measure(
    value: object, error: str | None, *, where: str, data_dir: Path, encode: Encode, bos_id: int | None,
    num_crops: int, summary: SplitSummary, fmt: PromptFormat = DEFAULT_FORMAT,
) -> Sample | None:
    try:
        if error is not None:
            raise ValueError(error)
        record = Record.model_validate(value)
        if not record.labeled:
            summary.unlabeled += 1
            return None
        sizes = image_sizes(record, images_root=images_dir(data_dir), num_crops=num_crops)
        tokens = [num_image_tokens(w, h, num_crops) for w, h in sizes]
        length = sample_length(record, encode=encode, bos_id=bos_id, image_tokens=tokens, fmt=fmt)
    except (ValidationError, ValueError, ImageProblem, UnsafePathError) as exc:
        summary.unusable += 1
        if len(summary.problems) < 5:
            summary.problems.append(f"{where}: {str(exc).splitlines()[0]}")
        return None
    return Sample(record=record, length=length, where=where, image_sizes=tuple(sizes))


def _nothing_left(summary: SplitSummary, *, split: str, max_length: int) -> str:
    files = ", ".join(str(p) for p in summary.files)
    reasons = [f"{summary.unlabeled} unlabeled", f"{summary.too_long} longer than --max-length {max_length}"
               f" (longest {summary.longest_dropped})", f"{summary.unusable} unusable"]
    hint = "; first problems: " + "; ".join(summary.problems) if summary.problems else ""
    return f"no trainable record in split {split!r} ({files}): {', '.join(reasons)}{hint}"


def preflight(
    data_dir: Path, split: str, *, report_dir: Path, workers: int | None = None, name: str | None = None,
    deep: bool | None = None,
) -> str | None:
    """Run the validator's checks on the split; None when clean, else why training must not start.

    ``deep`` decodes every image (what the data loader will do) instead of reading headers; by default it does when
    ``images/`` holds at most :data:`DEEP_PREFLIGHT_BYTES`.

    The full report goes to ``report_dir/preflight-<split>.json`` (``preflight-<name>-<split>.json`` for a
    mixture's dataset ``name``). Over-long records are not problems here: training
    drops and counts them. Unlabeled records are fine too (skipped and counted).
    """
    from phi3v_data.validate import validate_files  # noqa: PLC0415 - the validator is only needed when asked for

    files = split_files(data_dir, split)
    workers = workers or max(1, min(8, (os.cpu_count() or 1) // 2))
    if deep is None:
        deep = _tree_bytes(images_dir(data_dir), limit=DEEP_PREFLIGHT_BYTES) <= DEEP_PREFLIGHT_BYTES
    report = validate_files(files, images_dir=images_dir(data_dir), image_check="deep" if deep else "header",
                            workers=workers)
    if report.valid:
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
