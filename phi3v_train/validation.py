"""Evaluation while training (``--eval-every``): the validation loss and the task metrics ``phi3v-train eval`` reports.

Every rank takes part: each takes a contiguous slice of the eval split (samples for the loss, records for
generation), the loss sums are all-reduced and the prediction rows gathered in record order, then scored by
:func:`phi3v_train.evaluate.combine` — the scoring ``phi3v-train eval`` uses — so the numbers equal a single-process
``eval`` of the same weights (the loss to float rounding). AUROC ranks every turn together, which is why rows, not
per-rank metrics, are gathered. ZeRO-3 is refused: its sharded weights would need every rank in every generate call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from phi3v_data.prompt import DEFAULT_FORMAT, PromptFormat
from phi3v_train.distributed import gather_over_ranks, sum_over_ranks, world
from phi3v_train.dataset import Sample, load_mixture, source_names
from phi3v_train.evaluate import EvalResult, combine, evaluate, find_split, load_records
from phi3v_train.metrics import SCORED_TASKS
from schemas import Record

METRIC_KEYS = {"val_loss": "eval_loss", "accuracy": "eval_accuracy", "anls": "eval_anls", "auroc": "eval_auroc"}
"""--keep-best names → the keys logged (transformers' ``eval_`` prefix: TensorBoard shows them under ``eval/``)."""

GENERATED = ("accuracy", "anls", "auroc")


@dataclass
class EvalSplit:
    """One dataset's eval records; ``name`` is the dataset's name in a mixture, None for a single dataset."""

    name: str | None
    records: list[Record]
    images_root: Path


def _slice(items: Sequence[Any], rank: int, world: int) -> Sequence[Any]:
    """Rank ``rank``'s contiguous share: joined in rank order, the slices are ``items`` again."""
    return items[rank * len(items) // world : (rank + 1) * len(items) // world]


class Validator:
    """Called with the (unwrapped) model at each evaluation step; returns the ``eval_*`` metrics (None: not
    scorable)."""

    def __init__(self, *, samples: list[Sample], collator: Any, splits: list[EvalSplit], processor: Any,
                 num_crops: int, batch_size: int, max_new_tokens: int = 64, fmt: PromptFormat = DEFAULT_FORMAT) -> None:
        self.samples, self.collator, self.splits, self.processor = samples, collator, splits, processor
        self.num_crops, self.batch_size, self.max_new_tokens = num_crops, batch_size, max_new_tokens
        self.fmt = fmt  # the run's image-tag layout and turns: prompts as training built them

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float | None]:
        was_training = model.training
        model.eval()
        try:
            metrics: dict[str, float | None] = {"eval_loss": self.loss(model)}
            results = {split.name: self.generate(model, split) for split in self.splits}
        finally:
            model.train(was_training)
        metrics.update(flat_metrics(combine(list(results.values()))))
        if len(results) > 1:  # a mixture: each dataset's own numbers too
            for name, result in results.items():
                metrics.update({f"eval_{name}/{key[5:]}": value for key, value in flat_metrics(result).items()})
        return metrics

    def loss(self, model: torch.nn.Module) -> float | None:
        """Cross-entropy per label token over the whole split (not a mean of batch means), as training counts it."""
        rank, size = world()
        mine = sorted(_slice(range(len(self.samples)), rank, size), key=lambda i: -self.samples[i].length)
        device = next(model.parameters()).device
        totals = torch.zeros(2, dtype=torch.float64)
        for start in range(0, len(mine), self.batch_size):
            batch = self.collator([self.samples[i] for i in mine[start : start + self.batch_size]])
            labels = batch.pop("labels")
            inputs = {key: value.to(device) for key, value in batch.items() if key in _MODEL_INPUTS}
            targets = labels[:, 1:]
            positions = torch.nonzero((targets != -100).any(dim=0)).flatten()  # logits only where an answer is
            if not len(positions):
                continue
            logits = model(**inputs, use_cache=False, logits_to_keep=positions.to(device)).logits.float()
            wanted = targets[:, positions].to(device)
            summed = torch.nn.functional.cross_entropy(logits.flatten(0, 1), wanted.flatten(), reduction="sum",
                                                       ignore_index=-100)
            totals += torch.tensor([summed.item(), float((wanted != -100).sum())], dtype=torch.float64)
        summed, tokens = sum_over_ranks(totals).tolist()
        return summed / tokens if tokens else None

    def generate(self, model: torch.nn.Module, split: EvalSplit) -> EvalResult:
        """``evaluate`` on this rank's records, then every rank's rows joined in record order and scored."""
        rank, size = world()
        part = evaluate(model, self.processor, list(_slice(split.records, rank, size)), images_root=split.images_root,
                        num_crops=self.num_crops, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                        progress=False, fmt=self.fmt)
        return combine(gather_over_ranks(part))


_MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_sizes")


def flat_metrics(result: EvalResult) -> dict[str, float | None]:
    """``eval_accuracy`` / ``eval_anls`` / ``eval_auroc`` of a result: a task's own value when one task has the
    metric (the number ``phi3v-train eval`` prints), else the mean over the scored turns of the tasks that have it."""
    out: dict[str, float | None] = {}
    for metric in GENERATED:
        entries = [entry for entry in result.metrics["tasks"].values() if metric in entry]
        if not entries:
            continue
        if len(entries) == 1:
            out[f"eval_{metric}"] = entries[0][metric]
            continue
        scored = [(entry[metric], entry["scored"]) for entry in entries
                  if entry[metric] is not None and entry["scored"]]
        total = sum(count for _, count in scored)
        out[f"eval_{metric}"] = sum(value * count for value, count in scored) / total if total else None
    return out


def build_validator(config: Any, processor: Any, collator: Any, *, deepspeed_json: str | None) -> Validator:
    """The eval split of every dataset of the run (``--eval-limit`` records each); ValueError says what is wrong."""
    from phi3v_train.model import text_encoding

    if deepspeed_json and json.loads(Path(deepspeed_json).read_text()).get("zero_optimization", {}).get("stage") == 3:
        raise ValueError("--eval-every with DeepSpeed ZeRO-3: generation needs every rank's weight shards in each "
                         "step; use zero2 (or evaluate checkpoints afterwards with phi3v-train eval)")
    dirs = [source.path for source in config.sources]
    names = source_names(dirs) if len(dirs) > 1 else [None]
    splits = []
    for name, data_dir in zip(names, dirs):
        files, images_root = find_split(data_dir, config.eval_split)
        splits.append(EvalSplit(name, load_records(files, limit=config.eval_limit), images_root))
    encode, bos = text_encoding(processor.tokenizer)
    dataset, _ = load_mixture(dirs, config.eval_split, encode=encode, bos_id=bos, num_crops=config.num_crops,
                              max_length=config.max_length, fmt=config.prompt_format)
    samples = dataset.samples
    if config.eval_limit is not None:  # the labeled ones among the first --eval-limit records of each dataset
        kept = [{record.id for record in split.records} for split in splits]
        samples = [sample for sample in samples if sample.record.id in kept[sample.source]]
    if config.keep_best in GENERATED:
        tasks = {record.task for split in splits for record in split.records}
        if not any(config.keep_best in SCORED_TASKS.get(task, ()) for task in tasks):
            scored = {task: SCORED_TASKS[task] for task in sorted(tasks) if task in SCORED_TASKS}
            raise ValueError(f"--keep-best {config.keep_best}: no record of the {config.eval_split!r} split has a task "
                             f"scored by it (tasks there: {', '.join(sorted(tasks)) or 'none'}"
                             f"{'; scored by ' + str(scored) if scored else ''}); pick val_loss or another metric")
    return Validator(samples=samples, collator=collator, splits=splits, processor=processor,
                     num_crops=config.num_crops, batch_size=config.batch_size, fmt=config.prompt_format)
