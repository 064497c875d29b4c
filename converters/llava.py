"""LLaVA and ShareGPT conversation files → records: each ``<image>`` tag becomes ``<|image_k|>`` in place.

One LLaVA row (``llava.json``, ``--image-folder coco``, ``--split train``)::

    {"id": "000000033471", "image": "train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "White and red."}]}

becomes (the image copied to ``OUT/images/train/train2017/000000033471.jpg``)::

    {"id": "000000033471", "source": "llava", "task": "chat",
     "conversations": [{"images": ["train/train2017/000000033471.jpg"],
                        "user": "<|image_1|>\\nWhat are the colors of the bus?", "assistant": "White and red."}]}

The ``sharegpt`` converter reads the LLaMA-Factory layout the same way: ``{"messages": [{"role": "user", "content":
"<image>…"}, {"role": "assistant", "content": "…"}], "images": ["a.jpg"]}``, or ``conversations`` with
``from``/``value`` (``human``/``gpt``), optional top-level ``system`` and ``id``.

Mapping rules (shared by both):
- ``image``/``images`` may be one path or a list, relative to ``--image-folder`` (default: the file's folder); a path
  that escapes it is refused. The k-th ``<image>`` tag of the human turns is the k-th image.
- A row with images but no ``<image>`` tag gets one ``<image>\\n`` per image in front of its first human turn (the
  LLaVA convention, and what the model sees for untagged images anyway). Any other tag/image count mismatch fails.
- System messages are prepended to the first human text (``system + "\\n\\n"``) rather than dropped: in ShareGPT data
  they often carry the task instruction, and the record format has no system slot.
- Turns must alternate human, gpt, human, gpt…; a single human turn without a reply makes an unlabeled record.
- Images land at ``images/<split>/<path>``; a path that already starts with ``<split>/`` (as ``phi3v-data export``
  writes it) is kept as is, so an exported dataset imports back to identical records.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phi3v_data.converter import (
    Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item, OutputClaims,
)
from phi3v_data.export import LLAVA_IMAGE_TAG
from phi3v_data.io import UnsafePathError, iter_jsonl, resolve_inside, stream_json_array
from phi3v_data.splits import Carved, carve_groups
from schemas import IMAGE_TAG_RE, Task
from schemas.errors import first_validation_line

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RowError(ValueError):
    """Why one row cannot become a record."""


class LlavaOptions(ConverterOptions):
    image_folder: Path | None = Field(
        default=None, description="Folder the rows' image paths are relative to [default: the file's folder]."
    )
    split: str = Field(
        default="train", pattern=r"^[A-Za-z0-9_-]+$",
        description="Split the file becomes (images/<split>/, <name>_<split>.jsonl).",
    )
    task: Task = Field(default="chat", description="Task of every record (picks evaluation metrics).")
    val_ratio: float = Field(
        default=0.0, ge=0, lt=1,
        description="Share of rows carved into val (rows about one image stay together), with --seed.",
    )

    @model_validator(mode="after")
    def _val_from_another_split(self) -> "LlavaOptions":
        if self.val_ratio > 0 and self.split == "val":
            raise ValueError("--val-ratio carves val out of --split; it cannot be val itself")
        return self


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(validation_alias="from")
    text: str = Field(validation_alias="value")


class _OpenAIMessage(_Message):
    role: str
    text: str = Field(validation_alias="content")


class _Row(BaseModel):
    """A LLaVA row, or a ShareGPT row with ``conversations``."""

    model_config = ConfigDict(extra="ignore")
    id: str | int | None = None
    images: list[str] = Field(default_factory=list, validation_alias=AliasChoices("images", "image"))
    system: str | None = None
    messages: list[_Message] = Field(validation_alias="conversations")

    @field_validator("images", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else value


class _MessagesRow(_Row):
    """A ShareGPT row as LLaMA-Factory writes it: ``messages`` with ``role``/``content``."""

    messages: list[_OpenAIMessage] = Field(validation_alias="messages")  # type: ignore[assignment]


def parse_row(raw: Any) -> _Row:
    """A LLaVA or ShareGPT row; raises :class:`RowError` naming the bad field."""
    if not isinstance(raw, dict):
        raise RowError(f"a row must be a JSON object, not {type(raw).__name__}")
    try:
        return (_MessagesRow if "messages" in raw else _Row).model_validate(raw)
    except ValidationError as exc:
        raise RowError(first_validation_line(exc)) from None


def _pairs(row: _Row) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(system text, [(human, gpt)]) of a row, checking that the turns alternate."""
    roles = [(ROLES.get(m.role.lower()), m) for m in row.messages]
    unknown = [m.role for role, m in roles if role is None]
    if unknown:
        raise RowError(f"unsupported role {unknown[0]!r} (expected human/user, gpt/assistant or system)")
    system = [row.system] if row.system else []
    while roles and roles[0][0] == "system":
        system.append(roles.pop(0)[1].text)
    skipped = len(row.messages) - len(roles)
    for position, (role, message) in enumerate(roles):
        expected = ("user", "assistant")[position % 2]
        if role != expected:
            wanted = "a human" if expected == "user" else "a gpt"
            raise RowError(
                f"message {skipped + position + 1} is {message.role!r} where {wanted} turn belongs: "
                "turns must alternate human, gpt"
            )
    pairs = [(roles[i][1].text, roles[i + 1][1].text if i + 1 < len(roles) else None) for i in range(0, len(roles), 2)]
    if not pairs:
        raise RowError("conversation has no human turn")
    if pairs[-1][1] is None and len(pairs) > 1:
        raise RowError("the last human turn has no reply (only a single-turn row may be unlabeled)")
    return ("\n\n".join(system) or None), pairs


def map_row(row: _Row) -> tuple[list[dict[str, Any]], list[str]]:
    """Turns of the record (``images`` holding the row's own paths) and the row's images in global order."""
    system, pairs = _pairs(row)
    for human, gpt in pairs:
        if IMAGE_TAG_RE.search(human):
            raise RowError("text already holds <|image_k|> tags; only <image> tags are understood")
        if gpt is not None and LLAVA_IMAGE_TAG in gpt:
            raise RowError("a gpt turn holds an <image> tag")
    if system:
        pairs[0] = (f"{system}\n\n{pairs[0][0]}", pairs[0][1])
    tags = sum(human.count(LLAVA_IMAGE_TAG) for human, _ in pairs)
    if tags == 0 and row.images:
        pairs[0] = ((LLAVA_IMAGE_TAG + "\n") * len(row.images) + pairs[0][0], pairs[0][1])
    elif tags != len(row.images):
        raise RowError(f"{tags} <image> tag(s) but {len(row.images)} image(s)")
    turns, next_image = [], 0
    for human, gpt in pairs:
        pieces = human.split(LLAVA_IMAGE_TAG)
        text = pieces[0]
        for offset, piece in enumerate(pieces[1:], start=next_image + 1):
            text += f"<|image_{offset}|>{piece}"
        turn_images = row.images[next_image : next_image + len(pieces) - 1]
        next_image += len(turn_images)
        turns.append({"images": turn_images, "user": text, "assistant": gpt})
    return turns, row.images


def image_destination(rel: str, split: str) -> str:
    """Where an image of the row lands under ``images/``: ``<split>/<rel>`` unless ``rel`` starts with ``<split>/``."""
    parts = [p for p in PurePosixPath(rel.replace("\\", "/")).parts if p != "."]
    if not parts:
        raise RowError(f"image path {rel!r} names no file")
    # an image called just `train` stays under the split folder (images/train/train), never in its place
    return "/".join(parts if parts[0] == split and len(parts) > 1 else [split, *parts])


@dataclass(frozen=True, slots=True)
class _Job:
    record: dict[str, Any]
    copies: tuple[tuple[str, str], ...]


class LlavaConverter(Converter):
    """LLaVA conversation json/jsonl (<image> tags, image or image list per row).

    Each <image> tag becomes <|image_k|> in place; rows with images but no tags get them in front of the first
    human turn; system turns are prepended to the first human text. The file becomes one split (--split).

    \b
    Example:
        phi3v-data convert llava llava_instruct_150k.json --image-folder coco/train2017 --out data/llava
    """

    name: ClassVar[str] = "llava"
    output_name: ClassVar[str] = "llava"
    Options = LlavaOptions
    options: LlavaOptions

    def plan(self, source: Path) -> Iterator[Item | Failure | Carved]:
        """Two streamed passes over the file: the first learns which rows repeat an id (and the val carve), the
        second yields the items, so no more than a few integers per row stay in memory (millions of rows)."""
        if not source.is_file():
            raise ConvertUsageError(f"{source} is not a file: give the {self.name} .json or .jsonl file itself")
        folder = self.options.image_folder or source.parent
        if not folder.is_dir():
            raise ConvertUsageError(f"--image-folder {folder} is not a directory")
        split = self.options.split
        survey = _Survey.of(source, carve=self.options.val_ratio > 0)
        to_val: set[int] = set()
        if self.options.val_ratio > 0:
            to_val, carved = carve_groups(survey.groups(), self.options.val_ratio, seed=self.options.seed,
                                          split="val", source=split)
            yield carved
        survey.forget_groups()
        placed = OutputClaims()  # two different files never land on one path
        for ordinal, entry in _parsed_rows(source, split):
            if isinstance(entry, Failure):
                yield entry
                continue
            if ordinal >= len(survey.rank) or (ordinal % 65536 == 0 and _stamp(source) != survey.stamp):
                raise _changed(source)
            named = survey.name(ordinal, entry, source.name, split)
            if isinstance(named, Failure):
                yield named
                continue
            yield self._item(entry, named, "val" if ordinal in to_val else split, folder, placed)
        if _stamp(source) != survey.stamp:
            raise _changed(source)

    def _item(
        self, r: _Parsed, row_id: str | None, row_split: str, folder: Path, placed: OutputClaims
    ) -> Item | Failure:
        try:
            copies = tuple(_placement(folder, p, row_split, placed) for p in r.paths)
        except (RowError, UnsafePathError) as exc:
            return Failure(r.where, str(exc), row_split, r.line)
        for turn in r.turns:  # the turn's own paths → their places under images/
            turn["images"] = [image_destination(p, row_split) for p in turn["images"]]
        record: dict[str, Any] = {"task": self.options.task, "conversations": r.turns}
        if row_id is not None:
            record["id"] = row_id
        return Item(key=r.key, split=row_split, payload=_Job(record, copies))

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        job: _Job = item.payload
        for src, rel in job.copies:
            source, target = Path(src), out.path(rel)
            if source.is_file() and target.is_file() and target.stat().st_size == source.stat().st_size:
                continue  # rows often share an image: copied once (plan guarantees one source per target)
            out.copy(source, rel)
        return [job.record]


class ShareGPTConverter(LlavaConverter):
    """ShareGPT / LLaMA-Factory json/jsonl (messages or conversations, images list).

    Same mapping as the llava converter: <image> tags → <|image_k|>, system turns prepended to the first user text.

    \b
    Example:
        phi3v-data convert sharegpt mllm_demo.json --image-folder data/ --out data/demo --split train
    """

    name: ClassVar[str] = "sharegpt"
    output_name: ClassVar[str] = "sharegpt"


@dataclass(slots=True)
class _Parsed:
    """A row that parsed: where it is, its id (as the row gives it), its turns and image paths (as the row names
    them)."""

    where: str
    line: int | None
    id: str | None
    turns: list[dict[str, Any]]
    paths: list[str]

    @property
    def key(self) -> str:
        return self.where if self.line is None else f"{self.where}:{self.line}"


def _parsed_rows(source: Path, split: str) -> Iterator[tuple[int, _Parsed | Failure]]:
    """Every row of ``source`` in file order: (ordinal among the rows that parse, the row), or (-1, why not)."""
    ordinal = 0
    for where, line, raw, error in _rows(source):
        try:
            if error:
                raise RowError(error)
            row = parse_row(raw)
            turns, paths = map_row(row)
        except RowError as exc:
            yield -1, Failure(where, str(exc), split, line)
            continue
        yield ordinal, _Parsed(where, line, None if row.id is None else str(row.id), turns, paths)
        ordinal += 1


def _stamp(source: Path) -> tuple[int, int]:
    """Size and modification time: the second pass must read the file the first one read."""
    stat = source.stat()
    return stat.st_size, stat.st_mtime_ns


def _changed(source: Path) -> ConvertUsageError:
    return ConvertUsageError(f"{source} changed while it was read; rerun the same command once it is written")


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little",
                          signed=True)


class _Survey:
    """What the first pass learns, in a few integers per row: which rows repeat an earlier row (same id, same
    conversation), each other row's rank among the distinct rows sharing its id, and (for ``--val-ratio``) the
    image group of each row.

    llava_instruct_150k's ids are COCO image ids: 157,712 rows about at most 118,287 images share them, and each is
    its own conversation. Only a row whose conversation and images equal an earlier row with its id is a duplicate;
    the others get distinct ids (``<id>-2``, ``<id>-3`` …, skipping ids the file already holds).
    """

    def __init__(self) -> None:
        self.ids, self.pairs, self.locators = array("q"), array("q"), array("q")
        self.has_id = bytearray()
        self.group_names: dict[str, int] = {}
        self.group_of = array("q")
        self.rank: Any = None  # per row: -1 duplicate, 0 its own id, k ≥ 1 the k-th other row with that id
        self.first: dict[int, int] = {}  # duplicate row → the row it repeats
        self.taken: Any = None  # sorted digests of every id the file holds
        self.last: dict[int, int] = {}  # id digest → the last number given to one of its rows (<id>-<number>)
        self.stamp: tuple[int, int] = (0, 0)  # the file's size and mtime when the first pass began

    @classmethod
    def of(cls, source: Path, *, carve: bool) -> "_Survey":
        survey = cls()
        survey.stamp = _stamp(source)
        for ordinal, entry in _parsed_rows(source, ""):
            if isinstance(entry, _Parsed):
                survey._add(entry, carve=carve)
        survey._rank()
        return survey

    def _add(self, row: _Parsed, *, carve: bool) -> None:
        content = json.dumps([row.turns, row.paths], sort_keys=True)
        self.has_id.append(row.id is not None)
        self.ids.append(_digest(row.id) if row.id is not None else 0)
        self.pairs.append(_digest(f"{row.id}\x00{content}") if row.id is not None else 0)
        self.locators.append(row.line if row.line is not None else int(row.where.rpartition("[")[2][:-1]))
        if carve:  # rows about the same images stay together: a val image never also trains
            name = "\n".join(row.paths) or f"row {row.key}"
            self.group_of.append(self.group_names.setdefault(name, len(self.group_names)))

    def _rank(self) -> None:
        import numpy as np  # noqa: PLC0415 - only this pass needs it

        count = len(self.has_id)
        with_id = np.flatnonzero(np.frombuffer(bytes(self.has_id), dtype=np.uint8)) if count else np.zeros(0, np.int64)
        ids = np.frombuffer(self.ids, dtype=np.int64)[with_id] if count else np.zeros(0, np.int64)
        pairs = np.frombuffer(self.pairs, dtype=np.int64)[with_id] if count else np.zeros(0, np.int64)
        _, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
        first_row = with_id[first[inverse]]
        repeats = first_row != with_id
        self.first = dict(zip(with_id[repeats].tolist(), first_row[repeats].tolist(), strict=True))
        rank = np.zeros(count, dtype=np.int32)
        rank[with_id[repeats]] = -1
        kept, kept_ids = with_id[~repeats], ids[~repeats]
        order = np.argsort(kept_ids, kind="stable")  # rows of one id together, in file order
        sorted_ids = kept_ids[order]
        starts = np.flatnonzero(np.append(True, sorted_ids[1:] != sorted_ids[:-1])) if len(order) else order
        runs = np.diff(np.append(starts, len(order)))
        rank[kept[order]] = np.arange(len(order)) - np.repeat(starts, runs)
        self.rank, self.taken = rank, np.unique(ids)
        self.ids = self.pairs = array("q")

    def groups(self) -> dict[tuple[str, str], list[int]]:
        """Image group → its rows (duplicates left out), for :func:`carve_groups`."""
        names = list(self.group_names)
        members: dict[tuple[str, str], list[int]] = {}
        for ordinal, group in enumerate(self.group_of):
            if self.rank[ordinal] >= 0:
                members.setdefault(("", names[group]), []).append(ordinal)
        return members

    def forget_groups(self) -> None:
        self.group_names, self.group_of = {}, array("q")

    def name(self, ordinal: int, row: _Parsed, file: str, split: str) -> str | None | Failure:
        """The row's record id (None: numbered by the engine), or the Failure of a duplicate row."""
        rank = int(self.rank[ordinal])
        if rank < 0:
            first = self.locators[self.first[ordinal]]
            where = f"line {first}" if row.line is not None else f"{file}[{first}]"
            return Failure(row.where, f"duplicate of {where}: same id {row.id!r} and the same conversation", split,
                           row.line)
        if rank == 0:
            return row.id
        base = _digest(row.id)  # the numbers an id's rows get only grow: each starts past the last one given
        number = max(rank + 1, self.last.get(base, 0) + 1)
        while self._taken(f"{row.id}-{number}"):
            number += 1
        self.last[base] = number
        return f"{row.id}-{number}"

    def _taken(self, name: str) -> bool:
        """True when the file holds ``name`` as an id (``<id>-<n>`` of two ids never coincide: n has no ``-``)."""
        digest = _digest(name)
        at = int(self.taken.searchsorted(digest))
        return at < len(self.taken) and int(self.taken[at]) == digest


def _placement(folder: Path, rel: str, split: str, placed: OutputClaims) -> tuple[str, str]:
    """(source file, destination under images/) of one image path of a row."""
    try:
        src = str(resolve_inside(folder, rel))
    except UnsafePathError as exc:
        raise RowError(f"image path refused: {exc}") from None
    dest = image_destination(rel, split)
    clash = placed.claim(dest, src)
    if clash is not None:
        raise RowError(clash)
    return src, dest


def _rows(source: Path) -> Iterator[tuple[str, int | None, Any, str | None]]:
    """(where, line, raw row, parse error) of a JSON array or JSON lines (by the first byte), both streamed.

    A JSON array is read element by element (:func:`stream_json_array`), so a file of millions of rows never sits
    in memory whole; ``where`` names the row's index (``llava.json[7]``) and a row that does not parse also its line.
    """
    with open(source, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head != b"[":
        for entry in iter_jsonl(source):
            yield source.name, entry.lineno, entry.value, entry.error
        return
    try:
        for element in stream_json_array(source):
            where = f"{source.name}[{element.index}]"
            yield where, element.line if element.error else None, element.value, element.error
    except UnicodeDecodeError as exc:
        raise ConvertUsageError(f"{source}: not UTF-8 ({exc.reason}); save the file as UTF-8") from None
    except ValueError as exc:
        raise ConvertUsageError(f"{source}: not valid JSON ({exc}); fix the file or convert it to JSON lines") from None


__all__ = ["LlavaConverter", "ShareGPTConverter", "parse_row", "map_row", "image_destination", "RowError"]
