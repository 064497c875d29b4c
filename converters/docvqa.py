"""DocVQA (single page, Mathew et al., 2021): the official annotation json or a Hugging Face export saved locally.

Reads either

- the official files ``train_v1.0_withQT.json``, ``val_v1.0_withQT.json``, ``test_v1.0.json`` (``{"data": [...]}``),
  given as one file or as the folder holding them (also in ``spdocvqa_qas/``). The page images are looked up at
  the annotated path (``documents/x.png``) beside the json or under the dataset root, else by file name anywhere
  under the root (downloads such as ``spdocvqa_images/`` are flat). The root is the source folder, or the folder
  of a source file (its parent when that folder is ``*_qas``); ``--images`` names another one.
- a Hugging Face export as parquet files or ``save_to_disk`` arrow shards, e.g. ``nielsr/docvqa_1200_examples``
  (``query`` {"en": ...}, ``answers``, ``image``) or ``HuggingFaceM4/DocumentVQA`` (``question``, ``answers``,
  ``image``, ``questionId``). The split comes from the path as ``datasets`` lays it out
  (``train-00000-of-00002.parquet``, ``default/validation/0000.parquet``, ``parquet-test.arrow``,
  ``train/data-00000-of-00001.arrow``); ``validation`` is written as ``val``, the records keeping
  ``"source_split": "validation"``. Embedded images are written out as they are; pages are recognised by content, so
  each is stored once.

The user text is the question followed by ``--instruction`` on a new line, as the original Phi-3 cookbook DocVQA
finetune did (``{question}\\nAnswer briefly.``). The assistant text is the most frequent answer after normalising
case and spaces, ties going to the first listed (``--answer first`` takes the first listed); every answer stays in
``reference.answers`` for ANLS. A split without answers (the official test set) is unlabeled. Questions about the
same page are converted together (each page is copied once) in order of the page's first appearance; with
``--group-pages`` they form one multi-turn record, the page attached to the first turn only. Ids are
``<split>-q<questionId>`` (grouped: ``<split>-<page file stem>``); rows without a question id get ``<split>-<counter>``.

One entry of ``val_v1.0_withQT.json`` (``dataset_split`` "val")::

    {"questionId": 49153, "question": "What is the ‘actual’ value per 1000, during the year 1975?",
     "question_types": ["figure/diagram"], "image": "documents/pybv0228_81.png", "docId": 14465,
     "ucsf_document_id": "pybv0228", "ucsf_document_page_no": "81", "answers": ["0.28"], "data_split": "val"}

becomes, in ``docvqa_val.jsonl``::

    {"id": "val-q49153", "source": "docvqa", "task": "vqa",
     "conversations": [{"images": ["val/pybv0228_81.png"],
                        "user": "What is the ‘actual’ value per 1000, during the year 1975?\\nAnswer briefly.",
                        "assistant": "0.28", "reference": {"answers": ["0.28"]}}]}
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from converters._common import BasenameIndex, locate, relative_name, sniff_suffix, write_image_bytes
from converters._hf_reader import iter_table, read_cell, table_files, table_split
from phi3v_data.converter import (
    ConversionError, Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item, OutputClaims,
)
from phi3v_data.io import UnsafePathError, iter_json_array, json_object_members, parse_json
from phi3v_data.splits import canonical_split, output_names
from schemas.errors import first_validation_line

ANNOTATION_RE = re.compile(r"^(?P<split>train|val|validation|test)(?:[_-].*)?\.json$", re.IGNORECASE)
SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


class Question(BaseModel):
    """One question of the official json (extra keys such as question_types are ignored)."""

    model_config = ConfigDict(extra="ignore")

    questionId: int | str | None = None
    question: str = Field(min_length=1)
    image: str = Field(min_length=1)
    answers: list[str] | None = None


class DocVQAOptions(ConverterOptions):
    group_pages: bool = Field(default=False, description="One multi-turn record per page (the page is encoded once).")
    answer: Literal["majority", "first"] = Field(
        default="majority",
        description="Assistant answer: the most frequent (normalised; ties → first listed) or the first listed.",
    )
    instruction: str = Field(default="Answer briefly.", description="Line added after each question ('' for none).")
    images: Path | None = Field(default=None, description="Folder holding the page images [default: the dataset root].")

    @field_validator("images")
    @classmethod
    def _is_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value


def choose_answer(answers: list[str], how: str) -> str:
    """The assistant text among the accepted answers (deterministic, see the module doc)."""
    if how == "first":
        return answers[0]
    norm = [" ".join(a.split()).lower() for a in answers]
    counts = Counter(norm)
    best = max(counts.values())
    return next(a for a, n in zip(answers, norm) if counts[n] == best)


class DocVQAConverter(Converter):
    """DocVQA official json (train/val/test) or a Hugging Face parquet/arrow export → document questions (ANLS)."""

    name = "docvqa"
    version = "1"
    output_name = "docvqa"
    Options = DocVQAOptions
    options: DocVQAOptions

    # -- plan ------------------------------------------------------------------------------------------------------

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        tables = table_files(source)
        if tables:
            splits: dict[str, list[Path]] = {}
            for path in tables:
                splits.setdefault(table_split(path), []).append(path)
            names = output_names(list(splits))
            for official, paths in splits.items():  # shards of one split share pages: plan them together
                root = source if source.is_dir() else source.parent
                yield from self._plan_tables(names[official], paths, root=root, official=official)
            return
        if source.is_dir():
            files = self._annotation_files(source)
        else:
            files = [source] if source.suffix.lower() == ".json" else []
        if not files:
            raise ConvertUsageError(
                f"{source} is not a DocVQA download: expected train_v1.0_withQT.json / val_v1.0_withQT.json / "
                "test_v1.0.json (in it or in spdocvqa_qas/), one such json file, or a Hugging Face export "
                "(*.parquet, or save_to_disk *.arrow shards)"
            )
        root = self.options.images or self._root(source)
        index, base = BasenameIndex(root), source if source.is_dir() else source.parent
        claimed: set[str] = set()
        claims = OutputClaims()
        for path in files:
            yield from self._plan_json(path, root=root, index=index, file=relative_name(path, base), claimed=claimed,
                                       claims=claims)

    @staticmethod
    def _annotation_files(folder: Path) -> list[Path]:
        candidates = [*folder.glob("*.json"), *folder.glob("*/*.json")]
        found = sorted(p for p in candidates if ANNOTATION_RE.match(p.name))
        seen: dict[str, Path] = {}
        for path in found:
            split = ANNOTATION_RE.match(path.name)["split"].lower()  # type: ignore[index]
            if split in seen:
                raise ConvertUsageError(f"both {seen[split]} and {path} hold the {split} split; pass one as SOURCE")
            seen[split] = path
        return found

    @staticmethod
    def _root(source: Path) -> Path:
        if source.is_dir():
            return source
        folder = source.parent
        return folder.parent if folder.name.lower().endswith("qas") else folder

    @staticmethod
    def _load_json(path: Path, file: str) -> tuple[str, list[tuple[int | None, Any, str | None]]] | Failure:
        """(split, entries as (line, raw, error)); one entry nested too deeply, holding a 5000-digit number or a lone
        surrogate is an error entry (reported with its line), the others still convert."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return Failure(file, f"cannot read the annotation json: {exc}")
        data, error = parse_json(text)
        entries: list[tuple[int | None, Any, str | None]] = []
        if error is None and isinstance(data, dict) and isinstance(data.get("data"), list):
            entries = [(None, raw, None) for raw in data["data"]]
        elif error is not None:  # read the top level without its values, then the entries one by one
            try:
                members = json_object_members(text)
                data = {key: parse_json(text[a:b])[0] for key, (a, b) in members.items() if key != "data"}
                if "data" in members:
                    data["data"] = []
                    entries = [(e.lineno if e.error else None, e.value, e.error)
                               for e in iter_json_array(text, start=members["data"][0])]
            except ValueError:
                return Failure(file, f"cannot read the annotation json: {error}")
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return Failure(file, 'not a DocVQA annotation file: expected {"data": [{"question", "image", ...}]}')
        split = data.get("dataset_split")
        if not (isinstance(split, str) and SPLIT_RE.match(split)):
            match = ANNOTATION_RE.match(path.name)
            split = match["split"].lower() if match else path.stem
        return split, entries

    def _plan_json(
        self, path: Path, *, root: Path, index: BasenameIndex, file: str, claimed: set[str], claims: OutputClaims
    ) -> Iterator[Item | Failure]:
        loaded = self._load_json(path, file)
        if isinstance(loaded, Failure):
            yield loaded
            return
        official, entries = loaded
        split = canonical_split(official) if canonical_split(official) not in claimed else official
        claimed.add(split)
        pages: dict[str, list[dict[str, Any]]] = {}
        for number, (line, raw, error) in enumerate(entries):
            if error is not None:
                yield Failure(file, f"data[{number}]: {error}", split, line)
                continue
            try:
                entry = Question.model_validate(raw)
            except ValidationError as exc:
                yield Failure(file, f"data[{number}]: malformed entry: {first_validation_line(exc)}", split)
                continue
            question = {"qid": entry.questionId, "question": entry.question, "answers": entry.answers}
            pages.setdefault(entry.image, []).append({**question, "at": f"data[{number}]", "line": line})
        for entry in self._labeled_only(pages, file=file, split=split):
            if isinstance(entry, Failure):
                yield entry
                continue
            rel, questions = entry
            try:
                found = locate(root, rel, index, bases=(path.parent, root))
            except UnsafePathError as exc:
                yield Failure(file, f"{questions[0]['at']}: refused: {exc}", split)
                continue
            if found is None:
                yield Failure(file, f"{questions[0]['at']}: image {rel!r} not found under {root}", split)
                continue
            clash = claims.claim(f"{split}/{found.name}", str(found))
            if clash is not None:  # two pages of one name in different folders
                yield Failure(file, f"{questions[0]['at']}: {clash}", split)
                continue
            payload = {"src": str(found), "name": found.name, "questions": questions, "file": file}
            yield Item(f"{split}/{found.name}", split, payload, source_split=official)

    @staticmethod
    def _labeled_only(
        pages: dict[str, list[dict[str, Any]]], *, file: str, split: str
    ) -> Iterator[Failure | tuple[str, list[dict[str, Any]]]]:
        """Pages with their questions; in a split that has answers, a question without any is reported instead."""
        labeled = any(q["answers"] for questions in pages.values() for q in questions)
        for key, questions in pages.items():
            if labeled:
                for q in questions:
                    if not q["answers"]:
                        yield Failure(file, f"{q['at']}: question {q['qid']} has no answers (others do)", split)
                questions = [q for q in questions if q["answers"]]
            if questions:
                yield key, questions

    def _plan_tables(self, split: str, paths: list[Path], *, root: Path, official: str) -> Iterator[Item | Failure]:
        pages: dict[str, list[dict[str, Any]]] = {}
        names: dict[str, str] = {}
        taken: set[str] = set()
        for path in paths:
            file = relative_name(path, root)
            for row_number, row in enumerate(iter_table(path)):
                parsed = self._parse_row(row)
                if isinstance(parsed, str):
                    yield Failure(file, f"row {row_number}: {parsed}", split)
                    continue
                question, data, stored_path = parsed
                digest = hashlib.sha1(data).hexdigest()
                if digest not in names:  # a page is its content: rows about the same page share one image file
                    names[digest] = self._page_name(stored_path, data, digest, taken)
                    taken.add(names[digest])
                where = {"at": f"{file} row {row_number}", "table": str(path), "row": row_number}
                pages.setdefault(digest, []).append({**question, **where})
        for entry in self._labeled_only(pages, file=relative_name(paths[0], root), split=split):
            if isinstance(entry, Failure):
                yield entry
                continue
            digest, questions = entry
            first = questions[0]
            payload = {"table": first["table"], "row": first["row"], "name": names[digest], "questions": questions}
            yield Item(f"{split}/{names[digest]}", split, payload, source_split=official)

    @staticmethod
    def _page_name(stored_path: str | None, data: bytes, digest: str, taken: set[str]) -> str:
        """File name of an embedded page: its stored name, else its content hash; the suffix is what the bytes are."""
        stem = Path(stored_path).stem if stored_path else digest[:16]
        name = f"{stem}{sniff_suffix(data)}"
        return name if name not in taken else f"{stem}-{digest[:8]}{sniff_suffix(data)}"

    @staticmethod
    def _parse_row(row: dict[str, Any]) -> tuple[dict[str, Any], bytes, str | None] | str:
        """(question, image bytes, stored image path) of one export row, or why the row cannot be used."""
        query = row.get("question", row.get("query"))
        if isinstance(query, dict):  # nielsr/docvqa_1200_examples: {"en": ..., "de": ...}
            query = query.get("en")
        if not isinstance(query, str) or not query:
            return "no question text (expected a 'question' column or 'query' with 'en')"
        answers = row.get("answers")
        if answers is not None and not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            return "'answers' is not a list of strings"
        image = row.get("image")
        data = image.get("bytes") if isinstance(image, dict) else None
        if not data:
            return "no embedded image bytes in the 'image' column"
        qid = next((row[k] for k in ("questionId", "question_id", "id") if row.get(k) is not None), None)
        stored = image.get("path")
        stored = stored if isinstance(stored, str) and stored else None
        return {"qid": qid, "question": query, "answers": answers or None}, data, stored

    # -- convert ---------------------------------------------------------------------------------------------------

    def convert(self, item: Item, out: ImageWriter) -> list[dict[str, Any]]:
        page = item.payload
        rel = f"{item.split}/{page['name']}"
        if "table" in page:
            try:
                write_image_bytes(out, read_cell(Path(page["table"]), page["row"], "image")["bytes"], rel)
            except ConversionError as exc:
                raise ConversionError(f"{Path(page['table']).name} row {page['row']}: {exc}") from None
        else:
            try:
                out.copy(Path(page["src"]), rel)
            except ConversionError as exc:  # named by the question that needs the page: its annotation file and line
                first = page["questions"][0]
                raise ConversionError(f"{first['at']}: page {page['name']} skipped with its "
                                      f"{len(page['questions'])} question(s): {exc}", file=page["file"],
                                      line=first["line"]) from None
        turns = [self._turn(q, [rel]) for q in page["questions"]]
        if self.options.group_pages:
            for turn in turns[1:]:
                turn["images"] = []
            return [{"id": f"{item.split}-{Path(rel).stem}", "task": "vqa", "conversations": turns}]
        return [self._record(item.split, q, turn) for q, turn in zip(page["questions"], turns)]

    def _turn(self, question: dict[str, Any], images: list[str]) -> dict[str, Any]:
        user = question["question"] + (f"\n{self.options.instruction}" if self.options.instruction else "")
        answers = question["answers"]
        if not answers:
            return {"images": images, "user": user, "assistant": None}
        assistant = choose_answer(answers, self.options.answer)
        return {"images": images, "user": user, "assistant": assistant, "reference": {"answers": answers}}

    @staticmethod
    def _record(split: str, question: dict[str, Any], turn: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"task": "vqa", "conversations": [turn]}
        if question["qid"] is not None:
            record["id"] = f"{split}-q{question['qid']}"
        return record
