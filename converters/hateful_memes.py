"""Hateful Memes (Facebook AI, 2020) as released: ``img/``, ``train.jsonl``, ``dev_seen.jsonl``, ``dev_unseen.jsonl``,
``test_seen.jsonl``, ``test_unseen.jsonl`` (older releases: ``dev.jsonl``, ``test.jsonl``), possibly inside ``data/``.

Splits get the names training and evaluation look for: ``train``; ``dev_seen`` (older releases: ``dev``) → ``val``;
``test_unseen`` (older: ``test``) → ``test``. ``dev_unseen`` and ``test_seen`` stay extra splits of their own name.
Renamed records keep the release's name in ``source_split``. The image comes from the ``img`` field, never the ``id``
(ids lose leading zeros: id 1235 is ``img/01235.png``); an image missing at that path is looked up by file name under
the dataset root. A file in which no line has a ``label`` (the original test sets) becomes an unlabeled split.

One line of ``dev_seen.jsonl``::

    {"id": 8291, "img": "img/08291.png", "label": 1, "text": "white people is this a shooting range"}

becomes, in ``hateful_memes_val.jsonl``::

    {"id": "val-8291", "source": "hateful-memes", "source_split": "dev_seen", "task": "binary",
     "conversations": [{"images": ["val/08291.png"],
                        "user": "The text on this meme reads: \\"white people is this a shooting range\\"\\nIs this meme hateful? Answer yes or no.",
                        "assistant": "yes", "reference": {"label": 1}}]}
"""  # noqa: E501 (the example record's user text is one JSON string)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

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
from phi3v_data.converter import (
    Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item, OutputClaims,
)
from phi3v_data.io import UnsafePathError
from phi3v_data.splits import output_names

SPLIT_FILES = ("train", "dev", "dev_seen", "dev_unseen", "test", "test_seen", "test_unseen")
OUTPUT_SPLITS = {"dev_seen": "val", "dev": "val", "test_unseen": "test", "test": "test"}
"""Release file → output split; the first of this order present takes the name (a dev.jsonl beside dev_seen stays
dev)."""
DEFAULT_PROMPT = 'The text on this meme reads: "{text}"\nIs this meme hateful? Answer yes or no.'


class MemeLine(BaseModel):
    """One annotation line; unknown keys are ignored (later releases added some)."""

    model_config = ConfigDict(extra="ignore")

    id: int | str
    img: str = Field(min_length=1)
    text: str
    label: Literal[0, 1] | None = None


class HatefulMemesOptions(ConverterOptions):
    prompt: str = Field(default=DEFAULT_PROMPT, description="User text; {text} is replaced by the meme's text.")

    @field_validator("prompt")
    @classmethod
    def _has_text(cls, value: str) -> str:
        return check_template(value, "text")


class HatefulMemesConverter(Converter):
    """Hateful Memes release (img/ + train/dev_seen/dev_unseen/test_*.jsonl) → yes/no questions with AUROC labels."""

    name = "hateful-memes"
    version = "1"
    output_name = "hateful_memes"
    Options = HatefulMemesOptions
    options: HatefulMemesOptions

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        files = find_named_files(source, [f"{split}.jsonl" for split in SPLIT_FILES])
        if not files:
            raise ConvertUsageError(
                f"{source} is not a Hateful Memes release: expected img/ and train.jsonl, dev_seen.jsonl, "
                "dev_unseen.jsonl, test_seen.jsonl, test_unseen.jsonl (or dev.jsonl/test.jsonl) in it "
                "or in its data/ folder"
            )
        root = files[0].parent
        index = BasenameIndex(root)
        claims = OutputClaims()
        present = [path.stem for path in files]
        names = output_names(sorted(present, key=lambda s: [*OUTPUT_SPLITS, s].index(s)), OUTPUT_SPLITS)
        for path in files:
            yield from self._plan_file(path, names[path.stem], root=root, index=index, claims=claims)

    def _plan_file(
        self, path: Path, split: str, *, root: Path, index: BasenameIndex, claims: OutputClaims
    ) -> Iterator[Item | Failure]:
        file = relative_name(path, root)
        rows: list[tuple[int, MemeLine]] = []
        for entry in read_json_lines(path, MemeLine, file=file):
            if isinstance(entry, Failure):
                yield Failure(entry.file, entry.reason, split, entry.line)
            else:
                rows.append(entry)
        labeled = any(row.label is not None for _, row in rows)
        for lineno, row in rows:
            if labeled and row.label is None:
                yield Failure(file, MISSING_LABEL, split, lineno)
                continue
            try:
                image = locate(root, row.img, index)
            except UnsafePathError as exc:
                yield Failure(file, f"refused: {exc}", split, lineno)
                continue
            if image is None:
                yield Failure(file, f"image {row.img!r} not found under {root}", split, lineno)
                continue
            clash = claims.claim(f"{split}/{image.name}", relative_name(image, root))
            if clash is not None:  # img/a.png and img2/a.png: one meme would show the other's picture
                yield Failure(file, clash, split, lineno)
                continue
            payload = {"id": str(row.id), "image": str(image), "text": row.text, "label": row.label}
            yield Item(f"{split}/{row.id}", split, payload, source_split=path.stem)

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        meme = item.payload
        image = out.copy(Path(meme["image"]), f"{item.split}/{Path(meme['image']).name}")
        user = self.options.prompt.format(text=meme["text"])
        turn = binary_turn([image], user, meme["label"])
        return [{"id": f"{item.split}-{meme['id']}", "task": "binary", "conversations": [turn]}]
