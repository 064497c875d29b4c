"""Records → LLaVA or ShareGPT (LLaMA-Factory) rows, so a converted dataset can leave for other tools.

Three layouts, each written the way the tool named reads it (checked against its loader's source):

- ``llava``: ``image`` is one path, as LLaVA-1.5's ``llava/train/train.py`` (``LazySupervisedDataset.__getitem__``:
  ``Image.open(os.path.join(image_folder, image_file))``) opens it. A record with several images cannot be written
  in this layout: it is reported and skipped (choose ``llava-multi`` or ``sharegpt``).
- ``llava-multi``: ``image`` is always a list, as LLaVA-NeXT / LLaVA-OneVision's ``train.py`` reads it
  (``if type(image_file) is list: image = [self.process_image(f) for f in image_file]``).
- ``sharegpt``: LLaMA-Factory's sharegpt format with ``"formatting": "sharegpt"`` and ``columns`` ``messages`` and
  ``images`` (role/content tags), as its ``data/README.md`` and the ``mllm_demo`` dataset describe: ``images`` is
  always a list, one ``<image>`` tag per image in the text.

``<|image_k|>`` tags become ``<image>`` tags and the row's images follow the order the tags appear in; a turn whose
text places no tags gets one ``<image>\\n`` per image in front, which is where the model saw them. Image paths are
written as stored (relative to the dataset's ``images/`` dir) or made relative to a folder the user names. The
record's ``task`` and ``reference`` have no place in either format and are left out; ``id`` is kept.

Example (``--to llava``)::

    {"id": "train-0000000000", "source": "folder", "task": "vqa",
     "conversations": [{"images": ["train/a.png"], "user": "What animal?", "assistant": "Cat"}]}

becomes::

    {"id": "train-0000000000", "image": "train/a.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat animal?"}, {"from": "gpt", "value": "Cat"}]}

and with ``--to sharegpt``::

    {"id": "train-0000000000", "images": ["train/a.png"],
     "messages": [{"role": "user", "content": "<image>\\nWhat animal?"}, {"role": "assistant", "content": "Cat"}]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from phi3v_data.io import OutputOverlapError, atomic_write, check_output_apart, iter_jsonl, write_jsonl
from schemas import IMAGE_TAG_RE, Record
from schemas.errors import UserError, first_validation_line
from schemas.layout import images_beside

Format = Literal["llava", "llava-multi", "sharegpt"]
LLAVA_IMAGE_TAG = "<image>"


class ExportError(UserError, ValueError):
    """A record the target format cannot express; it is reported and skipped."""


class ExportUsageError(UserError, ValueError):
    """The export cannot start (unknown output type, output would overwrite the input)."""


@dataclass(frozen=True, slots=True)
class ExportProblem:
    line: int
    id: str | None
    reason: str


@dataclass
class ExportResult:
    out: Path
    rows: int = 0
    problems: list[ExportProblem] = field(default_factory=list)


def tagged_turns(record: Record) -> tuple[list[tuple[str, str | None]], list[int]]:
    """Each turn as (user text with ``<image>`` tags, assistant), and the 1-based images in the order tags use them."""
    turns: list[tuple[str, str | None]] = []
    order: list[int] = []
    first = 1
    for turn in record.conversations:
        if LLAVA_IMAGE_TAG in turn.user or LLAVA_IMAGE_TAG in (turn.assistant or ""):
            raise ExportError(f"text holds a literal {LLAVA_IMAGE_TAG}, which the target format would read as an image")
        if IMAGE_TAG_RE.search(turn.user):
            order += [int(match.group(1)) for match in IMAGE_TAG_RE.finditer(turn.user)]
            text = IMAGE_TAG_RE.sub(LLAVA_IMAGE_TAG, turn.user)
        else:
            order += range(first, first + len(turn.images))
            text = f"{LLAVA_IMAGE_TAG}\n" * len(turn.images) + turn.user
        first += len(turn.images)
        turns.append((text, turn.assistant))
    if sorted(order) != list(range(1, first)):
        raise ExportError(f"image tags {order} do not place each of the record's {first - 1} image(s) exactly once")
    if turns[-1][1] is None and len(turns) > 1:
        raise ExportError("an unlabeled multi-turn record has no form in this format (turns must alternate)")
    return turns, order


def to_llava(record: Record, *, image_path: Callable[[str], str] = str, multi: bool = False) -> dict[str, Any]:
    """One LLaVA row: ``image`` one path (LLaVA-1.5; several images are refused), or with ``multi`` always a list
    (LLaVA-NeXT); absent for a record without images."""
    turns, order = tagged_turns(record)
    if not multi and len(order) > 1:
        raise ExportError(
            f"has {len(order)} images; LLaVA-1.5's trainer opens `image` as one path: "
            "export with --to llava-multi (LLaVA-NeXT) or --to sharegpt (LLaMA-Factory)"
        )
    images = [image_path(record.images[k - 1]) for k in order]
    row: dict[str, Any] = {"id": record.id}
    if images:
        row["image"] = images if multi else images[0]
    row["conversations"] = [
        {"from": role, "value": text}
        for user, assistant in turns
        for role, text in (("human", user), ("gpt", assistant))
        if text is not None
    ]
    return row


def to_sharegpt(record: Record, *, image_path: Callable[[str], str] = str) -> dict[str, Any]:
    """One ShareGPT row as LLaMA-Factory reads it (``messages`` with roles, ``images`` always a list)."""
    turns, order = tagged_turns(record)
    messages = [
        {"role": role, "content": text}
        for user, assistant in turns
        for role, text in (("user", user), ("assistant", assistant))
        if text is not None
    ]
    return {"id": record.id, "messages": messages, "images": [image_path(record.images[k - 1]) for k in order]}


def to_llava_multi(record: Record, *, image_path: Callable[[str], str] = str) -> dict[str, Any]:
    """One LLaVA-NeXT row: ``image`` always a list."""
    return to_llava(record, image_path=image_path, multi=True)


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {"llava": to_llava, "llava-multi": to_llava_multi,
                                                      "sharegpt": to_sharegpt}


def relative_to_folder(images_dir: Path, folder: Path) -> Callable[[str], str]:
    """Map a stored image path (relative to ``images_dir``) to a POSIX path relative to ``folder``."""
    base, target = os.path.abspath(images_dir), os.path.abspath(folder)

    def rebase(path: str) -> str:
        rel = os.path.relpath(os.path.join(base, path), target)
        if rel == ".." or rel.startswith(".." + os.sep):
            raise ExportError(f"image {path} is not inside the image folder {folder}")
        return Path(rel).as_posix()

    return rebase


def export_dataset(
    dataset: Path,
    out: Path,
    *,
    to: Format,
    image_folder: Path | None = None,
    on_record: Callable[[], None] | None = None,
) -> ExportResult:
    """Write every record of ``dataset`` as a ``to`` row into ``out`` (.json array or .jsonl), atomically.

    Records that do not parse or cannot be expressed are skipped and listed in ``result.problems``.
    """
    dataset, out = Path(dataset), Path(out)
    if out.suffix not in (".json", ".jsonl"):
        raise ExportUsageError(f"--out {out}: name a .json (one JSON array) or .jsonl (one row per line) file")
    try:
        check_output_apart(out, [("the dataset", dataset), ("the images folder", images_beside(dataset))])
    except OutputOverlapError as exc:
        raise ExportUsageError(str(exc)) from None
    image_path = relative_to_folder(images_beside(dataset), image_folder) if image_folder else str
    result = ExportResult(out=out)

    def rows() -> Iterator[dict[str, Any]]:
        for entry in iter_jsonl(dataset):
            if on_record is not None:
                on_record()
            record_id = str(entry.value["id"]) if isinstance(entry.value, dict) and "id" in entry.value else None
            try:
                if entry.error:
                    raise ExportError(entry.error)
                record = Record.model_validate(entry.value)
                yield BUILDERS[to](record, image_path=image_path)
            except ValidationError as exc:
                result.problems.append(ExportProblem(entry.lineno, record_id, first_validation_line(exc)))
            except ExportError as exc:
                result.problems.append(ExportProblem(entry.lineno, record_id, str(exc)))

    result.rows = write_jsonl(out, rows()) if out.suffix == ".jsonl" else _write_json_array(out, rows())
    return result


def _write_json_array(path: Path, rows: Iterable[Any]) -> int:
    """Stream rows into one JSON array (LLaVA's loader reads a single array), atomically. Returns the count."""
    count = 0
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write("[")
        for row in rows:
            handle.write(("\n" if count == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    return count
