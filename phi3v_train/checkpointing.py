"""Checkpoints that can be trusted: complete-or-ignored, rotated, resumable, and saved on pre-emption.

The Trainer writes ``RUN/checkpoint-<step>/`` (weights or adapter, optimizer, scheduler, RNG states of every rank,
trainer state with the data position). Only after every rank has finished writing does rank 0 add ``COMPLETE``, so a
crash mid-save leaves a directory that resume ignores and the next start removes. ``--resume latest`` picks the
newest complete checkpoint. SIGTERM (a cluster pre-empting the job) is turned into "save now, then stop" at the end
of the current optimizer step; a non-finite loss stops the run before the optimizer applies it.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from phi3v_data.io import atomic_write, write_json
from phi3v_train.distributed import any_rank, barrier
from phi3v_train.run_dir import SETTINGS_FILE
from schemas.errors import UserError

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(UserError, ValueError):
    """A --resume request that cannot be honoured; the message says what exists instead."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    step: int
    path: Path
    complete: bool


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """``checkpoint-<step>`` directories of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            found.append(Checkpoint(int(match.group(1)), path, (path / COMPLETE).is_file()))
    return sorted(found, key=lambda c: c.step)


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint directory was saved at (from its name)."""
    match = _CHECKPOINT_RE.match(path.name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint-<step> directory")
    return int(match.group(1))


def latest_complete(run_dir: Path) -> Checkpoint | None:
    complete = [c for c in list_checkpoints(run_dir) if c.complete]
    return complete[-1] if complete else None


def resolve_resume(run_dir: Path, resume: str) -> Path:
    """The checkpoint directory ``--resume`` means: ``latest`` in ``run_dir``, or an explicit complete checkpoint."""
    if resume == "latest":
        found = latest_complete(run_dir)
        if found is None:
            partial = [c.path.name for c in list_checkpoints(run_dir)]
            extra = f" (incomplete, ignored: {', '.join(partial)})" if partial else ""
            raise CheckpointError(f"--resume latest: no complete checkpoint in {run_dir}{extra}; "
                                  "start without --resume")
        return found.path
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint directory")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"--resume {resume}: has no {COMPLETE} marker (saving was interrupted); "
                              "pick an older one")
    return path


def final_step(run_dir: Path) -> int | None:
    """The step ``RUN/final`` was saved at (its COMPLETE marker), or None when it is missing or unmarked."""
    try:
        first = (run_dir / "final" / COMPLETE).read_text(encoding="utf-8").split("\n", 1)[0]
    except OSError:
        return None
    match = re.fullmatch(r"step (\d+)", first.strip())
    return int(match.group(1)) if match else None


def mark_complete(path: Path, *, step: int, note: str = "") -> None:
    """Write the marker last, atomically: its presence means every file before it is in place."""
    with atomic_write(path / COMPLETE, "w", encoding="utf-8") as handle:
        handle.write(f"step {step}\nsaved {time.strftime('%Y-%m-%dT%H:%M:%S')}\n{note}")


BEST = "best"
_TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|training_args\.bin|"
                             r"trainer_state\.json|global_step\d+|latest|zero_to_fp32\.py|COMPLETE)$")
"""What a checkpoint holds only to resume; RUN/best keeps the rest (weights or adapter, configs), as final/ does."""


def best_step(run_dir: Path) -> int | None:
    """The step RUN/best was copied from (its COMPLETE marker), or None."""
    try:
        return int((run_dir / BEST / COMPLETE).read_text(encoding="utf-8").split("\n", 1)[0].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def copy_best(checkpoint: Path, run_dir: Path, *, step: int, note: str, processor: object | None = None) -> Path:
    """RUN/best ← the model files of ``checkpoint`` (+ the processor's), swapped in whole: never half there."""
    best, staging, old = run_dir / BEST, run_dir / ".best.tmp", run_dir / ".best.old"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging, ignore=lambda _, names: [n for n in names if _TRAINING_STATE.match(n)])
    if processor is not None:
        processor.save_pretrained(staging)  # type: ignore[attr-defined]
    mark_complete(staging, step=step, note=note)
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        best.rename(old)
    staging.rename(best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def prune(run_dir: Path, *, keep: int, best_step: int | None = None) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep`` (the best one stays too) and incomplete ones older than
    the newest complete."""
    checkpoints = list_checkpoints(run_dir)
    complete = [c for c in checkpoints if c.complete]
    newest = complete[-1].step if complete else -1
    doomed = [c.path for c in complete[:-keep] if c.step != best_step]
    doomed += [c.path for c in checkpoints if not c.complete and c.step < newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_incomplete(run_dir: Path) -> list[Path]:
    """Clear leftovers of an interrupted save so the Trainer never writes into a half-filled directory."""
    doomed = [c.path for c in list_checkpoints(run_dir) if not c.complete]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


class CheckpointCallback(TrainerCallback):
    """Marks each saved checkpoint complete (after all ranks wrote their part) and keeps the newest ``keep``."""

    def __init__(self, run_dir: Path, *, keep: int, settings: dict[str, Any] | None = None, keep_best: bool = False,
                 processor: object | None = None) -> None:
        self.run_dir = run_dir
        self.keep = keep
        self.settings = settings  # the run's settings and data digest, so a resume can tell it is the same run
        self.keep_best, self.processor = keep_best, processor  # --keep-best: the best checkpoint stays, RUN/best
        self.saved: list[Path] = []

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        """Resumed: RUN/best must be the best the resumed state knows (it can be newer, from steps now redone)."""
        best = state.best_global_step if self.keep_best else None
        if not best or not state.is_world_process_zero or best_step(self.run_dir) == best:
            return
        source = self.run_dir / f"checkpoint-{best}"
        if (source / COMPLETE).is_file():
            copy_best(source, self.run_dir, step=best, note=_best_note(args, state), processor=self.processor)
        else:
            log.warning("the best checkpoint so far (%s) is gone; %s/%s is replaced at the next better evaluation",
                        source.name, self.run_dir, BEST)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        barrier()  # ZeRO shards and per-rank RNG files are written by every rank
        path = self.run_dir / f"checkpoint-{state.global_step}"
        best = state.best_global_step if self.keep_best else None
        if state.is_world_process_zero:
            if self.settings is not None:
                write_json(path / SETTINGS_FILE, self.settings)
            mark_complete(path, step=state.global_step)
            if best == state.global_step:
                copy_best(path, self.run_dir, step=best, note=_best_note(args, state), processor=self.processor)
            prune(self.run_dir, keep=self.keep, best_step=best)
        self.saved.append(path)
        barrier()


def _best_note(args: TrainingArguments, state: TrainerState) -> str:
    return f"{args.metric_for_best_model} {state.best_metric}\n"


class PreemptionCallback(TrainerCallback):
    """SIGTERM → finish the current optimizer step, save a checkpoint, stop. Restores the old handler at the end."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: object = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the old handler back; also called when training raises, which skips ``on_train_end`` (a handler left
        behind would swallow every later SIGTERM, and a worker forked later would survive its pool's terminate)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._previous = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if any_rank(self.requested):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
