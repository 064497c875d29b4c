"""Batched greedy evaluation of a model on converted records: predictions, per-task metrics, a table.

Every turn of every record is answered once. Prompts come from :func:`phi3v_data.prompt.encode_record` with
``upto=turn``, so the model sees exactly what training showed it; earlier turns carry their reference answers (for
unlabeled records, the model's own earlier answers). Metrics follow each record's ``task`` (see
:mod:`phi3v_train.metrics`). Batches are left-padded and sorted by prompt length; a batch of many gives the same
answers as one-by-one (probabilities agree to float rounding, ~1e-7). The prompts and the batched generation are
:mod:`phi3v_train.generate`'s; :func:`evaluate_datasets` scores one dataset or each of a mixture (``phi3v-train eval``
and a run's ``--eval-before``/``--eval-after``).
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

from phi3v_data.io import iter_jsonl, write_json, write_jsonl
from phi3v_data.prompt import DEFAULT_FORMAT, PromptFormat
from phi3v_train.dataset import split_files
from phi3v_train.generate import Generator, PreparedTurn
from phi3v_train.metrics import score_turn, summarize
from schemas import Record
from schemas.errors import first_validation_line
from schemas.layout import images_dir


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
    mixture: bool | None = None,
    **settings: Any,
) -> dict[str, EvalResult]:
    """:func:`evaluate` one dataset, or each dataset of a mixture on its own: ``{name: (records, images_root)}`` →
    ``{name: result}``.

    One dataset's predictions and metrics go to ``output_dir`` itself. A mixture's go to ``output_dir/<name>/``, and
    ``output_dir/metrics.json`` gathers the metrics by dataset, so one dataset's score never hides another's.
    ``dataset_meta[name]`` adds to that dataset's metrics only (its files, its skipped lines). ``mixture`` (default:
    more than one dataset) says which layout: a mixture of which only one dataset has the split keeps a mixture's.
    """
    if not (len(datasets) > 1 if mixture is None else mixture):
        [(name, (records, images_root))] = datasets.items()
        return {name: evaluate(model, processor, records, images_root=images_root, output_dir=output_dir,
                               meta={**(meta or {}), **(dataset_meta or {}).get(name, {})}, **settings)}
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


def results_table(results: dict[str, EvalResult], *, title: str = "Evaluation", mixture: bool | None = None) -> Table:
    """The table of :func:`evaluate_datasets`' results: one dataset's own (:meth:`EvalResult.table`), else one row
    per dataset and task (the same columns, a dataset column first); ``mixture`` as there."""
    if not (len(results) > 1 if mixture is None else mixture):
        return next(iter(results.values())).table(title=title)
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
    _answer_all(state, generator, batch_size=batch_size, progress=progress)
    settings = {"num_crops": num_crops, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                "image_tags": fmt.image_tags, "turns": fmt.turns}
    result = _result(state, settings=settings, meta=meta)
    if output_dir is not None:
        result.write(output_dir)
    return result


def _answer_all(state: _State, generator: Generator, *, batch_size: int, progress: bool) -> None:
    """Every turn into ``state.rows``, round by round: turn t of an unlabeled record needs the answer to turn t-1."""
    records = state.records
    with Progress(disable=not progress, transient=True) as bar:
        task_id = bar.add_task("evaluating", total=sum(len(record.conversations) for record in records))
        for turn in range(max((len(r.conversations) for r in records), default=0)):
            pending = [_prepare(state, generator, index, turn)
                       for index, r in enumerate(records) if turn < len(r.conversations)]
            for item in pending:
                if item.error is not None:
                    _record_row(state, item, error=item.error)
                    bar.advance(task_id)
            ready = sorted((p for p in pending if p.prepared), key=lambda p: -len(p.prepared.input_ids))
            for batch in _chunks(ready, batch_size):
                _answer_batch(state, generator, batch)
                bar.advance(task_id, len(batch))


def _prepare(state: _State, generator: Generator, record_index: int, turn: int) -> _Pending:
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


def _answer_batch(state: _State, generator: Generator, batch: list[_Pending]) -> None:
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
    state: _State, item: _Pending, *, prediction: str | None = None, p_yes: float | None = None,
    error: str | None = None,
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


def _scored(rows: list[dict[str, Any]], *, records: int, settings: dict[str, Any],
            meta: dict[str, Any] | None) -> EvalResult:
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
    """Records of dataset ``.jsonl`` files; a bad line is reported through ``on_error`` (file:line: field: msg)
    and skipped."""
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
                    message = first_validation_line(exc)
            if on_error is not None:
                on_error(f"{path}:{line.lineno}: {message}")
    return records


def find_split(data: str | Path, split: str) -> tuple[list[Path], Path]:
    """(records ``.jsonl`` files, ``images/`` root) of a converted dataset directory and split, or of one ``.jsonl``."""
    data = Path(data)
    return ([data] if data.is_file() else split_files(data, split)), images_dir(data)
