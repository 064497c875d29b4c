"""What the run adds to transformers' Trainer: our sampler, a finite-loss guard, throughput figures and readable logs.

Every interval log gains images/s, tokens/s (real, not padding), the padding fraction of the batches actually
trained on and peak memory; TensorBoard records them with the Trainer's loss, learning rate and grad norm. On the
main process :class:`ProgressLog` shows a rich progress bar, prints one line per interval and appends the same
figures to ``RUN/log.jsonl`` (the file tests and people compare runs with). A mixture of datasets adds
``samples/<dataset>``: the samples of each dataset trained on in the interval, over all devices.

Two settings give the original recipe's optimisation (transformers 4.4x's Trainer) instead of transformers 5's:
``loss_norm="micro-batch"`` averages each micro-batch's mean loss over the accumulated batch instead of dividing
the summed token losses by the global batch's label tokens, and ``decay_exempt="layernorm"`` exempts only biases
and ``nn.LayerNorm`` weights from weight decay, so Phi-3's RMSNorm weights are decayed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_pt_utils import get_parameter_names
from transformers.trainer_callback import ExportableState

from phi3v_data.io import atomic_write
from phi3v_train import checkpointing as ckpt
from phi3v_train.collator import SKIPPED_KEY
from phi3v_train.distributed import all_finite, count_over_ranks, peak_memory_gb, sum_over_ranks
from phi3v_train.sampler import LengthGroupedSampler


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the optimizer applied it."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss is {value} at optimizer step {step + 1}")
        self.step = step
        self.value = value


class Phi3VTrainer(Trainer):
    """Trainer with our sampler, a finite-loss guard and throughput figures added to every log."""

    def __init__(
        self, *args: Any, sampler: LengthGroupedSampler, source_names: Sequence[str] = (), loss_norm: str = "tokens",
        decay_exempt: str = "norms", **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.loss_norm, self.decay_exempt = loss_norm, decay_exempt
        self.source_names = list(source_names)
        # images, real tokens, padded token slots, then samples of each dataset of a mixture
        self.counts = torch.zeros(3 + len(self.source_names), dtype=torch.float64)
        self.last_log_time = time.perf_counter()
        self.skipped = SkippedSamples()
        self.skipped_logged = 0
        self.add_callback(self.skipped)
        self.validator: Any = None  # --eval-every: phi3v_train.validation.Validator

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, Any]:
        """--eval-every: the validator's loss and task metrics; callbacks (--patience) see them before the best
        moves."""
        if self.validator is None:  # no --eval-every: transformers' own loop over an eval_dataset, if one was given
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = self.validator(self.accelerator.unwrap_model(self.model))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _determine_best_metric(self, metrics: dict[str, Any], trial: Any) -> bool:
        """transformers' best-so-far (kept in trainer_state.json, so resume knows it), a checkpoint at each new best
        (RUN/best is copied from it), and the evaluation's log row naming the best step."""
        key = self.args.metric_for_best_model
        new = key is not None and metrics.get(key) is not None and super()._determine_best_metric(metrics, trial)
        if new:
            self.control.should_save = True
        best = {"best_step": self.state.best_global_step} if key and self.state.best_global_step else {}
        self.log({**{name: value for name, value in metrics.items() if value is not None}, **best})
        return new

    def _get_train_sampler(self, train_dataset: Any = None) -> LengthGroupedSampler:
        return self.sampler

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if self.decay_exempt == "layernorm":  # transformers 4.45: get_parameter_names(ALL_LAYERNORM_LAYERS), no "bias"
            return decay_names_layernorm_only(model)
        return super().get_decay_parameter_names(model)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self.loss_norm == "micro-batch":
            # No token count: the model returns this micro-batch's mean and the Trainer divides it by the
            # accumulation steps (DDP then averages ranks): the mean of micro-batch means, as transformers 4.4x did.
            num_items_in_batch = None
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        mask = inputs["attention_mask"]
        images = inputs["pixel_values"].shape[0] if "pixel_values" in inputs else 0
        self.counts[:3] += torch.tensor([images, int(mask.sum()), mask.numel()], dtype=torch.float64)
        sources = inputs.pop("source_ids", None)  # the model takes no such input
        if sources is not None and self.source_names:
            self.counts[3:] += torch.bincount(sources.cpu(), minlength=len(self.source_names)).double()
        stood_in = inputs.pop(SKIPPED_KEY, None)  # samples the collator could not build (undecodable images)
        self.skipped.total += count_over_ranks(int(stood_in) if stood_in is not None else 0)
        if torch.is_tensor(num_items_in_batch):  # a global batch of stand-ins only: loss 0, not 0/0
            num_items_in_batch = num_items_in_batch.clamp(min=1)
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if not all_finite(loss):
            raise NonFiniteLossError(self.state.global_step, float(loss.detach().float()))
        return result

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # only interval logs; every rank reaches them together, so the all-reduce is safe
            logs.update(self._throughput())
        super().log(logs, start_time)

    def _throughput(self) -> dict[str, float]:
        counts = sum_over_ranks(self.counts)
        images, real, slots, *per_source = counts.tolist()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        now = time.perf_counter()
        elapsed = max(now - self.last_log_time, 1e-9)
        self.counts.zero_()
        self.last_log_time = now
        skipped, self.skipped_logged = self.skipped.total - self.skipped_logged, self.skipped.total
        return {"images_per_s": images / elapsed, "tokens_per_s": real / elapsed,
                "padding_fraction": (slots - real) / slots if slots else 0.0, "peak_memory_gb": peak_memory_gb(device),
                "skipped_samples": skipped,
                **{f"samples/{name}": int(n) for name, n in zip(self.source_names, per_source)}}


def decay_names_layernorm_only(model: nn.Module) -> list[str]:
    """Parameters that get weight decay under transformers 4.4x's Trainer: all but biases and ``nn.LayerNorm``
    weights (RMSNorm weights included)."""
    return [name for name in get_parameter_names(model, [nn.LayerNorm]) if "bias" not in name]


class SkippedSamples(TrainerCallback, ExportableState):
    """Samples the collator stood in for, over the whole run (all ranks). Saved in each checkpoint's
    ``trainer_state.json``, so a resumed run counts on from there (:func:`skipped_before`)."""

    def __init__(self, total: int = 0) -> None:
        self.total = total

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"total": self.total}}

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # A checkpoint saved before this counter existed has no entry; the Trainer's save would fail on the key.
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())


def skipped_before(checkpoint: Path) -> int:
    """The stand-in count a checkpoint recorded (0 for one without it)."""
    try:
        saved = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return int(saved["stateful_callbacks"][SkippedSamples.__name__]["attributes"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


LOG_FILE = "log.jsonl"


def forget_log_after(path: Path, *, step: int) -> None:
    """Drop log lines of steps a resumed run will redo, so log.jsonl reads as one uninterrupted run."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.writelines(kept)


class LogEnds(TrainerCallback):
    """Every rank: log the last step too (the first is ``logging_first_step``), so a run shorter than ``--log-every``
    still reports its losses. Every rank must agree, since a log all-reduces the throughput counters."""

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_log = True


def duration(seconds: float) -> str:
    """``75`` → ``1m15s``; ``4000`` → ``1h06m``: short enough for a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def throughput(samples: int, steps: int, seconds: float) -> str:
    """``samples/s (steps/s)`` with three significant digits, so a slow run reads ``0.00440 samples/s`` rather
    than ``0.00``; below one step a second the step rate is given as seconds per step (``227 s/step``)."""
    seconds = max(seconds, 1e-9)
    step_rate = f"{steps / seconds:.3g} steps/s" if steps >= seconds or not steps else f"{seconds / steps:.3g} s/step"
    return f"{samples / seconds:.3g} samples/s ({step_rate})"


class ProgressLog(TrainerCallback):
    """Main process only: a rich progress bar, one readable line per logging interval, ``RUN/log.jsonl``, and a
    closing line (final loss, elapsed time, throughput).

    The bar is drawn only on a terminal; the lines carry an ETA, so a log file read by a person or a scheduler says
    how long is left too. ``quiet`` keeps log.jsonl and the closing line and drops the per-interval lines.
    """

    def __init__(self, console: Console, run_dir: Path, *, quiet: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.path = run_dir / LOG_FILE
        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.task: Any = None
        self.losses: list[float] = []
        self.quiet = quiet
        self.live = False
        self.started = time.perf_counter()
        self.first_step = 0
        self.after_first: float | None = None  # when the first step ended: later steps time the ETA

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.first_step, self.after_first = time.perf_counter(), state.global_step, None
        if self.console.is_terminal:  # elsewhere a bar draws nothing but stray blank lines
            self.progress.start()
            self.live = True
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if self.after_first is None:
            self.after_first = time.perf_counter()
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if logs and any(key.startswith("eval_") for key in logs):
            self._log_eval(state, logs)
        if not logs or "loss" not in logs:
            return
        self.losses.append(logs["loss"])
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        if self.quiet:
            return
        grad = logs.get("grad_norm")
        self.console.print(
            f"step {state.global_step}/{state.max_steps}  {self._eta(state)}  loss {logs['loss']:.4f}  "
            f"lr {logs['learning_rate']:.2e}  "
            + (f"grad {grad:.3f}  " if grad is not None else "")
            + f"{logs['images_per_s']:.1f} img/s  {logs['tokens_per_s']:.0f} tok/s  "
            f"padding {logs['padding_fraction']:.1%}  peak {logs['peak_memory_gb']:.2f} GB"
            + "".join(f"  {key[8:]} {value}" for key, value in logs.items() if key.startswith("samples/"))
            + (f"  [yellow]skipped {logs['skipped_samples']} bad sample(s)[/]" if logs.get("skipped_samples") else "")
        )

    def _log_eval(self, state: Any, logs: dict[str, Any]) -> None:
        """--eval-every: a log.jsonl row and one line: val loss, the task metrics, the best step so far."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        if self.quiet:
            return
        shown = [f"val loss {logs['eval_loss']:.4f}" if logs.get("eval_loss") is not None else "val loss -"]
        shown += [f"{key[5:]} {value:.4f}" for key, value in logs.items()
                  if key.startswith("eval_") and key != "eval_loss" and isinstance(value, float)]
        best = f"  (best: step {logs['best_step']})" if "best_step" in logs else ""
        self.console.print(f"eval step {state.global_step}/{state.max_steps}  " + "  ".join(shown) + best)

    def _eta(self, state: Any) -> str:
        done = state.global_step - self.first_step
        if done <= 0:
            return "eta ?"
        # the first step also pays for warm-up (data workers, allocator, kernels): timed from its end once possible
        since, steps = (self.after_first, done - 1) if done > 1 and self.after_first else (self.started, done)
        left = (time.perf_counter() - since) / steps * (state.max_steps - state.global_step)
        return f"eta {duration(left)}"

    def close(self) -> None:
        if self.live:
            self.progress.stop()
            self.live = False

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()
        elapsed = time.perf_counter() - self.started
        steps = state.global_step - self.first_step
        samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        loss = f"final loss {self.losses[-1]:.4f}" if self.losses else "no loss logged"
        if not self.first_step:
            span = f"{steps} step{'s' if steps != 1 else ''}"
        elif steps == 1:  # resumed: name the steps this process trained
            span = f"step {state.global_step}"
        else:
            span = f"steps {self.first_step + 1}-{state.global_step}"
        self.console.print(f"trained {span} in {duration(elapsed)}: {loss}, "
                           f"{throughput(samples, steps, elapsed)}")


class Patience(EarlyStoppingCallback):
    """--patience: transformers' early stopping, without its warning about load_best_model_at_end (final/ is the last
    step's model on purpose, RUN/best the best one). Its count is saved in each checkpoint and taken back on resume
    here (transformers would restore every stateful callback, replacing our own, only when asked to)."""

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, dict):
            self.early_stopping_patience_counter = saved.get("attributes", {}).get("early_stopping_patience_counter", 0)

    def stopped(self) -> bool:
        return self.early_stopping_patience_counter >= self.early_stopping_patience


def run_callbacks(config: Any, console: Console, *, is_main: bool, quiet: bool = False,
                  settings: dict[str, Any] | None = None, processor: Any = None) -> list[TrainerCallback]:
    """The run's own callbacks: checkpoints, SIGTERM, log ends and --patience on every rank; the progress log,
    TensorBoard and the --report-to trackers on the main process."""
    callbacks: list[TrainerCallback] = [
        ckpt.CheckpointCallback(config.output, keep=config.keep_last, settings=settings,
                                keep_best=bool(config.keep_best), processor=processor),
        ckpt.PreemptionCallback(), LogEnds()]
    if config.patience:
        callbacks.append(Patience(early_stopping_patience=config.patience))
    if is_main:
        callbacks.append(ProgressLog(console, config.output, quiet=quiet))
        if config.tensorboard or "tensorboard" in config.report_to:
            from torch.utils.tensorboard import SummaryWriter

            callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(config.output / "tensorboard"))))
        if set(config.report_to) - {"tensorboard"}:
            from phi3v_train.trackers import tracker_callbacks

            callbacks += tracker_callbacks(config)
    return callbacks


class _Loaded(Exception):
    """Raised at train begin to leave ``Trainer.train`` once the checkpoint is loaded, before any step."""


class _StopAfterLoading(TrainerCallback):
    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        raise _Loaded


def load_checkpoint(trainer: Trainer, checkpoint: Path) -> None:
    """Load ``checkpoint`` the way training would (adapters, ZeRO shards) and train no step."""
    # First in line, so no other callback starts anything (SIGTERM handler, progress bar) that train_end would stop.
    trainer.callback_handler.callbacks.insert(0, _StopAfterLoading())
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    except _Loaded:
        pass
    finally:
        trainer.callback_handler.callbacks = [cb for cb in trainer.callback_handler.callbacks
                                              if not isinstance(cb, _StopAfterLoading)]
        close_callbacks(trainer)


def close_callbacks(trainer: Trainer) -> None:
    """Flush what the callbacks hold open (the progress bar, TensorBoard's writer) and give SIGTERM back once training
    returns or raises."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ckpt.PreemptionCallback):
            callback.restore()
        if isinstance(callback, ProgressLog):
            callback.close()
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            callback.tb_writer.flush()
