"""What ``phi3v-train run`` tells a person: first and last step, ETA, a closing line, resume, paths that survive a
change of directory, and the names other tools use."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from click.testing import CliRunner

from phi3v_train.cli import main
from phi3v_train.config import ConfigError, load_config, suggest_setting


FAST = ["--strategy", "full", "--precision", "fp32", "--num-crops", "1", "--lr", "1e-3", "--warmup", "0",
        "--scheduler", "constant", "--workers", "0", "--no-tensorboard", "--seed", "0", "--no-gradient-checkpointing"]


def test_short_run_logs_first_and_last_step_with_eta_and_a_closing_line(
    tmp_path: Path, dataset: Path, tiny_model: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data_file = dataset / "colors_train.jsonl"  # a file, as eval accepts it: trains on its directory's split
    result = CliRunner().invoke(main, ["run", "--data", str(data_file), "--model", str(tiny_model), *FAST,
                                       "--max-steps", "3", "--log-every", "10", "--batch-size", "8",
                                       "--global-batch-size", "16", "--out", "run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"--data {data_file}: training on dataset {dataset}, split 'train'" in out
    # 8 samples, global batch 16: said before any step
    assert "the global batch (16 samples) is larger than the 8 training samples" in out
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 3]  # --log-every 10 > 3 steps: first and last anyway
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "3/3"]
    assert all(line.split()[2] == "eta" for line in lines)  # not a terminal: the line itself says how long is left
    closing = next(line for line in out.splitlines() if line.startswith("trained "))
    assert closing.startswith("trained 3 steps in ")
    assert f"final loss {logged[-1]['loss']:.4f}" in closing and "samples/s" in closing
    assert "Writing model shards" not in out and "deprecated" not in out  # library chatter hidden without -v
    assert logging.getLogger("transformers").getEffectiveLevel() >= logging.ERROR

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"] == str(dataset.resolve()) and saved["output"] == str((tmp_path / "run").resolve())
    assert saved["train_split"] == "train" and "resume" not in saved and "overwrite" not in saved

    # the saved config, from another directory, without --resume: refused, saying how to continue
    monkeypatch.chdir(dataset)
    again = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "run" / "config.yaml")])
    assert again.exit_code == 1 and "already has checkpoints (checkpoint-3" in again.output
    assert "--resume latest" in again.output
    resumed = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "run" / "config.yaml"), "--resume", "latest",
                                        "--max-steps", "4", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from checkpoint-3 ({tmp_path.resolve() / 'run' / 'checkpoint-3'})" in resumed.output
    assert not [line for line in resumed.output.splitlines() if line.startswith("step ")]  # -q: no interval lines
    assert "trained step 4 in " in resumed.output


def test_flash_is_accepted_as_bench_spells_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--data", "d", "--model", "m", "--out", str(tmp_path),
                                       "--attention", "flash", "--precision", "fp16"])
    assert result.exit_code == 2
    assert "--attention flash_attention_2 with --precision fp16" in result.output


def test_eval_and_predict_spell_attention_as_run_does(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    """One set of choices (phi3v_train.cli.options): `flash` reaches eval and predict as flash_attention_2."""
    for command in (["eval", "--data", str(dataset), "--split", "train", "--output", str(tmp_path / "out")],
                    ["predict", "--image", str(tiny_model / "config.json"), "What?"]):
        result = CliRunner().invoke(main, [*command, "--model", str(tiny_model), "--attention", "flash",
                                           "--precision", "fp32", "--device", "cpu"])
        assert result.exit_code == 2, result.output
        assert "--attention flash_attention_2 needs --precision bf16 (got fp32)" in result.output


def test_other_tools_setting_names_get_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "swift.yaml"
    path.write_text("data: d\nmodel: m\noutput: o\nlearning_rate: 1e-4\nlora: {rnak: 4}\nnum_train_epoch: 2\n")
    try:
        load_config(path)
    except ConfigError as exc:
        problems = exc.problems
    assert sorted(problems) == sorted([
        f"unknown setting 'learning_rate' in {path}; did you mean 'lr' (--lr)?",
        f"unknown setting 'lora.rnak' in {path}; did you mean 'lora.rank' (--lora.rank)?",
        f"unknown setting 'num_train_epoch' in {path}; did you mean 'epochs' (--epochs)?",
    ])
    assert suggest_setting("lora_rank") == "'lora.rank' (--lora.rank)"
    assert suggest_setting("gradient_accumulation_steps") == (
        "'global_batch_size' (--global-batch-size, = batch_size × accumulation × devices)")
    assert suggest_setting("bf16") == "'precision: bf16' (--precision)"
    assert suggest_setting("zzzz") is None


def test_every_split_a_run_needs_is_checked_before_loading(tmp_path: Path) -> None:
    import click

    from phi3v_train.cli.run_checks import check_inputs

    data = tmp_path / "memes"
    data.mkdir()
    for split in ("train", "val", "dev_unseen", "test_seen"):
        (data / f"hateful_memes_{split}.jsonl").write_text("{}\n")
    flags = {"data": str(data), "model": "m", "output": str(tmp_path / "run"), "train_split": "dev_unseen"}
    config, notes = check_inputs(load_config(flags=flags))  # a split whose name holds "_" is found
    assert config.train_split == "dev_unseen" and notes == [] and config.output.is_absolute()
    try:
        check_inputs(load_config(flags={**flags, "eval_after": True, "eval_split": "dev"}))
    except click.UsageError as exc:
        message = exc.message
    assert message == (f"--data {data}: no 'dev' split for --eval-after (--eval-split dev); "
                       "splits there: dev_unseen, test_seen, train, val")
