"""The on-disk record format: one JSON object per line of a dataset's ``.jsonl``.

A record is a multi-turn conversation about zero or more images. Image paths are relative to the dataset's
``images/`` directory and use POSIX separators. Images are numbered globally across the record
(``<|image_1|>`` … ``<|image_N|>``), in the order the turns list them.

Example::

    {"id": "val-0000000300", "source": "ucf101", "task": "classification",
     "conversations": [{"images": ["val/BabyCrawling/v_BabyCrawling_g21_c04.0.jpg"],
                        "user": "Classify the video into one of the following classes: ...",
                        "assistant": "BabyCrawling"}]}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "BINARY_ANSWERS",
    "IMAGE_TAG_RE",
    "Record",
    "Reference",
    "Task",
    "Turn",
    "image_path_problem",
    "path_text_problem",
    "SCHEMA_PATH",
    "json_schema",
]

IMAGE_TAG_RE = re.compile(r"<\|image_(\d+)\|>")
"""An explicit image placeholder in user text; the number is the record-global image index (1-based)."""

_DRIVE_RE = re.compile(r"[A-Za-z]:")  # compiled once: the validator runs this on millions of paths

BINARY_ANSWERS: tuple[str, str] = ("no", "yes")
"""Assistant texts of binary tasks: label 0 is "no", label 1 is "yes" (AUROC uses P(yes))."""

Task = Literal["classification", "vqa", "binary", "caption", "chat"]
"""What evaluation measures: classification/binary → accuracy (+AUROC for binary), vqa → ANLS, others → none."""

SCHEMA_PATH = Path(__file__).with_name("record.schema.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Reference(_Strict):
    """Ground truth that evaluation uses and training does not."""

    answers: list[str] | None = Field(
        default=None, description="Every accepted answer for this turn (e.g. all DocVQA answers, scored with ANLS)."
    )
    label: Literal[0, 1] | None = Field(
        default=None, description="Binary ground truth (1 = 'yes'); binary tasks report AUROC from it."
    )


class Turn(_Strict):
    """One user message (with its images) and the assistant's reply."""

    images: list[str] = Field(default_factory=list, description="Paths relative to the dataset's images/ directory.")
    user: str = Field(description="User text; may place <|image_k|> tags (record-global k) to interleave images.")
    assistant: str | None = Field(
        default=None, description="Target reply; null only in unlabeled splits (e.g. test sets without answers)."
    )
    reference: Reference | None = Field(default=None, description="Extra ground truth for evaluation.")

    @model_serializer(mode="wrap")
    def _unlabeled_says_null(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        data.setdefault("assistant", None)  # written as null even where Nones are left out: unlabeled is explicit
        return data

    @field_validator("images")
    @classmethod
    def _relative_posix(cls, images: list[str]) -> list[str]:
        for path in images:
            if (problem := image_path_problem(path)) is not None:
                raise ValueError(f"image path {problem[1]}")
        return images


def path_text_problem(rel: str) -> str | None:
    """Which rule a path written in a data file breaks, judged on its text alone, or None: it must be non-empty,
    hold no NUL byte, be relative (no leading ``/`` or ``\\``, no drive: ``C:x``, ``C:\\x``, ``C:/x``) and never climb
    out with ``..`` (``/`` and ``\\`` both separate).

    The one rule of the toolkit: the schema checks image paths with it, and ``phi3v_data.io.resolve_inside`` every
    path it joins onto a root. A drive is one ASCII letter and a colon; ``1:x`` is a legal POSIX file name.
    """
    if not rel:
        return "the path is empty"
    if "\x00" in rel:
        return f"{rel!r} contains a NUL byte"
    if rel.startswith(("/", "\\")):
        return f"{rel!r} is absolute; paths in data files must be relative"
    if _DRIVE_RE.match(rel):
        return f"{rel!r} starts with a drive letter; paths in data files must be relative"
    if ".." in rel.replace("\\", "/").split("/"):
        return f"{rel!r} climbs out with '..'"
    return None


def image_path_problem(path: str) -> tuple[str, str] | None:
    """Why ``path`` is not a valid image path, as (kind, sentence): kind ``unsafe`` (:func:`path_text_problem`:
    absolute, a drive, ``..``, NUL) or ``form`` (empty, surrounding whitespace, ``\\`` separators).

    One rule set for the schema and for ``phi3v-data validate``, which reports each bad path as its own finding.
    """
    if not path or path.strip() != path:
        return "form", f"{path!r} is empty or has surrounding whitespace"
    if (problem := path_text_problem(path)) is not None:
        return "unsafe", problem
    if "\\" in path:
        return "form", f"{path!r} must use '/' separators"
    return None


class Record(_Strict):
    """One training or evaluation sample."""

    id: str = Field(min_length=1, description="Unique within a dataset file.")
    source: str | None = Field(default=None, description="Where the record came from (converter name).")
    source_split: str | None = Field(
        default=None,
        description="The split's name in the original release when the converter renamed it (dev_seen for val).",
    )
    task: Task = Field(default="chat", description="Selects evaluation metrics.")
    conversations: list[Turn] = Field(min_length=1)

    @model_validator(mode="after")
    def _labels_all_or_nothing(self) -> "Record":
        labeled = [t.assistant is not None for t in self.conversations]
        if any(labeled) and not all(labeled):
            raise ValueError("either every turn has an assistant reply or none does (unlabeled record)")
        return self

    @property
    def images(self) -> list[str]:
        """All image paths in global order."""
        return [path for turn in self.conversations for path in turn.images]

    @property
    def labeled(self) -> bool:
        return self.conversations[0].assistant is not None


def json_schema() -> dict:
    """The JSON Schema of one record, as committed in ``schemas/record.schema.json``."""
    return Record.model_json_schema()


def write_json_schema(path: Path = SCHEMA_PATH) -> None:
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")

