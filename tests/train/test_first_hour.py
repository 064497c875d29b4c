"""What a new user's first hour reads: the closing throughput line of a slow run, and eval over a run's mixture."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from phi3v_train.cli import main
from phi3v_train.trainer import throughput
from train_fixtures import write_dataset


def test_throughput_keeps_significant_digits_for_slow_runs() -> None:
    # one sample per step, 227.3 s per step (a real-size model on CPU): "0.00 samples/s" said nothing
    assert throughput(1, 1, 227.3) == "0.0044 samples/s (227 s/step)"
    assert throughput(64, 4, 60.0) == "1.07 samples/s (15 s/step)"
    assert throughput(1000, 100, 10.0) == "100 samples/s (10 steps/s)"
    assert throughput(0, 0, 5.0) == "0 samples/s (0 steps/s)"


def test_eval_scores_each_dataset_of_a_mixture_on_its_own(tiny_model: Path, tmp_path: Path) -> None:
    colors = write_dataset(tmp_path / "a" / "colors", split="val", count=3)
    shapes = write_dataset(tmp_path / "b" / "colors", split="val", count=2)  # same folder name: named by path
    with (shapes / "colors_val.jsonl").open("a") as handle:
        handle.write("{not json\n")  # line 3 of b's file: reported, skipped, counted for b only
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_model), "--data", str(colors), "--data", str(shapes),
                                       "--num-crops", "1", "--max-new-tokens", "2", "--output", str(out), "-q"])
    assert result.exit_code == 1, result.output  # the bad line, as with one dataset
    assert "colors_val.jsonl:3" in result.output
    names = [p.name for p in sorted(out.iterdir()) if p.is_dir()]
    assert len(names) == 2 and names[0].endswith("a-colors") and names[1].endswith("b-colors")
    # records 0..2 of colors (one with 2 turns: index 3 is not among them) and 0..1 of shapes
    rows = {name: [json.loads(line) for line in (out / name / "predictions.jsonl").read_text().splitlines()]
            for name in names}
    assert [row["id"] for row in rows[names[0]]] == ["val-0", "val-1", "val-2"]
    assert [row["id"] for row in rows[names[1]]] == ["val-0", "val-1"]
    gathered = json.loads((out / "metrics.json").read_text())
    assert sorted(gathered["datasets"]) == names
    assert gathered["datasets"][names[0]]["tasks"]["classification"]["turns"] == 3
    assert gathered["datasets"][names[1]]["tasks"]["classification"]["turns"] == 2
    assert [gathered["datasets"][name]["skipped_lines"] for name in names] == [0, 1]
    assert gathered["datasets"][names[1]]["data"] == [str(shapes / "colors_val.jsonl")]
    assert "metrics.json by dataset" in result.output


def test_eval_refuses_a_missing_split_in_any_dataset_before_loading(tiny_model: Path, tmp_path: Path) -> None:
    good = write_dataset(tmp_path / "good", split="val", count=1)
    no_val = write_dataset(tmp_path / "noval", split="train", count=1)
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_model), "--data", str(good), "--data", str(no_val),
                                       "--output", str(tmp_path / "eval")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and str(no_val) in result.output
    assert not (tmp_path / "eval" / "good").exists()  # nothing evaluated before the check


def test_init_tiny_says_one_line_without_library_chatter(tmp_path: Path) -> None:
    # a fresh process: library loggers bind the real stderr at import, which an in-process runner cannot see
    command = [sys.executable, "-c", "from phi3v_train.cli import main; main()", "init-tiny", str(tmp_path / "tiny")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).strip() == f"wrote tiny checkpoint to {tmp_path / 'tiny'}"


def test_recipes_table_cuts_nothing_when_piped() -> None:
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[1:-1]]
            for line in result.output.splitlines() if line.startswith("│")}
    assert not [cell for row in rows.values() for cell in row if "…" in cell]  # "Phi-3…" hid the model measured on
    assert rows["nlvr2-full"][-2:] == ["accuracy 89.4", "Phi-3.5-vision"]
    assert rows["hateful-memes-frozen-vision-fp16"][-2:] == ["accuracy 78.6", "Phi-3-vision"]
    assert rows["docvqa-lora"][-3:] == ["32/16", "anls 82.46", "Phi-3-vision"]


def test_eta_is_timed_from_the_end_of_the_slow_first_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from phi3v_train import trainer

    clock = [0.0]
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])
    log = trainer.ProgressLog(Console(file=io.StringIO()), tmp_path)
    state = SimpleNamespace(global_step=0, max_steps=11)
    log.on_train_begin(None, state, None)
    clock[0], state.global_step = 100.0, 1  # step 1: 100 s of warm-up and one step
    log.on_step_end(None, state, None)
    assert log._eta(state) == "eta 16m40s"  # nothing better known yet: 100 s × 10 steps left
    clock[0], state.global_step = 110.0, 2  # step 2: 10 s
    log.on_step_end(None, state, None)
    assert log._eta(state) == "eta 1m30s"  # 10 s × 9 steps left, not (110 / 2) × 9 = 8m15s


def test_predict_prints_the_answer_only(tiny_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 24), (200, 30, 30)).save(tmp_path / "red.png")
    command = [sys.executable, "-c", "from phi3v_train.cli import main; main()", "predict", "--model", str(tiny_model),
               "--image", str(tmp_path / "red.png"), "--num-crops", "1", "--max-new-tokens", "3", "What color?"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no "Loading weights" bar, no torch_dtype/gradient-checkpointing deprecations
    assert len(done.stdout.splitlines()) == 1


def test_export_of_a_full_run_says_it_is_a_model_already(tiny_model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", "--adapter", str(tiny_model), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 1, result.output
    assert "it is not a LoRA/QLoRA adapter, so there is nothing to merge (a full checkpoint already: give it to " \
           "eval/predict as --model, or copy it)" in " ".join(result.output.split())
    assert not (tmp_path / "merged").exists()


def test_eval_after_says_where_its_predictions_are(tiny_model: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", split="train", count=2)
    write_dataset(data, split="val", count=1)
    result = CliRunner().invoke(main, ["run", "--data", str(data), "--model", str(tiny_model), "--strategy", "full",
                                       "--precision", "fp32", "--num-crops", "1", "--max-steps", "1", "--workers", "0",
                                       "--no-tensorboard", "--eval-after", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    where = tmp_path / "run" / "eval-after"
    assert f"predictions and metrics in {where}\n" in result.output
    assert (where / "predictions.jsonl").is_file() and (where / "metrics.json").is_file()


def test_dry_run_config_works_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)  # a local model directory; a Hub id stays as given
    for model, expected in (("models/base", str(tmp_path.resolve() / "models" / "base")),
                            ("microsoft/Phi-3.5-vision-instruct", "microsoft/Phi-3.5-vision-instruct")):
        result = CliRunner().invoke(main, ["run", "--recipe", "docvqa-lora", "--data", "data/docvqa", "--out", "runs/x",
                                           "--model", model, "--dry-run"])
        assert result.exit_code == 0, result.output
        saved = yaml.safe_load((tmp_path / "runs" / "x" / "config.yaml").read_text())
        # as a real run saves them, so `--config runs/x/config.yaml` means the same from elsewhere
        root = tmp_path.resolve()
        assert (saved["data"], saved["output"]) == (str(root / "data" / "docvqa"), str(root / "runs" / "x"))
        assert saved["model"] == expected


def test_sample_video_lists_its_classes_on_one_line(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from phi3v_data.cli import main as data_main

    result = CliRunner().invoke(data_main, ["sample", "video", str(tmp_path / "src"), "--classes", "3",
                                            "--clips-per-class", "2"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "classes:" in line)
    assert line == "3 classes: ApplyEyeMakeup, Basketball, HandstandPushups"
