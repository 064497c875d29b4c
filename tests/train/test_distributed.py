"""DDP (torchrun, gloo) and DeepSpeed ZeRO-2 on CPU give the single-process run's losses.

The three runs share one global batch of 4: one process accumulating 2 micro-batches of 2, or two ranks with one
micro-batch each. The sampler orders by global batch, and the loss is normalised by the label tokens of the whole
global batch (``num_items_in_batch``), so each step sees the same samples and the same loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phi3v_train.config import load_config
from phi3v_train.train import run
from train_fixtures import cli_args, run_flags, write_dataset

HERE = Path(__file__).parent
STEPS = 2


def _flags(data: Path, model: Path, output: Path) -> dict:
    return run_flags(data, model, output, batch_size=2, global_batch_size=4, max_steps=STEPS)


def _torchrun(entry: list[str], flags: dict, **env: str) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: the rendezvous binds a free port itself, so two tests launching at once cannot pick the same one
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", *entry, *cli_args(flags)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _assert_deepspeed_matches(flags: dict, expected: list[float]) -> None:
    """Two DeepSpeed ranks on CPU train to the one-process losses and write final/."""
    _torchrun([str(HERE / "ds_launch.py")], flags, DS_ACCELERATOR="cpu")
    run_dir = Path(flags["output"])
    # DeepSpeed's fp32 path differs from plain PyTorch in the last digits (seen: ~3e-5 relative).
    assert _losses(run_dir) == pytest.approx(expected, rel=1e-3)
    assert (run_dir / "final" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, list[float]]:
    root = tmp_path_factory.mktemp("single")
    data = write_dataset(root / "data")
    result = run(load_config(flags=_flags(data, tiny_model, root / "run")))
    assert len(result.losses) == STEPS
    return data, result.losses


@pytest.mark.slow
def test_ddp_two_ranks_match_single_process(single, tiny_model: Path, tmp_path: Path) -> None:
    data, expected = single
    _torchrun(["-m", "phi3v_train.cli.run"], _flags(data, tiny_model, tmp_path / "ddp"))
    assert _losses(tmp_path / "ddp") == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_zero2_matches_single_process(single, tiny_model: Path, tmp_path: Path) -> None:
    data, expected = single
    _assert_deepspeed_matches({**_flags(data, tiny_model, tmp_path / "zero2"), "deepspeed": "zero2"}, expected)


@pytest.mark.slow
def test_deepspeed_zero3_with_uneven_image_counts_matches_single_process(tiny_model: Path, tmp_path: Path) -> None:
    """ZeRO-3 gathers each module's weights collectively: ranks holding 0, 1 or 2 images per batch must not hang."""
    text_only = [
        {"id": f"text-{i}", "task": "chat", "conversations": [{"user": f"Say {word}.", "assistant": word}]}
        for i, word in enumerate(["red", "blue"])
    ]
    data = write_dataset(tmp_path / "data", count=6, extra=text_only)
    expected = run(load_config(flags=_flags(data, tiny_model, tmp_path / "single"))).losses
    _assert_deepspeed_matches({**_flags(data, tiny_model, tmp_path / "zero3"), "deepspeed": "zero3"}, expected)


@pytest.mark.slow
def test_ddp_evaluation_during_training_equals_a_single_process_one(tiny_model: Path, tmp_path: Path) -> None:
    """--eval-every on two ranks (DDP, ZeRO-2): each takes half the eval split; the gathered numbers are the
    one-process ones."""
    from test_watch import write_binary_val

    data = write_binary_val(write_dataset(tmp_path / "data"), count=5)  # odd: the ranks' slices differ in size
    flags = {**_flags(data, tiny_model, tmp_path / "single"), "eval_every": 1}
    run(load_config(flags=flags))
    _torchrun(["-m", "phi3v_train.cli.run"], {**flags, "output": str(tmp_path / "ddp")})

    def evals(run_dir: Path) -> dict[int, dict]:
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        return {row["step"]: row for row in rows if "eval_loss" in row}

    _torchrun([str(HERE / "ds_launch.py")], {**flags, "output": str(tmp_path / "zero2"), "deepspeed": "zero2"},
              DS_ACCELERATOR="cpu")
    single = evals(tmp_path / "single")
    assert sorted(single) == [1, 2]
    for name, rel in (("ddp", 1e-5), ("zero2", 1e-3)):  # DeepSpeed's fp32 path differs in the last digits
        other = evals(tmp_path / name)
        assert sorted(other) == [1, 2], name
        for step in (1, 2):
            assert other[step]["eval_loss"] == pytest.approx(single[step]["eval_loss"], rel=rel), name
            assert (other[step]["eval_accuracy"], other[step]["eval_auroc"]) == (
                single[step]["eval_accuracy"], single[step]["eval_auroc"]), name
