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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from converters._common import first_error
from phi3v_data.convert import Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item, OutputClaims
from phi3v_data.export import IMAGE_TAG
from phi3v_data.io import UnsafePathError, iter_jsonl, resolve_inside, stream_json_array
from phi3v_data.splits import Carved, carve_groups
from schemas import IMAGE_TAG_RE, Task

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RowError(ValueError):
    """Why one row cannot become a record."""


class LlavaOptions(ConverterOptions):
    image_folder: Path | None = Field(default=None, description="Folder the rows' image paths are relative to [default: the file's folder].")
    split: str = Field(default="train", pattern=r"^[A-Za-z0-9_-]+$", description="Split the file becomes (images/<split>/, <name>_<split>.jsonl).")
    task: Task = Field(default="chat", description="Task of every record (picks evaluation metrics).")
    val_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Share of rows carved into val (rows about one image stay together), with --seed."
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
        raise RowError(first_error(exc)) from None


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
            raise RowError(f"message {skipped + position + 1} is {message.role!r} where {wanted} turn belongs: turns must alternate human, gpt")
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
        if gpt is not None and IMAGE_TAG in gpt:
            raise RowError("a gpt turn holds an <image> tag")
    if system:
        pairs[0] = (f"{system}\n\n{pairs[0][0]}", pairs[0][1])
    tags = sum(human.count(IMAGE_TAG) for human, _ in pairs)
    if tags == 0 and row.images:
        pairs[0] = ((IMAGE_TAG + "\n") * len(row.images) + pairs[0][0], pairs[0][1])
    elif tags != len(row.images):
        raise RowError(f"{tags} <image> tag(s) but {len(row.images)} image(s)")
    turns, next_image = [], 0
    for human, gpt in pairs:
        pieces = human.split(IMAGE_TAG)
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
        if not source.is_file():
            raise ConvertUsageError(f"{source} is not a file: give the {self.name} .json or .jsonl file itself")
        folder = self.options.image_folder or source.parent
        if not folder.is_dir():
            raise ConvertUsageError(f"--image-folder {folder} is not a directory")
        split = self.options.split
        entries: list[_Parsed | Failure] = []  # in file order, so failures are reported in row order
        for where, line, raw, error in _rows(source):
            try:
                if error:
                    raise RowError(error)
                row = parse_row(raw)
                turns, paths = map_row(row)
            except RowError as exc:
                entries.append(Failure(where, str(exc), split, line))
                continue
            entries.append(_Parsed(where, line, None if row.id is None else str(row.id), turns, paths))
        rows = [entry for entry in entries if isinstance(entry, _Parsed)]
        _distinct_ids(rows, split)
        splits: dict[str, str] = {}
        if self.options.val_ratio > 0:
            groups: dict[tuple[str, str], list[str]] = {}
            for r in rows:  # rows about the same images stay together: a val image never also trains
                if r.duplicate is None:
                    groups.setdefault(("", "\n".join(r.paths) or f"row {r.key}"), []).append(r.key)
            moved, carved = carve_groups(groups, self.options.val_ratio, seed=self.options.seed, split="val", source=split)
            splits = dict.fromkeys(moved, "val")
            yield carved
        placed = OutputClaims()  # two different files never land on one path
        for r in entries:
            if isinstance(r, Failure) or r.duplicate is not None:
                yield r if isinstance(r, Failure) else r.duplicate
                continue
            row_split = splits.get(r.key, split)
            try:
                copies = tuple(_placement(folder, p, row_split, placed) for p in r.paths)
            except (RowError, UnsafePathError) as exc:
                yield Failure(r.where, str(exc), row_split, r.line)
                continue
            for turn in r.turns:  # the turn's own paths → their places under images/
                turn["images"] = [image_destination(p, row_split) for p in turn["images"]]
            record: dict[str, Any] = {"task": self.options.task, "conversations": r.turns}
            if r.id is not None:
                record["id"] = r.id
            yield Item(key=r.key, split=row_split, payload=_Job(record, copies))

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
    """A row that parsed: where it is, its id (made distinct), its turns and image paths (as the row names them)."""

    where: str
    line: int | None
    id: str | None
    turns: list[dict[str, Any]]
    paths: list[str]
    duplicate: Failure | None = None
    """Set when the row repeats an earlier one (same id, same conversation): reported, not converted."""

    @property
    def key(self) -> str:
        return self.where if self.line is None else f"{self.where}:{self.line}"


def _distinct_ids(rows: list[_Parsed], split: str) -> None:
    """Give rows that share an id distinct ids (``<id>-2``, ``<id>-3`` …) unless they repeat an earlier row exactly.

    llava_instruct_150k's ids are COCO image ids: 157,712 rows about at most 118,287 images share them, and each is
    its own conversation. Only a row whose conversation and images equal an earlier row with its id is a duplicate.
    """
    taken = {row.id for row in rows if row.id is not None}
    seen: dict[str, list[tuple[bytes, _Parsed]]] = {}  # a digest of each conversation, not its text
    for row in rows:
        if row.id is None:
            continue
        content = hashlib.blake2b(json.dumps([row.turns, row.paths], sort_keys=True).encode(), digest_size=16).digest()
        earlier = seen.setdefault(row.id, [])
        same = next((first for text, first in earlier if text == content), None)
        if same is not None:
            where = same.where if same.line is None else f"line {same.line}"
            row.duplicate = Failure(row.where, f"duplicate of {where}: same id {row.id!r} and the same conversation", split, row.line)
            continue
        earlier.append((content, row))
        if len(earlier) > 1:
            number = len(earlier)
            while f"{row.id}-{number}" in taken:
                number += 1
            row.id = f"{row.id}-{number}"
            taken.add(row.id)


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
            yield f"{source.name}[{element.index}]", element.line if element.error else None, element.value, element.error
    except UnicodeDecodeError as exc:
        raise ConvertUsageError(f"{source}: not UTF-8 ({exc.reason}); save the file as UTF-8") from None
    except ValueError as exc:
        raise ConvertUsageError(f"{source}: not valid JSON ({exc}); fix the file or convert it to JSON lines") from None


__all__ = ["LlavaConverter", "ShareGPTConverter", "parse_row", "map_row", "image_destination", "RowError"]
