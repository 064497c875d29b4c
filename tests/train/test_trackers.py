"""--report-to wandb,mlflow, offline: the trackers hold log.jsonl's numbers and the run's settings and data."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import phi3v_train.validation as validation
from phi3v_train.cli.run import run as run_command
from phi3v_train.config import load_config
from phi3v_train.train import run
from test_watch import write_binary_val
from train_fixtures import cli_args, run_flags, write_dataset


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline ``run-*.wandb`` file: LevelDB's log format (32 KiB blocks of chunks with
    a 7-byte header: crc32, length, type) after wandb's 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, block = path.read_bytes(), [], b"", 32768
    assert data[:4] == b":W&B"
    position = 7
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _value(item: Any) -> Any:
    return json.loads(item.value_json)


def test_wandb_and_mlflow_offline_hold_the_logged_numbers(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_binary_val(write_dataset(tmp_path / "data"))
    (data / "manifest.json").write_text(json.dumps({"name": "colors", "splits": {"train": 8, "val": 6}}))
    values = iter([2.5, 2.0])
    monkeypatch.setattr(validation.Validator, "__call__",
                        lambda self, model: {"eval_loss": next(values), "eval_accuracy": 0.5})
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_PROJECT", "phi3v-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "phi3v-test")
    (tmp_path / "wandb").mkdir()
    run_dir = tmp_path / "run"
    run(load_config(flags=run_flags(data, tiny_model, run_dir, max_steps=2, eval_every=1, lr=1e-3,
                                    report_to="wandb,mlflow")))
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = {row["step"]: row for row in rows if "loss" in row}
    evals = {row["step"]: row for row in rows if "eval_loss" in row}
    assert sorted(train) == sorted(evals) == [1, 2]

    # MLflow's file store: metrics/<key> lines "timestamp value step"
    [run_path] = [p for p in (tmp_path / "mlruns").glob("*/*") if (p / "metrics").is_dir()]

    def mlflow_metric(key: str) -> dict[int, float]:
        lines = (run_path / "metrics" / key).read_text().splitlines()
        return {int(step): float(value) for _, value, step in (line.split() for line in lines)}

    assert mlflow_metric("loss") == {step: row["loss"] for step, row in train.items()}
    assert mlflow_metric("learning_rate") == {step: row["learning_rate"] for step, row in train.items()}
    assert mlflow_metric("eval_loss") == {1: 2.5, 2: 2.0} and mlflow_metric("eval_accuracy") == {1: 0.5, 2: 0.5}
    assert (run_path / "params" / "phi3v.settings.lr").read_text() == "0.001"
    assert (run_path / "params" / "phi3v.weights.data").read_text() == "1.0"
    [artifact] = run_path.glob("artifacts/phi3v-run.json")
    assert json.loads(artifact.read_text())["datasets"][0]["manifest"]["splits"] == {"train": 8, "val": 6}

    # wandb's offline run: history rows keyed train/<name>, eval/<name>, with train/global_step
    [log] = (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(log)
    history = [{item.key or "/".join(item.nested_key): _value(item) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    logged_loss = {row["train/global_step"]: row["train/loss"] for row in history if "train/loss" in row}
    assert logged_loss == {step: row["loss"] for step, row in train.items()}
    logged_eval = {row["train/global_step"]: row["eval/loss"] for row in history if "eval/loss" in row}
    assert logged_eval == {1: 2.5, 2: 2.0}
    config = {item.key: _value(item) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    assert config["phi3v"]["settings"]["lr"] == 0.001
    assert config["phi3v"]["datasets"][0]["manifest"]["name"] == "colors"


def test_a_missing_tracker_package_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    data = write_dataset(tmp_path / "data")
    result = CliRunner().invoke(run_command, [*cli_args(run_flags(data, tmp_path / "m", tmp_path / "run")),
                                              "--report-to", "wandb"])
    assert result.exit_code == 2
    assert "--report-to wandb needs wandb, which is not installed: pip install 'phi3v[wandb]'" in result.output


@pytest.mark.parametrize("asked", ["by default", "--report-to"])
def test_a_missing_tensorboard_is_refused_before_anything_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked: str
) -> None:
    """TensorBoard is on by default; without the package, the run used to fail only after the model had loaded (and
    after --overwrite had deleted the earlier run)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    flags = run_flags(write_dataset(tmp_path / "data"), tmp_path / "m", tmp_path / "run")
    if asked == "by default":
        del flags["tensorboard"]
        expected = "--tensorboard (on by default; --no-tensorboard turns it off) needs tensorboard"
    else:
        flags["report_to"] = "tensorboard"
        expected = "--report-to tensorboard needs tensorboard"
    earlier = tmp_path / "run" / "log.jsonl"
    earlier.parent.mkdir()
    earlier.write_text('{"step": 1, "loss": 1.0}\n')
    result = CliRunner().invoke(run_command, [*cli_args(flags), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert f"{expected}, which is not installed: pip install 'phi3v[train]'" in " ".join(result.output.split())
    assert earlier.read_text() == '{"step": 1, "loss": 1.0}\n'
