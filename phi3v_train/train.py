"""One finetuning run: ``setup`` (config, data, model) → ``fit`` (train, checkpoint, stop cleanly) → final save.

Built on transformers' ``Trainer`` rather than a hand-written loop because it already does, and keeps doing, the
parts that are easy to get subtly wrong: DDP under torchrun, DeepSpeed ZeRO-2/3, gradient accumulation with loss
normalised over the real label tokens of the whole global batch (``num_items_in_batch``), and resume that restores
weights, optimizer, scheduler, every rank's RNG state and the data position (it skips the batches already seen in
the resumed epoch; our sampler's order depends only on (seed, epoch), so the skipped batches are the ones seen).
What the Trainer lacks is added here and in :mod:`phi3v_train.checkpointing`: the length-grouped sampler, the
multimodal collator, COMPLETE markers, SIGTERM handling, stopping on a non-finite loss, and readable logging
(one line per interval + TensorBoard: loss, learning rate, grad norm, images/s, tokens/s, padding, peak memory).

Order matters in :func:`setup`: TrainingArguments are built before the model so that DeepSpeed ZeRO-3 can build it
partitioned, the dataset is measured before both so a broken dataset costs no model load, and the run directory is
only changed (an --overwrite's deletion, config.yaml, the log) once all of that has passed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.markup import escape
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from phi3v_train import checkpointing as ckpt
from phi3v_train import run_dir as rundir
from phi3v_train.collator import Collator
from phi3v_train.config import TrainConfig, write_config
from phi3v_train.dataset import SampleDataset, SplitSummary, load_mixture, preflight, source_names
from phi3v_train.distributed import barrier, from_main, is_distributed, is_main, world
from phi3v_train.model.compat import checkpointing_arguments
from phi3v_train.model.processing_phi3v import TextEncoder, text_encoding
from phi3v_train.run_dir import RunError
from phi3v_train.sampler import LengthGroupedSampler, MixtureSampler, mixture_quotas
from phi3v_train.strategies import DTYPES, apply_strategy, load_base_model, trainable_summary
from phi3v_train.trainer import (
    LOG_FILE, NonFiniteLossError, Patience, Phi3VTrainer, ProgressLog, close_callbacks, forget_log_after,
    load_checkpoint, run_callbacks, skipped_before,
)
from schemas.errors import json_file_error
from schemas.layout import images_dir

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """How a run ended: ``finished`` (final/ written) or ``preempted`` (checkpoint saved, resume with --resume)."""

    run_dir: Path
    status: str
    global_step: int
    final_dir: Path | None = None
    last_checkpoint: Path | None = None
    losses: list[float] = field(default_factory=list)
    main_process: bool = True  # only the main process reports (every rank returns a result)
    already_finished: bool = False  # --resume of a finished run: nothing trained, final/ left as it was
    skipped_samples: int = 0  # samples stood in for because their images failed to decode mid-run (whole run)


@dataclass
class TrainingSetup:
    config: TrainConfig
    args: TrainingArguments
    trainer: "Phi3VTrainer"
    processor: Any
    resume_from: Path | None
    preemption: ckpt.PreemptionCallback
    console: Console


def accumulation_steps(config: TrainConfig, world_size: int) -> int:
    """Gradient accumulation that turns per-device batches into the global batch, or RunError if it cannot."""
    per_step = config.batch_size * world_size
    wanted = config.global_batch_size or per_step
    if wanted % per_step:
        raise RunError(
            f"--global-batch-size {wanted} is not a multiple of --batch-size {config.batch_size} × {world_size} "
            f"device(s) = {per_step}; use a multiple of {per_step}"
        )
    return wanted // per_step


SHIPPED_DEEPSPEED = ("zero2", "zero3", "zero2-original")
"""Configs in phi3v_train/configs/; zero2-original is the original recipe's DS_CONFIG_DICT (5e8-element buckets)."""


def deepspeed_config(value: str | None) -> str | None:
    """Path of the DeepSpeed JSON: a shipped preset (``zero2``/``zero3``) or the user's file."""
    if value is None:
        return None
    if value in SHIPPED_DEEPSPEED:
        return str(Path(__file__).with_name("configs") / f"{value}.json")
    path = Path(value)
    if not path.is_file():
        raise RunError(f"--deepspeed {value}: neither zero2, zero3 nor an existing JSON file")
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"--deepspeed {json_file_error(path, exc)}") from None
    return str(path)


@dataclass
class OutputPlan:
    """What :func:`prepare_output` decided about the run directory; nothing is deleted or written until every input
    has passed its checks (:func:`_start_run_dir`)."""

    resume_from: Path | None = None
    clear: bool = False  # --overwrite of an earlier run: its files go once the new run's inputs are checked
    settings: dict[str, Any] = field(default_factory=dict)  # recorded in every checkpoint (run-settings.json)
    changes: list[str] = field(default_factory=list)  # run-changing settings a resume was allowed to change
    fresh_optimizer: str | None = None  # the resumed checkpoint's missing state, when continuing without it


def prepare_output(config: TrainConfig, *, world_size: int = 1, allow_changed_settings: bool = False,
                   fresh_optimizer: bool = False) -> OutputPlan:
    """Check the run directory against --resume/--overwrite, deleting nothing: a fresh run never replaces an earlier
    one's files without --overwrite, and a resume must be the run it continues (its checkpoint whole, its settings
    and data the same, unless the user allows the change)."""
    run_dir = config.output
    settings = rundir.run_settings(config, world_size=world_size, digest=rundir.data_digest(config))
    if not config.resume:
        if not config.overwrite:
            rundir.refuse_existing(run_dir)
        return OutputPlan(clear=bool(rundir.run_files(run_dir)), settings=settings)
    try:
        checkpoint = ckpt.resolve_resume(run_dir, config.resume)
    except ckpt.CheckpointError as exc:
        raise RunError(str(exc)) from None
    weights, state = rundir.checkpoint_gaps(checkpoint, strategy=config.strategy, deepspeed=bool(config.deepspeed))
    if weights:
        raise RunError(f"--resume {config.resume}: {checkpoint} has {weights}, so it cannot be resumed; resume an "
                       "older checkpoint (--resume RUN/checkpoint-<step>) or start afresh")
    if state and not fresh_optimizer:
        raise RunError(f"--resume {config.resume}: {checkpoint} has {state}: resuming it would restart the optimizer "
                       "and the learning-rate schedule, not continue the run; resume another checkpoint, or pass "
                       "--fresh-optimizer to continue from its weights with fresh state (logged in log.jsonl)")
    before = rundir.saved_settings(checkpoint)
    changes = rundir.changed_settings(before, settings) if before else []
    if changes and not allow_changed_settings:
        raise RunError(f"--resume {config.resume}: these settings differ from the run's ({checkpoint.name}), and "
                       f"resuming would mix two runs: {'; '.join(changes)}. Use the run's settings (--config "
                       f"{run_dir / 'config.yaml'}), start a new --out, or pass --allow-changed-settings to continue "
                       "with them (each change is logged in log.jsonl)")
    return OutputPlan(resume_from=checkpoint, settings=settings, changes=changes, fresh_optimizer=state)


def training_arguments(config: TrainConfig, *, world_size: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(config.output),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=accumulation_steps(config, world_size),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup,  # transformers: < 1 is a fraction of the steps, >= 1 a number of steps
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        lr_scheduler_type=config.scheduler,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        **checkpointing_arguments(config.gradient_checkpointing),
        logging_steps=config.log_every,
        logging_first_step=True,  # with LogEnds: a run shorter than --log-every still logs its first and last step
        logging_nan_inf_filter=False,  # a NaN stops the run (Phi3VTrainer.compute_loss) rather than being hidden
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=None,  # rotation counts only COMPLETE checkpoints (CheckpointCallback)
        dataloader_num_workers=config.workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # lets bf16 autocast run on CPU (tests, debugging)
        remove_unused_columns=False,
        report_to="none",  # TensorBoard is attached by hand to write into RUN/tensorboard
        disable_tqdm=True,
        deepspeed=deepspeed_config(config.deepspeed),
        ddp_find_unused_parameters=False,
        **_eval_arguments(config),
    )


def _eval_arguments(config: TrainConfig) -> dict[str, Any]:
    """--eval-every/--keep-best as transformers' step evaluation and best-metric tracking (Phi3VTrainer.evaluate)."""
    from phi3v_train.validation import METRIC_KEYS

    if not config.eval_every:
        return {}
    best = METRIC_KEYS[config.keep_best] if config.keep_best else None
    return {"eval_strategy": "steps", "eval_steps": config.eval_every, "metric_for_best_model": best,
            "greater_is_better": None if best is None else config.keep_best != "val_loss"}


def _describe_data(
    console: Console, summaries: list[SplitSummary], sampler: LengthGroupedSampler, config: TrainConfig
) -> None:
    names = source_names([source.path for source in config.sources])
    for index, summary in enumerate(summaries):
        skipped = [f"{summary.unlabeled} unlabeled", f"{summary.too_long} longer than --max-length {config.max_length}"]
        if summary.unusable:
            skipped.append(f"{summary.unusable} unusable")
        console.print(f"data{' ' + names[index] if len(summaries) > 1 else ''}: {summary.kept} samples from "
                      f"{', '.join(p.name for p in summary.files)} (skipped: {', '.join(skipped)}); lengths "
                      + escape(f"from {summary.cache_path}" if summary.cached else "measured"
                               + (f", cached in {summary.cache_path}" if summary.cache_path else "")), highlight=False)
    if isinstance(sampler, MixtureSampler):
        shares = [f"{name} {quota} (weight {source.weight:g}, {quota / size:.2f}× its samples)"
                  for name, source, quota, size in zip(names, config.sources, sampler.quotas, sampler.sizes)]
        console.print(f"mixture: {len(sampler)} samples per epoch: {', '.join(shares)}")
    estimate = _padding_sampler(sampler)
    grouped = estimate.padding_fraction(0)
    if config.order != "length":
        console.print(f"{config.order} order (--order): batches pad {grouped:.1%} of token slots; longest sample "
                      f"{max(sampler.lengths)} tokens")
        return
    # Sorting within single groups of one batch changes no batch's padding: this is what random batches would pad.
    shuffled = estimate.ungrouped()
    on = f", estimated on {len(estimate.lengths):,} of them" if estimate is not sampler else ""
    console.print(f"length-grouped batches pad {grouped:.1%} of token slots (random batches: "
                  f"{shuffled.padding_fraction(0):.1%}{on}); longest sample {max(sampler.lengths)} tokens")


PADDING_ESTIMATE = 100_000
"""Samples the start-up padding figures are computed on: above it, a random subset (two epochs' orders of a
million samples in Python took ~12 s of every start-up)."""


def _padding_sampler(sampler: LengthGroupedSampler) -> LengthGroupedSampler:
    """``sampler`` itself, or for more than :data:`PADDING_ESTIMATE` samples a copy over a random subset of them
    (each dataset of a mixture in proportion), which groups and pads alike."""
    total = len(sampler.lengths)
    if total <= PADDING_ESTIMATE:
        return sampler
    rng = random.Random(sampler.seed)
    small = copy.copy(sampler)
    if isinstance(sampler, MixtureSampler):
        picked, sizes, offset = [], [], 0
        for size in sampler.sizes:
            take = max(1, size * PADDING_ESTIMATE // total)
            picked += [offset + i for i in sorted(rng.sample(range(size), take))]
            sizes.append(take)
            offset += size
        small.sizes, small.quotas = sizes, mixture_quotas(sizes, sampler.weights)
    else:
        picked = sorted(rng.sample(range(total), PADDING_ESTIMATE))
    small.lengths = [sampler.lengths[i] for i in picked]
    return small


def _warn_small_data(console: Console, summaries: list[SplitSummary], config: TrainConfig, *,
                     global_batch: int) -> None:
    """A global batch larger than the data makes every step see (nearly) everything: legal, but rarely meant."""
    kept = sum(summary.kept for summary in summaries)
    if kept < global_batch:
        console.print(f"[yellow]warning[/]: the global batch ({global_batch} samples) is larger than the {kept} "
                      "training samples: each optimizer step sees the whole dataset, so an epoch is one step; "
                      "lower --global-batch-size / --batch-size, or add data")
        return
    small = [f"{', '.join(p.name for p in s.files)} ({s.kept})" for s in summaries if s.kept < global_batch]
    if small:
        console.print(f"[yellow]warning[/]: fewer samples than one global batch ({global_batch}) in: "
                      + escape("; ".join(small)))


def _sampler(config: TrainConfig, dataset: SampleDataset, summaries: list[SplitSummary], *,
             global_batch: int) -> LengthGroupedSampler:
    """Plain length grouping for one dataset (the order single-dataset runs always had); weighted draws for several."""
    if len(summaries) == 1:
        return LengthGroupedSampler(dataset.lengths, batch_size=config.batch_size, global_batch_size=global_batch,
                                    seed=config.seed, order=config.order)
    return MixtureSampler(dataset.lengths, sizes=[s.kept for s in summaries],
                          weights=[source.weight for source in config.sources], batch_size=config.batch_size,
                          global_batch_size=global_batch, seed=config.seed, order=config.order)


def _measure_data(config: TrainConfig, processor: Any, console: Console) -> tuple[SampleDataset, list[SplitSummary]]:
    """Every record's length, from the cache when the data, tokenizer and --num-crops are unchanged.

    Under torchrun rank 0 measures (a pool over this node's cores) and writes the cache while the other ranks wait
    at a barrier, then read it; a rank that finds no cache there (nodes without a shared disk) measures itself.
    """
    from phi3v_train.lengths import LengthCache, tokenizer_digest
    from phi3v_train.model import bos_id

    fmt = config.prompt_format  # the tag layout and turns change lengths: part of the cache's key
    identity = f"{tokenizer_digest(processor.tokenizer)} {fmt.image_tags} {fmt.turns}"

    def load(*, write: bool) -> tuple[SampleDataset, list[SplitSummary]]:
        return load_mixture([source.path for source in config.sources], config.train_split,
                            encode=TextEncoder(processor.tokenizer), bos_id=bos_id(processor.tokenizer),
                            num_crops=config.num_crops, max_length=config.max_length, write_cache=write,
                            fmt=config.prompt_format,
                            cache=lambda data_dir: LengthCache(identity, (data_dir, config.output)), console=console)

    rank, _ = world()
    try:
        if not is_distributed():
            return load(write=True)
        if rank == 0:
            try:
                return load(write=True)
            finally:
                barrier()  # reached even when the data is refused: the others then refuse it themselves
        barrier()
        dataset, summaries = load(write=False)
        if not all(summary.cached for summary in summaries):  # every rank says so: it is not the log's main process
            Console(stderr=True, soft_wrap=True).print(
                f"[yellow]warning[/]: rank {rank} found no length cache after rank 0 wrote it and measured the data "
                "itself (is the dataset or --out on a disk this node does not share?)")
        return dataset, summaries
    except ValueError as exc:
        raise RunError(str(exc)) from None


def _refuse_unusable(config: TrainConfig, summaries: list[SplitSummary]) -> None:
    """The pre-flight's second half: records the validator passed but measuring could not use (an image too
    elongated for the HD transform at --num-crops, a line the loader cannot parse) stop the run here, by line."""
    unusable = sum(s.unusable for s in summaries)
    if unusable:
        first = "; ".join(problem for s in summaries for problem in s.problems)
        raise RunError(f"{unusable} record(s) cannot be trained on: {first}. Fix or drop them (or pass --no-preflight "
                       f"to train without them; they are then skipped and counted)")


def _run_preflight(config: TrainConfig, *, is_main: bool) -> None:
    """Rank 0 validates; every rank learns the verdict, so all refuse together."""
    verdict: str | None = None
    if is_main:
        dirs = [source.path for source in config.sources]
        names = source_names(dirs) if len(dirs) > 1 else [None]
        problems = [preflight(path, config.train_split, report_dir=config.output, name=name, remember=True)
                    for path, name in zip(dirs, names)]
        verdict = "\n".join(f"{path}: {problem}" if len(dirs) > 1 else problem
                            for path, problem in zip(dirs, problems) if problem) or None
    verdict = from_main(verdict)
    if verdict:
        raise RunError(verdict)


def _start_run_dir(config: TrainConfig, plan: OutputPlan, warn: Console) -> None:
    """Main process, once every input passed its checks: the old run's files gone (--overwrite), resolved config, no
    half-saved checkpoints, a log that matches the steps the run will have, and a row per allowed change."""
    config.output.mkdir(parents=True, exist_ok=True)
    if plan.clear:
        gone = rundir.clear_run(config.output)
        warn.print(f"--overwrite: deleted the earlier run's {len(gone)} file(s)/folder(s) in {config.output}")
    write_config(config, config.output / "config.yaml")
    ckpt.remove_incomplete(config.output)
    # A fresh start forgets an old log; a resumed one forgets the steps it will redo.
    step = ckpt.checkpoint_step(plan.resume_from) if plan.resume_from else 0
    forget_log_after(config.output / LOG_FILE, step=step)
    events = [{"event": "settings changed on resume", "change": change} for change in plan.changes]
    if plan.fresh_optimizer:
        events.append({"event": "fresh optimizer and scheduler on resume", "checkpoint": str(plan.resume_from),
                       "missing": plan.fresh_optimizer})
    for event in events:
        warn.print(f"[yellow]warning[/]: {escape(event['event'])}: {escape(event.get('change') or event['missing'])}")
    if events:
        with (config.output / LOG_FILE).open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"step": step, **event}) + "\n" for event in events)


def _load(what: str, source: str, load: Any, *args: Any, **kwargs: Any) -> Any:
    """Loading a model or processor from --model: a wrong path or an unreachable Hub id is a user problem."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as exc:
        raise RunError(f"--model {source}: cannot load the {what}: {str(exc).splitlines()[0]}") from None


def _model(config: TrainConfig, args: TrainingArguments, dataset: SampleDataset, console: Console) -> Any:
    set_seed(config.seed)  # LoRA initialisation draws from the global RNG: same seed, same adapters
    model = apply_strategy(_load("model", config.model, load_base_model, config), config)
    parts = trainable_summary(model)
    for part, (trainable, total) in parts.items():
        console.print(f"{part:>9}: {trainable:,} of {total:,} parameters trainable")
    text_only = dataset.text_only
    vision_trains = any(parts.get(part, (0, 0))[0] for part in ("vision", "projector")) or (
        config.strategy in ("lora", "qlora") and (config.lora.vision or config.lora.projector))
    if text_only and vision_trains:
        args.ddp_find_unused_parameters = True  # a text-only batch leaves the trainable vision side without gradients
    return model


def setup(config: TrainConfig, *, callbacks: Sequence[TrainerCallback] = (), verbosity: int = 0,
          allow_changed_settings: bool = False, fresh_optimizer: bool = False) -> TrainingSetup:
    """Everything up to the first step. Raises RunError for problems a user can fix.

    ``verbosity`` -1 (``-q``) prints only warnings and the closing line. ``allow_changed_settings`` lets a resume
    change run-changing settings; ``fresh_optimizer`` lets it continue a checkpoint without optimizer/scheduler
    state. Both are logged in log.jsonl.
    """
    from phi3v_train.model import Phi3VProcessor

    rank, world_size = world()
    is_main = rank == 0
    if Path(config.model).is_dir():  # adapters record their base; an absolute path survives a change of directory
        config = config.model_copy(update={"model": str(Path(config.model).resolve())})
    console = Console(quiet=not is_main or verbosity < 0, stderr=True, soft_wrap=True)
    warn = Console(quiet=not is_main, stderr=True, soft_wrap=True)
    plan = prepare_output(config, world_size=world_size, allow_changed_settings=allow_changed_settings,
                          fresh_optimizer=fresh_optimizer)
    resume_from = plan.resume_from
    if resume_from is not None:
        warn.print(f"resuming from {resume_from.name} ({resume_from})")
    args = training_arguments(config, world_size=world_size)  # initialises the process group under torchrun
    if config.deepspeed:
        import deepspeed

        deepspeed.init_distributed()  # ZeRO-3 partitions at load time and must see every rank, not just torch's group
    if is_main:
        config.output.mkdir(parents=True, exist_ok=True)  # the preflight report goes there
    if config.preflight:
        _run_preflight(config, is_main=is_main)
    processor = _load("processor", config.model, Phi3VProcessor.from_pretrained, config.model,
                      num_crops=config.num_crops)
    dataset, summaries = _measure_data(config, processor, console)
    if config.preflight:
        _refuse_unusable(config, summaries)
    global_batch = config.batch_size * world_size * args.gradient_accumulation_steps
    sampler = _sampler(config, dataset, summaries, global_batch=global_batch)
    _describe_data(console, summaries, sampler, config)
    _warn_small_data(warn, summaries, config, global_batch=global_batch)
    collator = _collator(config, processor)
    validator = _validator(config, processor, collator, args) if config.eval_every else None  # before the model
    model = _model(config, args, dataset, console)
    if is_main:  # every input is checked: only now may an --overwrite delete the earlier run
        _start_run_dir(config, plan, warn)
    barrier()
    own = run_callbacks(config, warn, is_main=is_main, quiet=verbosity < 0, settings=plan.settings, processor=processor)
    trainer = _trainer(config, args, model=model, dataset=dataset, collator=collator, sampler=sampler,
                       validator=validator, callbacks=[*own, *callbacks], resume_from=resume_from)
    preemption = next(cb for cb in own if isinstance(cb, ckpt.PreemptionCallback))
    return TrainingSetup(config, args, trainer, processor, resume_from, preemption, console)


def _collator(config: TrainConfig, processor: Any) -> Collator:
    """Batches built as the lengths were measured: the run's encoder and BOS, image roots and prompt format."""
    dirs = [source.path for source in config.sources]
    encode, bos = text_encoding(processor.tokenizer)
    return Collator(image_processor=processor.image_processor, encode=encode, bos_id=bos,
                    pad_id=processor.tokenizer.pad_token_id, fmt=config.prompt_format,
                    images_root=[images_dir(path) for path in dirs] if len(dirs) > 1 else images_dir(dirs[0]))


def _trainer(config: TrainConfig, args: TrainingArguments, *, model: Any, dataset: SampleDataset, collator: Collator,
             sampler: LengthGroupedSampler, validator: Any, callbacks: list[TrainerCallback],
             resume_from: Path | None) -> Phi3VTrainer:
    """The Trainer with our callbacks instead of its printer and progress bar; a resume's stand-in count goes on."""
    dirs = [source.path for source in config.sources]
    trainer = Phi3VTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, sampler=sampler,
                           source_names=source_names(dirs) if len(dirs) > 1 else (), callbacks=callbacks,
                           eval_dataset=validator.samples if validator else None,
                           loss_norm=config.loss_norm, decay_exempt=config.decay_exempt)
    trainer.validator = validator
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if resume_from is not None:  # the count of stand-in samples goes on from the checkpoint's
        trainer.skipped.total = trainer.skipped_logged = skipped_before(resume_from)
    return trainer


def _validator(config: TrainConfig, processor: Any, collator: Collator, args: TrainingArguments) -> Any:
    from phi3v_train.validation import build_validator

    try:
        return build_validator(config, processor, collator, deepspeed_json=args.deepspeed)
    except ValueError as exc:  # DataError (no such split) is one
        raise RunError(f"--eval-every: {exc}") from None


def _evaluate(state: TrainingSetup, *, label: str) -> None:
    """--eval-before/--eval-after on rank 0: RUN/eval-<label>/, each dataset of a mixture in its own folder."""
    config = state.config
    if is_main():
        from phi3v_train.evaluate import evaluate_datasets, results_table

        model = state.trainer.accelerator.unwrap_model(state.trainer.model)
        was_training = model.training
        model.eval()
        mixture = len(config.sources) > 1
        with torch.no_grad():
            results = evaluate_datasets(model, state.processor, _eval_datasets(state), mixture=mixture,
                                        output_dir=config.output / f"eval-{label}", meta={"when": label},
                                        num_crops=config.num_crops, batch_size=config.batch_size,
                                        fmt=config.prompt_format)
        state.console.print(results_table(results, mixture=mixture,
                                          title=f"Evaluation {label} training ({config.eval_split})"))
        where = config.output / f"eval-{label}"
        state.console.print(f"predictions and metrics in {where}" + ("/<dataset>/" if mixture else ""),
                            highlight=False)
        model.train(was_training)
    barrier()


def _eval_datasets(state: TrainingSetup) -> dict[str, tuple[list, Path]]:
    """Each dataset's eval split (``--eval-limit`` records); a mixture's dataset without it is named and left out."""
    from phi3v_train.dataset import DataError
    from phi3v_train.evaluate import find_split, load_records

    config = state.config
    datasets = {}
    for name, source in zip(source_names([s.path for s in config.sources]), config.sources):
        try:
            records_path, images_root = find_split(source.path, config.eval_split)
        except DataError as exc:
            if len(config.sources) == 1:
                raise
            state.console.print(f"not evaluated: {name}: {exc}")
            continue
        datasets[name] = (load_records(records_path, limit=config.eval_limit), images_root)
    return datasets


def save_final(state: TrainingSetup) -> Path:
    """RUN/final: the full checkpoint (full/frozen-vision) or the adapter (lora/qlora), plus the processor files.

    Written to a temporary directory and renamed, so ``final/`` is never half there; its ``COMPLETE`` marker names
    the step, which is how ``--resume`` tells a finished run from one killed before or during this save.
    """
    run_dir = state.config.output
    final, staging = run_dir / "final", run_dir / ".final.tmp"
    is_main = state.trainer.is_world_process_zero()
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
    from phi3v_train.model.modeling_phi3v import released

    model = state.trainer.accelerator.unwrap_model(state.trainer.model)
    save_dtype = None if state.config.save_dtype == "auto" else DTYPES[state.config.save_dtype]
    with released(model, save_dtype):  # default: the base checkpoint's dtype (bf16 → bf16); checkpoints stay exact
        state.trainer.save_model(str(staging))  # every rank: DeepSpeed ZeRO-3 gathers the shards here
    if is_main:
        state.processor.save_pretrained(staging)
        ckpt.mark_complete(staging, step=state.trainer.state.global_step)  # says which step final/ holds
        from phi3v_train.model.files import plain_permissions

        plain_permissions(staging, *staging.rglob("*"))  # peft's safetensors adapter is 0600: 0644 as a full model
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    barrier()
    return final


def fit(state: TrainingSetup) -> RunResult:
    """Train until done, pre-empted (SIGTERM) or a non-finite loss; returns how the run ended."""
    config, trainer = state.config, state.trainer
    if state.resume_from is not None and ckpt.checkpoint_step(state.resume_from) >= _planned_steps(trainer):
        return _finish(state)
    if config.eval_before:
        _evaluate(state, label="before")
    try:
        trainer.train(resume_from_checkpoint=str(state.resume_from) if state.resume_from else None)
    except NonFiniteLossError as exc:
        good = ckpt.latest_complete(config.output)
        where = (f"the last good checkpoint is {good.path} (--resume {good.path})" if good
                 else "no checkpoint was saved yet")
        raise RunError(f"training stopped: {exc}; {where}. Lower --lr, use --precision bf16 instead of fp16, "
                       "or check the data around that step") from None
    finally:
        close_callbacks(trainer)
    losses = next((cb.losses for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressLog)), [])
    last = ckpt.latest_complete(config.output)
    result = RunResult(config.output, "finished", trainer.state.global_step, last_checkpoint=last and last.path,
                       losses=losses, main_process=trainer.is_world_process_zero(),
                       skipped_samples=trainer.skipped.total)
    if state.preemption.stopped_at is not None:
        result.status = "preempted"
        return result
    patience = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, Patience)), None)
    if patience is not None and patience.stopped() and trainer.state.global_step < trainer.state.max_steps:
        state.console.print(f"stopped early at step {trainer.state.global_step}: "
                            f"--keep-best {config.keep_best} did not improve in {config.patience} evaluation(s); "
                            f"the best is step {trainer.state.best_global_step} ({config.output / ckpt.BEST})")
    result.final_dir = save_final(state)
    if config.eval_after:
        _evaluate(state, label="after")
    return result


def _planned_steps(trainer: Trainer) -> int:
    """The optimizer steps this configuration trains in all, computed exactly as ``Trainer.train`` will."""
    return trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]


def _finish(state: TrainingSetup) -> RunResult:
    """--resume of a run whose last checkpoint is its last step: train nothing.

    With ``final/`` marked at that step the run is done and stays untouched. Otherwise the process was stopped
    during (or before) the final save: the checkpoint is loaded the way training would load it (adapters, ZeRO
    shards), then ``final/`` is written — the same files an uninterrupted run would have ended with.
    """
    config, trainer = state.config, state.trainer
    step = ckpt.checkpoint_step(state.resume_from)
    result = RunResult(config.output, "finished", step, final_dir=config.output / "final",
                       last_checkpoint=state.resume_from, main_process=trainer.is_world_process_zero(),
                       skipped_samples=skipped_before(state.resume_from))
    if ckpt.final_step(config.output) == step:
        result.already_finished = True
        return result
    state.console.print(f"{state.resume_from.name} is the run's last step; writing final/ from it (nothing to train)")
    load_checkpoint(trainer, state.resume_from)
    result.final_dir = save_final(state)
    if config.eval_after:
        _evaluate(state, label="after")
    return result


def run(config: TrainConfig, *, callbacks: Sequence[TrainerCallback] = (), verbosity: int = 0,
        allow_changed_settings: bool = False, fresh_optimizer: bool = False) -> RunResult:
    """setup → fit, holding the run directory's lock (the main process). ``callbacks`` are extra Trainer callbacks
    (tests use them to simulate crashes); the flags are :func:`setup`'s."""
    try:
        with rundir.run_lock(config.output) if world()[0] == 0 else contextlib.nullcontext():
            state = setup(config, callbacks=callbacks, verbosity=verbosity,
                          allow_changed_settings=allow_changed_settings, fresh_optimizer=fresh_optimizer)
            return fit(state)
    finally:
        if is_distributed():
            dist.destroy_process_group()  # an open gloo group can abort the interpreter at exit
