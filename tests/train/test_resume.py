"""Checkpoint bookkeeping, and resume after a crash or SIGTERM giving exactly the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from transformers import TrainerCallback

from phi3v_train.checkpointing import (
    COMPLETE, CheckpointError, latest_complete, list_checkpoints, mark_complete, prune, resolve_resume,
)
from phi3v_train.config import load_config
from phi3v_train.train import run
from train_fixtures import run_flags, write_dataset


def _make(run_dir: Path, *steps: int, complete: bool = True) -> None:
    for step in steps:
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            mark_complete(run_dir / f"checkpoint-{step}", step=step)


def test_prune_keeps_the_newest_complete_and_drops_stale_partials(tmp_path: Path) -> None:
    _make(tmp_path, 10, 20, 30)
    _make(tmp_path, 5, 40, complete=False)  # 5: an old interrupted save; 40: being written right now
    prune(tmp_path, keep=2)
    assert [(c.step, c.complete) for c in list_checkpoints(tmp_path)] == [(20, True), (30, True), (40, False)]
    assert latest_complete(tmp_path).step == 30
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-30"


def test_resume_refuses_incomplete_or_missing(tmp_path: Path) -> None:
    _make(tmp_path, 7, complete=False)
    with pytest.raises(CheckpointError, match="has no COMPLETE marker"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-7"))
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-8"))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume(tmp_path, "latest")


class Interrupt(TrainerCallback):
    """At the start of optimizer step ``at``: crash (an exception) or SIGTERM this process."""

    def __init__(self, at: int, *, sigterm: bool = False) -> None:
        self.at, self.sigterm = at, sigterm

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if state.global_step + 1 == self.at:
            if self.sigterm:
                os.kill(os.getpid(), signal.SIGTERM)  # handled after this step: checkpoint, then stop
            else:
                raise KeyboardInterrupt("simulated crash")


def _losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())}


def test_interrupted_runs_resume_to_the_same_losses(tmp_path: Path, tiny_model: Path) -> None:
    # LoRA dropout makes every step depend on the restored RNG; 4 records, global batch 2 of per-device 1 means
    # accumulation over 2 micro-batches, 2 steps per epoch, and resumes landing mid-epoch and on an epoch start.
    data = write_dataset(tmp_path / "data", count=4)

    def flags(name: str, **extra) -> dict:
        return run_flags(data, tiny_model, tmp_path / name, strategy="lora", lr=1e-2, batch_size=1,
                         global_batch_size=2, max_steps=5, save_every=3, **extra)

    straight = run(load_config(flags=flags("a")))
    assert straight.status == "finished" and len(straight.losses) == 5

    preempted = run(load_config(flags=flags("b")), callbacks=[Interrupt(2, sigterm=True)])
    assert (preempted.status, preempted.global_step) == ("preempted", 2)
    assert (tmp_path / "b" / "checkpoint-2" / COMPLETE).is_file()

    with pytest.raises(KeyboardInterrupt):  # resumes at epoch 1's start, saves at 3, logs 4, dies in step 5
        run(load_config(flags=flags("b", resume="latest")), callbacks=[Interrupt(5)])
    (tmp_path / "b" / "checkpoint-4").mkdir()  # as if the crash had hit while saving step 4
    assert latest_complete(tmp_path / "b").step == 3

    resumed = run(load_config(flags=flags("b", resume="latest")))  # from 3: mid-epoch, one batch skipped
    assert resumed.status == "finished" and resumed.global_step == 5
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")  # exact, step by step
    assert not (tmp_path / "b" / "checkpoint-4").exists()
    assert (tmp_path / "b" / "final" / "adapter_config.json").is_file()
