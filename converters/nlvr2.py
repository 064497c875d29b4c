"""NLVR2 (Suhr et al., 2019) as released: ``train.json``, ``dev.json``, ``test1.json`` (JSON lines, maybe in ``data/``)
plus the image folders, two images per sentence.

The images of ``dev-850-0-0`` are ``dev-850-0-img0.png`` (left) and ``dev-850-0-img1.png`` (right): the identifier
without its last ``-<n>``. They are found at ``[images/]train/<directory>/`` (train lines carry ``directory``) or
anywhere under the image root by file name, which covers ``images/dev/``, ``dev/``, ``test1/`` and flat copies. The
image root is the dataset root, or ``--images DIR`` when the json files are in a clone of the NLVR repository
(``nlvr/nlvr2/data/{train,dev,test1}.json``) and the images were downloaded elsewhere.
Sentences about the same pair are converted together so each pair is copied once; records keep the file's order
of first appearance of each pair. A file in which no line has a ``label`` becomes an unlabeled split.
``dev`` is written as the ``val`` split and ``test1`` as ``test`` (records keep ``source_split``); ids stay the
release's identifiers.

One line of ``dev.json``::

    {"identifier": "dev-850-0-0", "sentence": "One image shows exactly two brown acorns.", "label": "False",
     "left_url": "http://…", "right_url": "http://…", "writer": "103", "synset": "acorn", "query": "acorn5"}

becomes, in ``nlvr2_val.jsonl``::

    {"id": "dev-850-0-0", "source": "nlvr2", "source_split": "dev", "task": "binary",
     "conversations": [{"images": ["val/dev-850-0-img0.png", "val/dev-850-0-img1.png"],
                        "user": "The first image is the left one, the second the right one. Is this statement about the pair true? \\"One image shows exactly two brown acorns.\\"\\nAnswer yes or no.",
                        "assistant": "no", "reference": {"label": 0}}]}
"""  # noqa: E501 (the example record's user text is one JSON string)

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from converters._common import (
    MISSING_LABEL,
    BasenameIndex,
    binary_turn,
    check_template,
    find_named_files,
    locate,
    read_json_lines,
    relative_name,
)
from phi3v_data.converter import Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item
from phi3v_data.io import UnsafePathError
from phi3v_data.splits import output_names

SPLIT_FILES = ("train", "dev", "test1", "test2")
OUTPUT_SPLITS = {"train": "train", "dev": "val", "test1": "test"}
"""Release file → output split (the public test set is test1; test2, released later, stays test2)."""
IDENTIFIER_RE = re.compile(r"^(?P<pair>[A-Za-z0-9_]+-\d+-\d+)-\d+$")
DEFAULT_PROMPT = (
    "The first image is the left one, the second the right one. "
    'Is this statement about the pair true? "{sentence}"\nAnswer yes or no.'
)
_LABELS = {"true": 1, "false": 0}


class NLVR2Line(BaseModel):
    """One annotation line; URLs, writer ids and the like are ignored."""

    model_config = ConfigDict(extra="ignore")

    identifier: str = Field(pattern=IDENTIFIER_RE.pattern)
    sentence: str
    label: int | None = None
    directory: str | None = None

    @field_validator("label", mode="before")
    @classmethod
    def _true_false(cls, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or value in (0, 1):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in _LABELS:
            return _LABELS[value.strip().lower()]
        raise ValueError(f"expected 'True' or 'False', got {value!r}")

    @field_validator("directory", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> str | None:
        return None if value is None else str(value)


class NLVR2Options(ConverterOptions):
    prompt: str = Field(default=DEFAULT_PROMPT, description="User text; {sentence} is replaced by the statement.")
    images: Path | None = Field(
        default=None, description="Folder holding the images (train/, dev/, test1/) [default: the dataset root]."
    )

    @field_validator("images")
    @classmethod
    def _is_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value

    @field_validator("prompt")
    @classmethod
    def _has_sentence(cls, value: str) -> str:
        return check_template(value, "sentence")


class NLVR2Converter(Converter):
    """NLVR2 release (train/dev/test1.json + image folders) → two-image yes/no questions."""

    name = "nlvr2"
    version = "1"
    output_name = "nlvr2"
    Options = NLVR2Options
    options: NLVR2Options

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        files = find_named_files(source, [f"{split}.json" for split in SPLIT_FILES])
        if not files:
            raise ConvertUsageError(
                f"{source} is not an NLVR2 release: expected train.json, dev.json or test1.json (JSON lines) in it "
                "or in its data/ folder, with the images under images/<split>/ or <split>/"
            )
        # the images sit beside the annotations or beside their data/ folder, unless --images names their folder
        images = self.options.images or source
        index = BasenameIndex(images)
        names = output_names([path.stem for path in files], OUTPUT_SPLITS)
        for path in files:
            yield from self._plan_file(path, names[path.stem], root=source, images=images, index=index)

    def _plan_file(
        self, path: Path, split: str, *, root: Path, images: Path, index: BasenameIndex
    ) -> Iterator[Item | Failure]:
        official, file = path.stem, relative_name(path, root)
        pairs: dict[str, list[tuple[int, NLVR2Line]]] = {}
        for entry in read_json_lines(path, NLVR2Line, file=file):
            if isinstance(entry, Failure):
                yield Failure(entry.file, entry.reason, split, entry.line)
                continue
            match = IDENTIFIER_RE.match(entry[1].identifier)
            assert match is not None  # the model's pattern already checked it
            pairs.setdefault(match["pair"], []).append(entry)
        labeled = any(line.label is not None for lines in pairs.values() for _, line in lines)
        for pair, lines in pairs.items():
            lineno, first = lines[0]
            try:
                pair_images = [
                    self._image(images, index, official, first.directory, f"{pair}-img{k}.png") for k in (0, 1)
                ]
            except UnsafePathError as exc:
                yield Failure(file, f"refused: {exc}", split, lineno)
                continue
            except FileNotFoundError as exc:
                hint = "" if self.options.images else " (images kept elsewhere? pass --images DIR)"
                yield Failure(file, f"{exc}{hint}", split, lineno)
                continue
            sentences = []
            for lineno, line in lines:
                if labeled and line.label is None:
                    yield Failure(file, MISSING_LABEL, split, lineno)
                else:
                    sentences.append({"id": line.identifier, "sentence": line.sentence, "label": line.label})
            if sentences:
                yield Item(
                    f"{split}/{pair}", split, {"images": pair_images, "sentences": sentences}, source_split=official
                )

    @staticmethod
    def _image(root: Path, index: BasenameIndex, split: str, directory: str | None, name: str) -> str:
        """Path of one image: the official train layout first (``[images/]train/<directory>/``), then by file name
        anywhere under the root. ``split`` is the release's name (``dev``, ``test1``): it names the image folders."""
        rel = f"{split}/{directory}/{name}" if directory else name
        found = locate(root, rel, index, bases=(root / "images", root))
        if found is None:
            raise FileNotFoundError(f"image {name} not found under {root}")
        return str(found)

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        images = [out.copy(Path(src), f"{item.split}/{Path(src).name}") for src in item.payload["images"]]
        records = []
        for entry in item.payload["sentences"]:
            turn = binary_turn(images, self.options.prompt.format(sentence=entry["sentence"]), entry["label"])
            records.append({"id": entry["id"], "task": "binary", "conversations": [turn]})
        return records
