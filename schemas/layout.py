"""The on-disk layout of a converted dataset, spelled once.

Every converter writes it, and validate, preview, export, training, eval and predict read it::

    data/ucf101/
        ucf101_train.jsonl        # <name>_<split>.jsonl: one record per line (schemas.Record)
        ucf101_test.jsonl
        images/                   # every path a record names is relative to this folder
        manifest.json             # what was converted, from where, with which settings
        reports/failures.jsonl    # one line per source item that could not be converted

Names and splits may both hold ``_`` (``hateful_memes_dev_unseen.jsonl``): the split is what follows the prefix
the dataset's files share, see :func:`splits_in`.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGES_DIR = "images"
MANIFEST = "manifest.json"
REPORTS_DIR = "reports"
FAILURES_REPORT = f"{REPORTS_DIR}/failures.jsonl"
"""Under ``reports/``, so ``phi3v-data validate OUT/*.jsonl`` sees only data files."""
SUFFIX = ".jsonl"


def split_file_name(name: str, split: str) -> str:
    """``ucf101``, ``train`` → ``ucf101_train.jsonl``."""
    return f"{name}_{split}{SUFFIX}"


def split_glob(split: str) -> str:
    """The pattern that finds a split's files in a dataset directory (several datasets may share one)."""
    return f"*_{split}{SUFFIX}"


def split_files(directory: Path, split: str) -> list[Path]:
    """The ``*_<split>.jsonl`` files of a dataset directory, sorted (empty when it has none)."""
    return sorted(Path(directory).glob(split_glob(split)))


def data_files(directory: Path) -> list[Path]:
    """Every ``<name>_<split>.jsonl`` of a dataset directory, sorted."""
    return sorted(Path(directory).glob(f"*_*{SUFFIX}"))


def split_of(path: Path) -> str | None:
    """The split a lone file names (``x/ucf101_val.jsonl`` → ``val``): the part after the last ``_``; None without."""
    path = Path(path)
    if path.suffix != SUFFIX or "_" not in path.stem:
        return None
    return path.stem.rsplit("_", 1)[1]


def splits_in(directory: Path) -> list[str]:
    """The split names of a dataset directory, for messages and choices.

    The prefix all files share is the name, so ``hateful_memes_dev_unseen`` beside ``hateful_memes_train`` is split
    ``dev_unseen``; a lone file splits at its last ``_``.
    """
    stems = sorted(path.stem for path in data_files(directory))
    shared = os.path.commonprefix(stems) if len(stems) > 1 else ""
    prefix = shared[: shared.rfind("_") + 1]
    return sorted({stem[len(prefix):] if prefix else stem.rsplit("_", 1)[1] for stem in stems})


def images_dir(dataset: Path) -> Path:
    """Where a dataset's images live: ``images/`` in the dataset directory, or beside a ``.jsonl`` given instead."""
    dataset = Path(dataset)
    return images_beside(dataset) if dataset.suffix == SUFFIX else dataset / IMAGES_DIR


def images_beside(data_file: Path) -> Path:
    """The ``images/`` folder a data file's paths are relative to: in the folder holding it, whatever its name
    (``validate x.json``, a ``/dev/fd/63`` pipe), so commands that take a file never guess it is a directory."""
    return Path(data_file).parent / IMAGES_DIR


def manifest_path(directory: Path) -> Path:
    return Path(directory) / MANIFEST


def failures_path(directory: Path) -> Path:
    return Path(directory) / FAILURES_REPORT
