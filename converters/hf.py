"""Any image–question–answer dataset exported by ``datasets`` (parquet, ``save_to_disk``, the ``load_dataset`` cache, or
a Hub name resolved by ``datasets`` from its cache, offline with ``HF_HUB_OFFLINE=1``) → one record per row.

You name the columns: ``--image-column`` (an image ``{"bytes", "path"}`` as ``datasets`` stores it, a list of them
for several images, or a path inside the dataset folder), ``--question-column`` (text, or ``{"en": …}``) and
``--answer-column`` (text; a list of accepted answers, the most frequent one becoming the reply and all kept in
``reference.answers``; a bool; ``--answer-column ''`` for none). Splits come from the files as ``datasets`` names
them, or from ``--split-column``; ``validation`` is written as ``val``, the records keeping ``"source_split"``. Rows of
a split that has answers but lack one are reported; a split without any answer is unlabeled. ``--prompt`` is the
user text, ``{question}`` standing for the question. With ``--task binary`` the answers must be yes/no, true/false or
0/1 and become ``yes``/``no`` with the label in ``reference``. Images are written as they are, to
``images/<split>/<row number in split>.<format>``.

One row of ``lmms-lab/DocVQA`` (``validation-00000-of-00006.parquet``)::

    {"questionId": "49153", "question": "What is the ‘actual’ value per 1000, during the year 1975?",
     "answers": ["0.28"], "image": {"bytes": "<PNG bytes>", "path": null}}

with ``--answer-column answers --id-column questionId --prompt "{question}\\nAnswer briefly."`` becomes, in
``hf_val.jsonl``::

    {"id": "val-49153", "source": "hf", "task": "vqa", "source_split": "validation",
     "conversations": [{"images": ["val/0000000.png"],
                        "user": "What is the ‘actual’ value per 1000, during the year 1975?\\nAnswer briefly.",
                        "assistant": "0.28"}]}
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from converters._common import binary_turn, check_template
from converters._hf_reader import Tables, columns_of, find_tables, iter_columns, read_cell, write_images
from converters.docvqa import choose_answer
from phi3v_data.converter import Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item
from phi3v_data.splits import output_names
from schemas import Task

_LABELS = {"yes": 1, "no": 0, "true": 1, "false": 0, "1": 1, "0": 0}


class HFOptions(ConverterOptions):
    image_column: str = Field(default="image", description="Column of the image(s).")
    question_column: str = Field(default="question", description="Column of the question.")
    answer_column: str = Field(
        default="answer", description="Column of the answer or answers ('' for an unlabeled dataset)."
    )
    split_column: str | None = Field(
        default=None, description="Column naming each row's split [default: the split of its file]."
    )
    id_column: str | None = Field(default=None, description="Column whose value makes the record id (<split>-<value>).")
    prompt: str = Field(default="{question}", description="User text; {question} is replaced by the question.")
    task: Task = Field(default="vqa", description="Task of the records (binary: answers yes/no, true/false or 0/1).")
    subset: str | None = Field(default=None, description="Subset (config) to convert when SOURCE holds several.")

    @field_validator("prompt")
    @classmethod
    def _has_question(cls, value: str) -> str:
        return check_template(value, "question")


def answers_of(value: Any) -> list[str] | str:
    """The accepted answers of one cell (empty: unlabeled), or why the cell is not an answer."""
    if value is None or value == "":
        return []
    if isinstance(value, bool):
        return ["yes" if value else "no"]
    if isinstance(value, (int, float, str)):
        return [str(value)]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value if str(v) != ""]
    return f"the answer is a {type(value).__name__}, not text or a list of texts"


def question_of(value: Any) -> str | None:
    if isinstance(value, dict):  # multilingual exports: {"en": ..., "de": ...}
        value = value.get("en")
    return value if isinstance(value, str) and value.strip() else None


class HFConverter(Converter):
    """Any image–question–answer dataset exported by datasets (parquet, arrow, save_to_disk, cache, Hub name).

    \b
    Example:
        phi3v-data convert hf exports/chartqa/ --image-column image --question-column query \\
            --answer-column label --out data/chartqa
        HF_HUB_OFFLINE=1 phi3v-data convert hf lmms-lab/DocVQA --subset DocVQA --answer-column answers --out data/dv
    """

    name: ClassVar[str] = "hf"
    version: ClassVar[str] = "1"
    output_name: ClassVar[str] = "hf"
    accepts_names: ClassVar[bool] = True
    Options = HFOptions
    options: HFOptions

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        tables = find_tables(source, subset=self.options.subset)
        opts = self.options
        wanted = [opts.question_column, opts.answer_column, opts.split_column, opts.id_column]
        light = list(dict.fromkeys(c for c in wanted if c))
        files = [(split, path) for split, paths in tables.splits.items() for path in paths]
        lacking = {
            path: [c for c in [self.options.image_column, *light] if c not in columns_of(path)] for _, path in files
        }
        if all(lacking.values()):
            _, first = files[0]
            raise ConvertUsageError(
                f"{tables.name(first)} has no column {', '.join(lacking[first])} "
                f"(it has: {', '.join(columns_of(first))}); "
                "name the columns with --image-column, --question-column, --answer-column"
            )
        rows: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}  # split → (file, where, row)
        for split, path in files:
            file = tables.name(path)
            if lacking[path]:
                yield Failure(
                    file, f"no column {', '.join(lacking[path])} (it has: {', '.join(columns_of(path))})", split
                )
                continue
            for number, values in enumerate(iter_columns(path, light)):
                parsed = self._parse(values, split)
                if isinstance(parsed, str):
                    yield Failure(file, f"row {number}: {parsed}", split)
                    continue
                rows.setdefault(parsed.pop("split"), []).append(
                    (file, f"#{number}", {**parsed, "table": str(path), "row": number})
                )
        names = output_names(list(rows))
        for official, entries in rows.items():
            yield from self._items(names[official], official, entries, tables)

    def _parse(self, values: dict[str, Any], split: str) -> dict[str, Any] | str:
        """Question, answers, split and id of one row, or why the row cannot be used."""
        options = self.options
        question = question_of(values[options.question_column])
        if question is None:
            return f"column {options.question_column!r} holds no question text"
        answers = answers_of(values[options.answer_column]) if options.answer_column else []
        if isinstance(answers, str):
            return f"column {options.answer_column!r}: {answers}"
        if options.task == "binary" and answers and answers[0].strip().lower() not in _LABELS:
            return f"column {options.answer_column!r} holds {answers[0]!r}, not yes/no, true/false or 0/1 (task binary)"
        if options.split_column:
            split = re.sub(r"[^A-Za-z0-9_]", "_", str(values[options.split_column] or ""))
            if not split:
                return f"column {options.split_column!r} names no split"
        row_id = values[options.id_column] if options.id_column else None
        if options.id_column and (row_id is None or str(row_id) == ""):
            return f"column {options.id_column!r} is empty"
        return {"question": question, "answers": answers, "split": split, "id": None if row_id is None else str(row_id)}

    def _items(
        self, split: str, official: str, entries: list[tuple[str, str, dict[str, Any]]], tables: Tables
    ) -> Iterator[Item | Failure]:
        labeled = any(row["answers"] for _, _, row in entries)
        ordinal = 0
        for file, where, row in entries:
            if labeled and not row["answers"]:
                yield Failure(
                    file,
                    f"row {where[1:]}: no answer in {self.options.answer_column!r} (other rows of {split} have one)",
                    split,
                )
                continue
            job = {**row, "root": str(tables.root), "stem": f"{ordinal:07d}"}
            yield Item(f"{split}/{file}{where}", split, job, source_split=official)
            ordinal += 1

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        job = item.payload
        cell = read_cell(Path(job["table"]), job["row"], self.options.image_column)
        images = write_images(out, cell, root=Path(job["root"]), stem=f"{item.split}/{job['stem']}")
        user = self.options.prompt.format(question=job["question"])
        answers: list[str] = job["answers"]
        if self.options.task == "binary":
            turn = binary_turn(images, user, _LABELS[answers[0].strip().lower()] if answers else None)
        else:
            assistant = choose_answer(answers, "majority") if answers else None
            turn = {"images": images, "user": user, "assistant": assistant}
            if len(answers) > 1:
                turn["reference"] = {"answers": answers}
        record: dict[str, Any] = {"task": self.options.task, "conversations": [turn]}
        if job["id"] is not None:
            record["id"] = f"{item.split}-{job['id']}"
        return [record]
