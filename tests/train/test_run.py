"""``phi3v-train run`` end to end: outputs, refusals with clear messages, NaN stop, SIGTERM from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from phi3v_train.checkpointing import COMPLETE
from phi3v_train.cli.run import run as run_command
from phi3v_train.config import load_config
from phi3v_train.model import Phi3VForCausalLM
from phi3v_train.train import RunError, run
from train_fixtures import cli_args, run_flags, write_dataset


def test_cli_run_writes_the_documented_layout(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    write_dataset(dataset, split="val", count=2)
    flags = run_flags(dataset, tiny_model, tmp_path / "run", max_steps=2, save_every=1, keep_last=1,
                      tensorboard=True, workers=1, eval_after=True, eval_limit=2)
    result = CliRunner().invoke(run_command, cli_args(flags))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]  # keep_last=1
    assert (run_dir / "checkpoint-2" / COMPLETE).is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"] == str(tiny_model.resolve())
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2]
    assert {"loss", "learning_rate", "grad_norm", "images_per_s", "tokens_per_s", "padding_fraction",
            "peak_memory_gb"} <= set(logged[0])
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    final = Phi3VForCausalLM.from_pretrained(run_dir / "final")  # official format, loadable as is
    assert final.config.model_type == "phi3_v" and (run_dir / "final" / "preprocessor_config.json").is_file()
    predictions = (run_dir / "eval-after" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 2 and (run_dir / "eval-after" / "metrics.json").is_file()


def test_cli_refuses_flash_attention_with_fp16_before_loading_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(run_command, ["--data", "d", "--model", "m", "--output", str(tmp_path),
                                              "--attention", "flash_attention_2", "--precision", "fp16"])
    assert result.exit_code == 2
    assert "--attention flash_attention_2 with --precision fp16: flash attention needs bf16" in result.output
    assert not list(tmp_path.iterdir())


def test_cli_refuses_a_broken_dataset_pointing_at_the_report(tmp_path: Path, tiny_model: Path) -> None:
    bad = {"id": "x", "conversations": [{"images": ["nope.png"], "user": "q", "assistant": "a"}]}
    data = write_dataset(tmp_path / "data", extra=[bad])
    result = CliRunner().invoke(run_command, cli_args(run_flags(data, tiny_model, tmp_path / "run")))
    assert result.exit_code == 1
    assert "colors_train.jsonl:9" in result.output and str(tmp_path / "run" / "preflight-train.json") in result.output
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_existing_checkpoints_need_resume_or_overwrite(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(RunError, match="already has checkpoints .*--resume latest.*--overwrite"):
        run(load_config(flags=run_flags(dataset, tiny_model, tmp_path / "run")))
    with pytest.raises(RunError, match="--resume latest: no complete checkpoint .*incomplete, ignored: checkpoint-3"):
        run(load_config(flags=run_flags(dataset, tiny_model, tmp_path / "run", resume="latest")))


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(
    tmp_path: Path, dataset: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = Phi3VForCausalLM.forward
    calls = []

    def poisoned(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # optimizer step 3 (one micro-batch per step)
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(Phi3VForCausalLM, "forward", poisoned)
    config = load_config(flags=run_flags(dataset, tiny_model, tmp_path / "run", save_every=2, max_steps=6))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunError) as caught:
        run(config)
    assert signal.getsignal(signal.SIGTERM) is before  # the run's "save, then stop" handler went with it
    good = tmp_path / "run" / "checkpoint-2"
    assert f"loss is nan at optimizer step 3; the last good checkpoint is {good}" in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    assert (good / COMPLETE).is_file()
    weights = Phi3VForCausalLM.from_pretrained(good).state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (tmp_path / "run" / "final").exists()


def test_sigterm_to_the_command_saves_a_checkpoint_then_exits(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    flags = run_flags(dataset, tiny_model, tmp_path / "run", max_steps=200, save_every=1000)
    command = [sys.executable, "-m", "phi3v_train.cli.run", *cli_args(flags)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().strip()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    checkpoints = list((tmp_path / "run").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / COMPLETE).is_file(), output
    step = int(checkpoints[0].name.split("-")[1])
    assert 1 <= step < 200
    assert f"stopped by SIGTERM at step {step}" in output and "--resume latest" in output
    assert not (tmp_path / "run" / "final").exists()


def test_accumulation_and_deepspeed_presets() -> None:
    from phi3v_train.train import accumulation_steps, deepspeed_config

    config = load_config(flags={"data": "d", "model": "m", "output": "o", "batch_size": 2, "global_batch_size": 16})
    assert accumulation_steps(config, world_size=1) == 8
    assert accumulation_steps(config, world_size=4) == 2
    with pytest.raises(RunError,
                       match=r"--global-batch-size 16 is not a multiple of --batch-size 2 × 3 device\(s\) = 6"):
        accumulation_steps(config, world_size=3)
    for preset, stage in (("zero2", 2), ("zero3", 3)):
        shipped = json.loads(Path(deepspeed_config(preset)).read_text())
        assert shipped["zero_optimization"]["stage"] == stage and shipped["zero_force_ds_cpu_optimizer"] is False
    with pytest.raises(RunError, match="--deepspeed zero4: neither zero2, zero3 nor an existing JSON file"):
        deepspeed_config("zero4")
