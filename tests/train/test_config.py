"""TrainConfig: YAML + flags, errors that name the flag, the resolved config written back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from phi3v_train.config import ConfigError, TrainConfig, flag_name, load_config, write_config

BASE = {"data": "d", "model": "m", "output": "o"}


def test_flags_override_yaml_and_unset_flags_do_not(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nmodel: m\noutput: o\nlr: 0.5\nbatch_size: 4\nlora: {rank: 4, alpha: 8}\n")
    config = load_config(path, flags={"lr": 0.25, "batch_size": None, "lora": {"rank": 2, "alpha": None}})
    assert (config.lr, config.batch_size, config.lora.rank, config.lora.alpha) == (0.25, 4, 2, 8.0)


def test_learning_rate_default_follows_strategy() -> None:
    assert load_config(flags={**BASE, "strategy": "lora"}).lr == 2e-4
    assert load_config(flags={**BASE, "strategy": "full"}).lr == 2e-5


def test_all_problems_reported_at_once_naming_flags_and_yaml_keys(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nmodel: m\noutput: o\nbatch_size: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, flags={"lr": -1.0, "lora": {"rank": 0}, "strategy": "lots"})
    problems = caught.value.problems
    assert len(problems) == 4
    assert any(p.startswith("--lr: Input should be greater than 0 (got -1.0)") for p in problems)
    assert any(p.startswith("--lora.rank: ") for p in problems)
    assert any(p.startswith("--strategy: ") and "'lots'" in p for p in problems)
    assert any(p.startswith(f"--batch-size (batch_size in {path}): ") for p in problems)


def test_missing_required_and_unknown_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nlora: {rnak: 3}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert sorted(caught.value.problems) == sorted([
        "--model is required (a flag, or 'model' in the --config YAML)",
        "--output is required (a flag, or 'output' in the --config YAML)",
        f"unknown setting 'lora.rnak' in {path}; did you mean 'lora.rank' (--lora.rank)?",
    ])


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"--config {path} line 3: not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_flash_attention_needs_bf16(precision: str) -> None:
    with pytest.raises(ConfigError,
                       match=f"--attention flash_attention_2 with --precision {precision}: flash attention needs bf16"):
        load_config(flags={**BASE, "attention": "flash_attention_2", "precision": precision})
    assert (load_config(flags={**BASE, "attention": "flash_attention_2", "precision": "bf16"}).attention
            == "flash_attention_2")


def test_global_batch_must_be_a_multiple_of_batch() -> None:
    with pytest.raises(ConfigError, match="--global-batch-size 10 is not a multiple of --batch-size 4"):
        load_config(flags={**BASE, "batch_size": 4, "global_batch_size": 10})


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(flags={**BASE, "strategy": "qlora", "lora": {"targets": ["qkv_proj"]}})
    write_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lr"] == 2e-4
    assert load_config(tmp_path / "config.yaml") == config


def test_flag_names() -> None:
    assert flag_name(("lora", "rank")) == "--lora.rank"
    assert flag_name(("global_batch_size",)) == "--global-batch-size"
    assert flag_name(("train_projector",)) == "--train-projector/--freeze-projector"
    assert set(TrainConfig.model_fields) >= {"data", "model", "output", "strategy", "num_crops", "deepspeed"}
