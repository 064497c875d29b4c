"""Batched greedy evaluation of a model on converted records: predictions, per-task metrics, a table.

Every turn of every record is answered once. Prompts come from :func:`phi3v_data.prompt.encode_record` with
``upto=turn``, so the model sees exactly what training showed it; earlier turns carry their reference answers (for
unlabeled records, the model's own earlier answers). Metrics follow each record's ``task`` (see
:mod:`phi3v_train.metrics`). Batches are left-padded and sorted by prompt length; a batch of many gives the same
answers as one-by-one (probabilities agree to float rounding, ~1e-7).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import ValidationError
from rich.progress import Progress
from rich.table import Table

from phi3v_data.images import ImageProblem, check_image, load_rgb
from phi3v_data.io import iter_jsonl, resolve_inside, write_json, write_jsonl
from phi3v_data.prompt import DEFAULT_FORMAT, PromptFormat, encode_record
from phi3v_data.tokens import num_image_tokens
from phi3v_train.data import images_dir, split_files
from phi3v_train.metrics import score_turn, summarize
from phi3v_train.model import text_encoding
from schemas import Record

STOP_TOKENS = ("<|end|>", "<|endoftext|>")
"""An answer ends at ``<|end|>``; ``<|endoftext|>`` closes the conversation (both end generation)."""


@dataclass
class EvalResult:
    """What an evaluation produced: ``predictions.jsonl`` rows (record order, then turn) and ``metrics.json``."""

    rows: list[dict[str, Any]]
    metrics: dict[str, Any]

    def table(self, *, title: str = "Evaluation") -> Table:
        """One row per task: turns answered, turns scored, and the task's metrics (— where none applies)."""
        table = Table(title=title)
        for column in ("task", "turns", "scored", "accuracy", "ANLS", "AUROC"):
            table.add_column(column, justify="left" if column == "task" else "right")
        for task, entry in self.metrics["tasks"].items():
            table.add_row(
                task,
                str(entry["turns"]),
                str(entry["scored"]),
                *(_fmt(entry, key) for key in ("accuracy", "anls", "auroc")),
            )
        failed = self.metrics["failed"]
        table.caption = f"{failed} turn(s) failed — see 'error' in predictions.jsonl" if failed else None
        return table

    def write(self, output_dir: str | Path) -> None:
        """Write ``predictions.jsonl`` and ``metrics.json`` atomically into ``output_dir``."""
        output_dir = Path(output_dir)
        write_jsonl(output_dir / "predictions.jsonl", self.rows)
        write_json(output_dir / "metrics.json", self.metrics)


def evaluate_datasets(
    model: torch.nn.Module,
    processor: Any,
    datasets: dict[str, tuple[Sequence[Record], str | Path]],
    *,
    output_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    dataset_meta: dict[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> dict[str, EvalResult]:
    """:func:`evaluate` each dataset of a mixture on its own: ``{name: (records, images_root)}`` → ``{name: result}``.

    Each dataset's predictions and metrics go to ``output_dir/<name>/``; ``output_dir/metrics.json`` gathers the
    metrics by dataset, so one mixture's score never hides another's. ``dataset_meta[name]`` adds to that
    dataset's metrics only (its files, its skipped lines).
    """
    results = {}
    for name, (records, images_root) in datasets.items():
        results[name] = evaluate(model, processor, records, images_root=images_root,
                                 output_dir=None if output_dir is None else Path(output_dir) / name,
                                 meta={**(meta or {}), "dataset": name, **(dataset_meta or {}).get(name, {})},
                                 **settings)
    if output_dir is not None:
        write_json(Path(output_dir) / "metrics.json",
                   {**(meta or {}), "datasets": {name: result.metrics for name, result in results.items()}})
    return results


def datasets_table(results: dict[str, EvalResult], *, title: str = "Evaluation") -> Table:
    """One row per dataset and task (the columns of :meth:`EvalResult.table`, a dataset column first)."""
    table = Table(title=title)
    for column in ("dataset", "task", "turns", "scored", "accuracy", "ANLS", "AUROC"):
        table.add_column(column, justify="left" if column in ("dataset", "task") else "right")
    for name, result in results.items():
        for task, entry in result.metrics["tasks"].items():
            table.add_row(name, task, str(entry["turns"]), str(entry["scored"]),
                          *(_fmt(entry, key) for key in ("accuracy", "anls", "auroc")))
    failed = sum(result.metrics["failed"] for result in results.values())
    table.caption = f"{failed} turn(s) failed — see 'error' in each predictions.jsonl" if failed else None
    return table


def _fmt(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return "—" if value is None else f"{value:.4f}"


@dataclass
class _Pending:
    """One turn waiting to be answered, with its prompt once prepared."""

    record_index: int
    turn: int
    prepared: PreparedTurn | None = None
    error: str | None = None


@dataclass
class _State:
    records: Sequence[Record]
    score: bool = True
    answers: dict[tuple[int, int], str] = field(default_factory=dict)
    rows: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


def evaluate(
    model: torch.nn.Module,
    processor: Any,
    records: Sequence[Record],
    *,
    images_root: str | Path,
    num_crops: int,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    output_dir: str | Path | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    score: bool = True,
    generation: dict[str, Any] | None = None,
    fmt: PromptFormat = DEFAULT_FORMAT,
) -> EvalResult:
    """Answer every turn of ``records`` greedily and score them by task.

    Writes ``predictions.jsonl`` and ``metrics.json`` into ``output_dir`` when given. A turn that cannot be prepared
    (missing image, prompt longer than the model) gets an ``error`` instead of a prediction; the run goes on.
    ``score=False`` (unlabeled splits, ``phi3v-train predict``) keeps rows to id, turn, task, prediction and, for
    binary tasks, ``p_yes``. ``generation`` overrides greedy decoding (``{"do_sample": True, "top_p": 0.9}``).
    ``fmt`` lays out images and turns as training did (:class:`phi3v_data.prompt.PromptFormat`).

    >>> result = evaluate(model, processor, records, images_root="data/docvqa/images", num_crops=16)  # doctest: +SKIP
    >>> rich.print(result.table())  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = Generator(model, processor, images_root=Path(images_root), num_crops=num_crops,
                          max_new_tokens=max_new_tokens, generation=generation, fmt=fmt)
    state = _State(records, score=score)
    total = sum(len(record.conversations) for record in records)
    with Progress(disable=not progress, transient=True) as bar:
        task_id = bar.add_task("evaluating", total=total)
        # Turn t of an unlabeled record needs the model's answer to turn t-1, so turns go round by round.
        for turn in range(max((len(r.conversations) for r in records), default=0)):
            pending = [_prepare(state, generator, index, turn) for index, r in enumerate(records) if turn < len(r.conversations)]
            for item in pending:
                if item.error is not None:
                    _record_row(state, item, error=item.error)
                    bar.advance(task_id)
            ready = sorted((p for p in pending if p.prepared), key=lambda p: -len(p.prepared.input_ids))
            for batch in _chunks(ready, batch_size):
                _answer_batch(state, generator, batch)
                bar.advance(task_id, len(batch))
    settings = {"num_crops": num_crops, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                "image_tags": fmt.image_tags, "turns": fmt.turns}
    result = _result(state, settings=settings, meta=meta)
    if output_dir is not None:
        result.write(output_dir)
    return result


def _prepare(state: _State, generator: "Generator", record_index: int, turn: int) -> _Pending:
    item = _Pending(record_index, turn)
    record = state.records[record_index]
    if not record.labeled and turn > 0:
        if any((record_index, t) not in state.answers for t in range(turn)):
            item.error = "an earlier turn of this unlabeled record failed, so this turn has no history"
            return item
        record = _with_history(record, [state.answers[(record_index, t)] for t in range(turn)])
    try:
        item.prepared = generator.prepare(record, turn=turn)
    except ValueError as exc:
        item.error = str(exc)
    return item


def _answer_batch(state: _State, generator: "Generator", batch: list[_Pending]) -> None:
    """Generate for the turns whose images decode; the others get their decode error as the row."""
    loaded: list[tuple[_Pending, list[Image.Image]]] = []
    for item in batch:
        try:
            loaded.append((item, generator.load_images(item.prepared)))
        except ValueError as exc:
            _record_row(state, item, error=str(exc))
    if loaded:
        answers = generator.generate([item.prepared for item, _ in loaded], [images for _, images in loaded])
        for (item, _), (text, p_yes) in zip(loaded, answers):
            _record_row(state, item, prediction=text, p_yes=p_yes)


def _with_history(record: Record, answers: list[str]) -> Record:
    """A copy of an unlabeled record whose first turns carry ``answers`` as replies (its prompt history)."""
    turns = [turn.model_copy(update={"assistant": answer}) for turn, answer in zip(record.conversations, answers)]
    return record.model_copy(update={"conversations": turns + record.conversations[len(answers) :]})


def _record_row(
    state: _State, item: _Pending, *, prediction: str | None = None, p_yes: float | None = None, error: str | None = None
) -> None:
    record = state.records[item.record_index]
    row: dict[str, Any] = {"id": record.id, "turn": item.turn, "task": record.task}
    if error is not None:
        row["error"] = error
    else:
        assert prediction is not None
        state.answers[(item.record_index, item.turn)] = prediction
        turn = record.conversations[item.turn]
        row["prediction"] = prediction
        if not state.score:
            row.update({"p_yes": p_yes} if record.task == "binary" else {})
        else:
            row.update(score_turn(prediction, turn, task=record.task, p_yes=p_yes if record.task == "binary" else None))
    state.rows[(item.record_index, item.turn)] = row


def _result(state: _State, *, settings: dict[str, Any], meta: dict[str, Any] | None) -> EvalResult:
    rows = [state.rows[key] for key in sorted(state.rows)]
    return _scored(rows, records=len(state.records), settings=settings, meta=meta)


def _scored(rows: list[dict[str, Any]], *, records: int, settings: dict[str, Any], meta: dict[str, Any] | None) -> EvalResult:
    answered = [row for row in rows if "error" not in row]
    metrics = {
        **(meta or {}),
        "records": records,
        "turns": len(rows),
        "failed": len(rows) - len(answered),
        "tasks": summarize(answered),
        "settings": settings,
    }
    return EvalResult(rows=rows, metrics=metrics)


def combine(parts: Sequence[EvalResult], *, meta: dict[str, Any] | None = None) -> EvalResult:
    """One result from the results of consecutive slices of the records (one per rank), scored as :func:`evaluate`
    scores a whole split: AUROC ranks all turns together, so slices are joined by their rows, not their metrics."""
    rows = [row for part in parts for row in part.rows]
    settings = parts[0].metrics["settings"] if parts else {}
    return _scored(rows, records=sum(part.metrics["records"] for part in parts), settings=settings, meta=meta)


def _chunks(items: list[_Pending], size: int) -> Iterator[list[_Pending]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_records(
    paths: Sequence[str | Path], *, limit: int | None = None, on_error: Callable[[str], None] | None = None
) -> list[Record]:
    """Records of dataset ``.jsonl`` files; a bad line is reported through ``on_error`` (file:line: field: msg) and skipped."""
    records: list[Record] = []
    for path in paths:
        for line in iter_jsonl(path):
            if limit is not None and len(records) >= limit:
                return records
            message = line.error
            if message is None:
                try:
                    records.append(Record.model_validate(line.value))
                    continue
                except ValidationError as exc:
                    first = exc.errors()[0]
                    message = f"{'.'.join(map(str, first['loc'])) or 'record'}: {first['msg']}"
            if on_error is not None:
                on_error(f"{path}:{line.lineno}: {message}")
    return records


# ---- prompts and batched generation ------------------------------------------------------------------------------


@dataclass
class PreparedTurn:
    """A turn's prompt as training would build it, and the images it needs (paths inside the images root)."""

    input_ids: torch.Tensor  # int32: a split's prompts are held at once, image placeholders included
    image_paths: list[Path]
    image_tokens: list[int]


class Generator:
    """Builds prompts and answers them in left-padded batches; also reads P(yes) at the first answer position."""

    def __init__(
        self, model: torch.nn.Module, processor: Any, *, images_root: Path, num_crops: int, max_new_tokens: int,
        generation: dict[str, Any] | None = None, fmt: PromptFormat = DEFAULT_FORMAT,
    ) -> None:
        self.model, self.processor = model, processor
        self.fmt = fmt
        self.generation = generation or {"do_sample": False}
        self.tokenizer = processor.tokenizer
        self.images_root, self.num_crops, self.max_new_tokens = images_root, num_crops, max_new_tokens
        self.encode, self.bos_id = text_encoding(self.tokenizer)
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(token) for token in STOP_TOKENS]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[-1]
        # Training encodes an answer as its own chunk, so its first token is the first token of encode("yes").
        self.yes_id, self.no_id = (self.encode(word)[0] for word in ("yes", "no"))
        self.max_length: int | None = getattr(model.config, "max_position_embeddings", None)

    def prepare(self, record: Record, *, turn: int, image_paths: Sequence[Path] | None = None) -> PreparedTurn:
        """The prompt for answering ``turn``; ``ValueError`` naming the image or tag when it cannot be built.

        ``image_paths`` (files anywhere, e.g. from the command line) stand in for the record's paths under the
        images root.
        """
        paths = [path for earlier in record.conversations[: turn + 1] for path in earlier.images]
        given = list(image_paths) if image_paths is not None else None
        if given is not None and len(given) != len(paths):
            raise ValueError(f"{len(given)} image files given for {len(paths)} images in the record")
        resolved, tokens = [], []
        for index, rel in enumerate(paths):
            path = given[index] if given is not None else resolve_inside(self.images_root, rel)
            rel = str(path) if given is not None else rel
            try:
                width, height = check_image(path)
            except ImageProblem as exc:
                raise ValueError(f"image {rel}: {exc}") from None
            resolved.append(path)
            tokens.append(num_image_tokens(width, height, self.num_crops))
        encoded = encode_record(record, encode=self.encode, image_tokens=tokens, bos_id=self.bos_id, upto=turn,
                                fmt=self.fmt)
        if self.max_length is not None and len(encoded) + self.max_new_tokens > self.max_length:
            raise ValueError(
                f"prompt of {len(encoded)} tokens + {self.max_new_tokens} new ones exceeds the model's "
                f"{self.max_length} positions (fewer --num-crops or --max-new-tokens would fit)"
            )
        return PreparedTurn(torch.tensor(encoded.input_ids, dtype=torch.int32), resolved, tokens)

    def load_images(self, prepared: PreparedTurn) -> list[Image.Image]:
        """Decoded RGB images of one turn; ``ValueError`` when one does not decode."""
        images = []
        for path in prepared.image_paths:
            try:
                images.append(load_rgb(path))  # upright, as training read it
            except (OSError, SyntaxError, ValueError, ImageProblem) as exc:
                shown = path.relative_to(self.images_root) if path.is_relative_to(self.images_root) else path
                raise ValueError(f"image {shown} does not decode: {exc}") from None
        return images

    @torch.inference_mode()
    def generate(self, batch: Sequence[PreparedTurn], images: Sequence[list[Image.Image]]) -> list[tuple[str, float]]:
        """(answer text, P(yes) among yes/no at the first answer token) for each prompt, greedy."""
        inputs = self._inputs(batch, [image for turn_images in images for image in turn_images])
        out = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            **self.generation,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        first = out.logits[0].float()  # batch x vocab, the distribution of each answer's first token
        p_yes = torch.softmax(first[:, [self.yes_id, self.no_id]], dim=-1)[:, 0].tolist()
        answers = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        return [(self._decode(ids), p) for ids, p in zip(answers, p_yes)]

    def _inputs(self, batch: Sequence[PreparedTurn], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Left-padded ids and mask (generation appends on the right) plus the batch's images in sample order."""
        device = next(self.model.parameters()).device
        length = max(len(turn.input_ids) for turn in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, turn in enumerate(batch):
            ids[row, length - len(turn.input_ids) :] = turn.input_ids
            mask[row, length - len(turn.input_ids) :] = 1
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if images:
            features = self.processor.image_processor(images, return_tensors="pt", num_crops=self.num_crops)
            expected = [count for turn in batch for count in turn.image_tokens]
            if list(map(int, features["num_img_tokens"])) != expected:  # the prompt and the features would disagree
                raise RuntimeError(f"image processor gives {list(features['num_img_tokens'])} tokens, prompts hold {expected}")
            inputs["pixel_values"] = features["pixel_values"].to(device, self.model.dtype)
            inputs["image_sizes"] = features["image_sizes"].to(device)
        return inputs

    def _decode(self, ids: list[int]) -> str:
        for position, token in enumerate(ids):
            if token in self.stop_ids:
                ids = ids[:position]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def find_split(data: str | Path, split: str) -> tuple[list[Path], Path]:
    """(records ``.jsonl`` files, ``images/`` root) of a converted dataset directory and split, or of one ``.jsonl``."""
    data = Path(data)
    if data.is_file():
        return [data], data.parent / "images"
    return split_files(data, split), images_dir(data)
