"""The Cauldron (``HuggingFaceM4/the_cauldron``, Laurençon et al. 2024) as ``datasets`` leaves it on disk: one subset's
parquet shards (``hateful_memes/train-00000-of-00007-….parquet``), a ``save_to_disk`` folder, the ``load_dataset``
cache, or, with ``datasets`` installed, the Hub name itself (offline from the cache with ``HF_HUB_OFFLINE=1``).
This is where the original Phi-3.5-vision recipe reads Hateful Memes and NLVR2 from.

Each row holds ``images`` (a list of images, each stored as ``{"bytes", "path"}``) and ``texts`` (a list of
``{"user", "assistant", "source"}`` turns about those images). A row becomes one record with every turn kept; all
images go with the first turn, as in the recipe and in torchtune's loader. Images are written as they are
(``images/<split>/<row number in split>.<format>``, ``_<k>`` added when a row has several).

The task: ``--task`` when given; else the subset's when known (``docvqa``, ``vqav2`` … are ``vqa``; ``textcaps``,
``screen2words`` … are ``caption``); else ``binary`` when every answer is yes or no (``Yes.``, ``no``); else ``chat``.
Binary answers become ``yes``/``no`` with the label in ``reference`` (evaluation reads P(yes) from the token
``yes``), as the ``hateful-memes`` and ``nlvr2`` converters write them. Other answers are kept verbatim.

One row of ``hateful_memes``::

    {"images": [{"bytes": "<PNG bytes>", "path": null}],
     "texts": [{"user": "Is this meme hateful? The text on it reads: \\"look how many people love you\\"",
                "assistant": "No.", "source": "hateful_memes"}]}

becomes, in ``cauldron_train.jsonl``::

    {"id": "train-0000000000", "source": "cauldron", "task": "binary",
     "conversations": [{"images": ["train/0000000.png"],
                        "user": "Is this meme hateful? The text on it reads: \\"look how many people love you\\"",
                        "assistant": "no", "reference": {"label": 0}}]}
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from converters._common import binary_turn
from converters._hf_reader import columns_of, find_tables, iter_columns, read_cell, write_images
from phi3v_data.converter import (
    ConversionError, Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item,
)
from phi3v_data.splits import output_names
from schemas import Task
from schemas.errors import first_validation_line

COLUMNS = ("images", "texts")
SUBSET_TASKS: dict[str, Task] = {
    **dict.fromkeys(("docvqa", "infographic_vqa", "chartqa", "st_vqa", "textvqa", "ocrvqa", "vqav2", "okvqa"), "vqa"),
    **dict.fromkeys(("cocoqa", "tallyqa", "dvqa", "plotqa", "mapqa", "vqarad"), "vqa"),
    **dict.fromkeys(("textcaps", "localized_narratives", "screen2words", "vistext", "chart2text"), "caption"),
    "diagram_image_to_text": "caption",
}
"""Subsets whose task the answers do not tell (a VQAv2 row of yes/no questions is still VQA)."""


class CauldronTurn(BaseModel):
    """One element of ``texts``."""

    model_config = ConfigDict(extra="ignore")

    user: str = Field(min_length=1)
    assistant: str | None = None
    source: str | None = None


TURNS = TypeAdapter(list[CauldronTurn])


def yes_no(answer: str | None) -> int | None:
    """1 for yes, 0 for no (case, spaces and a final ``.``/``!`` ignored), None for any other answer."""
    word = (answer or "").strip().lower().rstrip(".!").strip()
    return {"yes": 1, "no": 0}.get(word)


class CauldronOptions(ConverterOptions):
    subset: str | None = Field(
        default=None, description="Subset to convert when SOURCE holds several (e.g. hateful_memes, nlvr2)."
    )
    task: Task | None = Field(
        default=None, description="Task of every record [default: the subset's, binary for yes/no answers, else chat]."
    )


class CauldronConverter(Converter):
    """HuggingFaceM4/the_cauldron subsets (parquet, save_to_disk, load_dataset cache or Hub name) → multi-turn records.

    \b
    Example:
        phi3v-data convert cauldron the_cauldron/ --subset hateful_memes --out data/memes
        HF_HUB_OFFLINE=1 phi3v-data convert cauldron HuggingFaceM4/the_cauldron --subset nlvr2 --out data/nlvr2
    """

    name: ClassVar[str] = "cauldron"
    version: ClassVar[str] = "1"
    output_name: ClassVar[str] = "cauldron"
    accepts_names: ClassVar[bool] = True
    Options = CauldronOptions
    options: CauldronOptions

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        tables = find_tables(source, subset=self.options.subset)
        files = [path for paths in tables.splits.values() for path in paths]
        lacking = {path: [c for c in COLUMNS if c not in columns_of(path)] for path in files}
        if all(lacking.values()):
            found = ", ".join(columns_of(files[0]))
            raise ConvertUsageError(
                f"{tables.name(files[0])} has columns {found}, not the_cauldron's images and texts; "
                "for another image–question–answer dataset use: phi3v-data convert hf"
            )
        names = output_names(list(tables.splits))  # the Hub has train only; an export may add validation → val
        for official, paths in tables.splits.items():
            split, ordinal = names[official], 0
            for path in paths:
                file = tables.name(path)
                if lacking[path]:
                    yield Failure(file, f"no column {' or '.join(lacking[path])}: not a the_cauldron file", split)
                    continue
                for row, values in enumerate(iter_columns(path, ["texts"])):
                    parsed = self._parse(values["texts"], tables.subset)
                    if isinstance(parsed, str):
                        yield Failure(file, f"row {row}: {parsed}", split)
                        continue
                    job = {"table": str(path), "file": file, "row": row, "root": str(tables.root),
                           "stem": f"{ordinal:07d}", **parsed}
                    yield Item(f"{split}/{file}#{row}", split, job, source_split=official)
                    ordinal += 1

    def _parse(self, raw: Any, subset: str | None) -> dict[str, Any] | str:
        """Task and turns of one row's ``texts``, or why the row cannot be used."""
        try:
            turns = TURNS.validate_python(raw)
        except ValidationError as exc:
            return f"malformed 'texts': {first_validation_line(exc)}"
        if not turns:
            return "'texts' holds no turn"
        answered = [turn.assistant is not None for turn in turns]
        if any(answered) and not all(answered):
            return f"turn {answered.index(False) + 1} has no assistant reply (the others have one)"
        labels = [yes_no(turn.assistant) for turn in turns]
        known = SUBSET_TASKS.get(subset or "") or SUBSET_TASKS.get((turns[0].source or "").lower())
        auto = "binary" if all(answered) and None not in labels else "chat"
        task = self.options.task or known or auto
        if task == "binary" and all(answered) and None in labels:
            turn = labels.index(None)
            return f"turn {turn + 1} answers {turns[turn].assistant!r}, not yes or no (task binary)"
        return {"task": task, "turns": [(t.user, t.assistant, label) for t, label in zip(turns, labels)]}

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        job = item.payload
        cell = read_cell(Path(job["table"]), job["row"], "images")
        where = {"file": job.get("file"), "line": None}
        if cell is None:  # not an image-less record: its questions are about an image that is missing
            raise ConversionError(f"row {job['row']}: 'images' is null; the row's image is missing, so it is skipped",
                                  **where)
        try:
            images = write_images(out, cell, root=Path(job["root"]), stem=f"{item.split}/{job['stem']}")
        except ConversionError as exc:
            raise ConversionError(f"row {job['row']}: {exc}", **where) from None
        conversations = []
        for number, (user, assistant, label) in enumerate(job["turns"]):
            shown = images if number == 0 else []
            if job["task"] == "binary":
                conversations.append(binary_turn(shown, user, label if assistant is not None else None))
            else:
                conversations.append({"images": shown, "user": user, "assistant": assistant})
        return [{"task": job["task"], "conversations": conversations}]
