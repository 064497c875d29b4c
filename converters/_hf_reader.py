"""Finding and reading what ``datasets`` leaves on disk, for the converters of Hugging Face exports.

A SOURCE is one of

- parquet files: one file, a subset folder (``hateful_memes/train-00000-of-00007-33e2….parquet``), a snapshot of a
  Hub repository with one folder per subset, or the Hub's parquet-converter layout ``<subset>/<split>/0000.parquet``;
- ``save_to_disk`` folders: ``data-00000-of-00001.arrow`` + ``state.json`` (a Dataset), or ``dataset_dict.json`` with
  one such folder per split (a DatasetDict);
- the ``load_dataset`` cache: ``<org>___<name>/<subset>/<version>/<hash>/<name>-<split>[-00000-of-00003].arrow`` beside
  ``dataset_info.json``, given at any level; when a subset was prepared twice the newest hash wins, as in ``datasets``;
- a Hub name (``HuggingFaceM4/the_cauldron``) that is not a local path: ``datasets.load_dataset`` resolves it, from
  the local cache without network when ``HF_HUB_OFFLINE=1``.

:func:`find_tables` returns the files per split (split names by :func:`table_split`); :func:`iter_columns` streams
the light columns of a file for planning, and workers read the heavy image column of one row with :func:`read_cell`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from converters._common import ESCAPES, relative_name, sniff_suffix, write_image_bytes
from phi3v_data.converter import ConversionError, ConvertUsageError, ImageWriter
from phi3v_data.io import UnsafePathError, resolve_inside

HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INSTALL = "pip install 'phi3v[hf]'"


class MissingExtraError(ConvertUsageError):
    """An optional dependency is not installed: a usage problem of the environment (exit status 2)."""

    exit_code = 2


def require(module: str, why: str) -> Any:
    """Import ``module`` or stop with a sentence naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{why} needs {module.split('.')[0]}, which is not installed: {INSTALL}") from None


@dataclass
class Tables:
    """The data files of one dataset (one subset), by split, and the folder paths in it are relative to."""

    root: Path
    splits: dict[str, list[Path]] = field(default_factory=dict)
    subset: str | None = None

    def name(self, path: Path) -> str:
        """How reports name a file (relative to the root when inside it)."""
        return relative_name(path, self.root)


def find_tables(source: Path | str, *, subset: str | None = None) -> Tables:
    """The parquet/arrow files of ``source`` for ``subset`` (needed when the source holds several), by split."""
    path = Path(source)
    if not path.exists():
        if HUB_NAME_RE.match(path.as_posix()):
            return _from_hub(path.as_posix(), subset)
        raise ConvertUsageError(f"{source} is neither a file, a folder, nor a Hub dataset name (org/name)")
    require("pyarrow", "reading parquet/arrow exports")
    root = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else _data_files(path)
    if not files:
        raise ConvertUsageError(
            f"{path} holds no Hugging Face export: expected *.parquet files, a save_to_disk folder "
            "(data-00000-of-00001.arrow + state.json) or a load_dataset cache folder (*.arrow + dataset_info.json)"
        )
    groups: dict[Path, list[Path]] = {}
    for file in files:
        groups.setdefault(_subset_dir(file), []).append(file)
    names = {folder: _subset_name(folder) for folder in groups}
    if subset is not None:
        chosen = [folder for folder in groups if names[folder] == subset]
        if not chosen:
            raise ConvertUsageError(f"{path} has no subset {subset!r} (it has: {', '.join(sorted(names.values()))})")
    elif len(groups) > 1:
        raise ConvertUsageError(
            f"{path} holds several subsets ({', '.join(sorted(names.values()))}): choose one with --subset"
        )
    else:
        chosen = list(groups)
    tables = Tables(root=root, subset=names[chosen[0]])
    for file in _newest_cache([f for folder in chosen for f in groups[folder]]):
        tables.splits.setdefault(table_split(file), []).append(file)
    return tables


def _data_files(folder: Path) -> list[Path]:
    """Every parquet/arrow data file under ``folder``, skipping ``datasets``' own work files and hidden folders."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".incomplete"))
        for name in sorted(filenames):
            if name.endswith((".parquet", ".arrow")) and not name.startswith(("cache-", "tmp")):
                found.append(Path(dirpath, name))
    return found


def _is_cache(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() and not (folder / "state.json").is_file()


def _subset_dir(file: Path) -> Path:
    """The folder that stands for a data file's subset (config); its splits are below it."""
    folder = file.parent
    if _is_cache(folder) and file.suffix == ".arrow":
        return folder.parent.parent  # <subset>/<version>/<hash>/file
    if (folder / "state.json").is_file():  # save_to_disk: a Dataset folder, or a split folder of a DatasetDict
        return folder.parent if (folder.parent / "dataset_dict.json").is_file() else folder
    if file.stem.isdigit() or folder.name == "data":  # the parquet converter's <subset>/<split>/0000.parquet
        return folder.parent
    return folder


def _subset_name(folder: Path) -> str:
    """A subset's name: its folder's, or in the cache the config name ``dataset_info.json`` records."""
    for info in sorted(folder.glob("*/*/dataset_info.json")):
        try:
            config = json.loads(info.read_text(encoding="utf-8")).get("config_name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(config, str) and config:
            return config
    return folder.name


def _newest_cache(files: list[Path]) -> list[Path]:
    """Files of a cached subset prepared more than once: only the newest ``<hash>`` folder's, as ``datasets`` picks."""
    cache_dirs = {
        f.parent
        for f in files
        if (f.parent / "dataset_info.json").is_file() and not (f.parent / "state.json").is_file()
    }
    if len(cache_dirs) <= 1:
        return files
    newest = max(cache_dirs, key=lambda d: ((d / "dataset_info.json").stat().st_mtime, str(d)))
    return [f for f in files if f.parent not in cache_dirs or f.parent == newest]


def _from_hub(name: str, subset: str | None) -> Tables:
    """A Hub dataset through ``datasets.load_dataset`` (its cache; offline with ``HF_HUB_OFFLINE=1``)."""
    datasets = require("datasets", f"reading the Hub dataset {name}")
    try:
        loaded = datasets.load_dataset(name, subset)
    except Exception as exc:  # datasets raises many kinds: not cached offline, unknown config, no network
        if os.environ.get("HF_HUB_OFFLINE"):
            hint = " (HF_HUB_OFFLINE is set: only the local cache is used)"
        else:
            hint = " (without network, set HF_HUB_OFFLINE=1 to read only the local cache)"
        raise ConvertUsageError(
            f"datasets could not load {name}{f' subset {subset}' if subset else ''}{hint}: {exc}"
        ) from None
    tables = Tables(root=Path(name), subset=subset)
    for split, dataset in loaded.items():
        files = [Path(entry["filename"]) for entry in dataset.cache_files]
        if not files:
            raise ConvertUsageError(
                f"{name} split {split} is held in memory, not in cache files: save_to_disk it and convert the folder"
            )
        tables.splits[safe_split_name(split)] = files
    first = next(iter(tables.splits.values()), [])
    if first:  # paths stored in rows are relative to the cached files, never to the working directory
        tables.root = first[0].parent
    return tables


def columns_of(path: Path) -> list[str]:
    """Column names of a parquet/arrow file."""
    if path.suffix == ".arrow":
        return list(_arrow_table(str(path)).schema.names)
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def iter_columns(path: Path, columns: Sequence[str], *, batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """Rows of ``path`` holding only ``columns`` (image bytes stay on disk until a worker needs them)."""
    return iter_table(path, batch_size=batch_size, columns=columns)


def image_entries(value: Any) -> list[Any] | str:
    """The images of one cell: the ``{"bytes", "path"}`` struct ``datasets`` writes, a list of them, or a path."""
    if value is None:
        return "no image"
    entries = value if isinstance(value, list) else [value]
    for entry in entries:
        if not (isinstance(entry, str) or isinstance(entry, dict) and (entry.get("bytes") or entry.get("path"))):
            return f"not an image (expected {{'bytes', 'path'}} or a path), got {type(entry).__name__}"
    return entries


def image_bytes(entry: Any, root: Path) -> bytes:
    """Encoded bytes of one image entry: embedded bytes, else the file its path names under ``root``.

    Raises :class:`UnsafePathError` for a path that leaves ``root`` (absolute, ``..``), OSError when it is missing.
    """
    if isinstance(entry, dict) and entry.get("bytes"):
        return entry["bytes"]
    rel = entry if isinstance(entry, str) else entry["path"]
    return resolve_inside(root, rel).read_bytes()


def write_images(out: ImageWriter, cell: Any, *, root: Path, stem: str) -> list[str]:
    """Write the images of one cell as ``<stem>.<format>`` (``<stem>_<k>`` when several) after checking each decodes."""
    entries = image_entries(cell)
    if isinstance(entries, str):
        raise ConversionError(entries)
    written = []
    for k, entry in enumerate(entries):
        where = f"image {k + 1}: " if len(entries) > 1 else ""
        stored = entry if isinstance(entry, str) else entry.get("path")
        try:
            data = image_bytes(entry, root)
        except UnsafePathError:
            raise ConversionError(f"{where}{ESCAPES} (image path {stored!r})") from None
        except OSError as exc:
            raise ConversionError(f"{where}image path {stored!r} cannot be read under {root}: {exc.strerror}") from None
        name = stem if len(entries) == 1 else f"{stem}_{k}"
        try:
            written.append(write_image_bytes(out, data, name + sniff_suffix(data)))
        except ConversionError as exc:
            raise ConversionError(f"{where}{exc}") from None
    return written


__all__ = [
    "INSTALL",
    "MissingExtraError",
    "Tables",
    "UnsafePathError",
    "columns_of",
    "find_tables",
    "image_bytes",
    "image_entries",
    "iter_columns",
    "require",
    "write_images",
]


# -- the files themselves: parquet files and save_to_disk arrow shards ---------------------------------------------


def table_files(source: Path) -> list[Path]:
    """Parquet/arrow files of a Hugging Face export: ``source`` itself or those up to two folders down."""
    if source.is_file():
        return [source] if source.suffix in (".parquet", ".arrow") else []
    found: list[Path] = []
    for pattern in ("*", "*/*", "*/*/*"):
        found += [p for p in source.glob(pattern) if p.suffix in (".parquet", ".arrow") and p.is_file()]
    found = [p for p in found if not p.name.startswith("cache-")]  # datasets' caches of .map() results, not splits
    return sorted(set(found))


_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}(?:-[0-9a-f]+)?$")


def table_split(path: Path) -> str:
    """Split of an export file as ``datasets`` lays them out (the release's name: ``validation`` stays ``validation``).

    - Hub data files: ``train-00000-of-00002.parquet``, ``train-00000-of-00001-2ce3….parquet``, ``test.parquet``;
    - the Hub's parquet converter (``refs/convert/parquet``): ``<config>/<split>/0000.parquet`` (``partial-<split>``);
    - the ``load_dataset`` cache: ``<builder>-<split>.arrow``, ``<builder>-<split>-00000-of-00003.arrow``
      (``parquet-train.arrow``; split names never hold ``-``);
    - ``save_to_disk``: ``<split>/data-00000-of-00001.arrow`` (a lone Dataset: ``state.json``'s ``_split``).
    """
    base = _SHARD_RE.sub("", path.stem)
    if base == "data":
        split = _saved_split(path.parent) or path.parent.name
    elif base.isdigit():
        split = path.parent.name.removeprefix("partial-")
    elif path.suffix == ".arrow" and "-" in base:
        split = base.rsplit("-", 1)[1]
    else:
        split = base
    return safe_split_name(split) or "train"


def safe_split_name(split: str) -> str:
    """A split name fit to name output files and folders (``partial train`` → ``partial_train``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", split)


def _saved_split(folder: Path) -> str | None:
    try:
        split = json.loads((folder / "state.json").read_text(encoding="utf-8")).get("_split")
    except (OSError, ValueError, AttributeError):
        return None
    return split if isinstance(split, str) and split else None


@lru_cache(maxsize=4)
def _arrow_table(path: str) -> Any:
    import pyarrow as pa

    source = pa.memory_map(path)  # zero-copy: random access costs no reading of other rows
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()


def iter_table(
    path: Path, *, batch_size: int = 64, columns: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of a parquet/arrow file as Python dicts, streamed in batches (memory stays bounded); only ``columns``
    when given (image bytes then stay on disk until a worker needs them)."""
    if path.suffix == ".arrow":
        table = _arrow_table(str(path))
        batches = (table if columns is None else table.select(list(columns))).to_batches(max_chunksize=batch_size)
    else:
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size,
                                                    columns=None if columns is None else list(columns))
    for batch in batches:
        yield from batch.to_pylist()


@lru_cache(maxsize=2)
def _parquet_group(path: str, group: int, column: str) -> list[Any]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(column).to_pylist()


def read_cell(path: Path, row: int, column: str) -> Any:
    """One cell of a parquet/arrow file; reading is cached per row group, so rows in order are cheap."""
    if path.suffix == ".arrow":
        return _arrow_table(str(path)).column(column)[row].as_py()
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if row < rows:
            return _parquet_group(str(path), group, column)[row]
        row -= rows
    raise ConversionError(f"{path}: row {row} does not exist")
