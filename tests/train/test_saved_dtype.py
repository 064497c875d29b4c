"""What a finished run releases: a full model in the base's dtype unless --save-dtype says otherwise; a base with a
missing weight is refused by name (never trained from a random init)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from phi3v_train.cli import main
from phi3v_train.model import Phi3VForCausalLM
from train_fixtures import cli_args, run_flags


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny checkpoint saved in bf16, as the official checkpoints are."""
    out = tmp_path_factory.mktemp("bf16-base")
    model = Phi3VForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        (out / name).write_bytes((tiny_model / name).read_bytes())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    return out


def saved_dtypes(folder: Path) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        return {weights.get_tensor(key).dtype for key in weights.keys()}


@pytest.mark.parametrize(("flag", "expected"), [(None, torch.bfloat16), ("fp32", torch.float32)])
def test_full_run_releases_the_base_dtype_unless_asked(
    tmp_path: Path, dataset: Path, bf16_base: Path, flag: str | None, expected: torch.dtype
) -> None:
    flags = run_flags(dataset, bf16_base, tmp_path / "run", max_steps=1)
    if flag:
        flags["save_dtype"] = flag
    result = CliRunner().invoke(main, ["run", *cli_args(flags)])
    assert result.exit_code == 0, result.output
    assert saved_dtypes(tmp_path / "run" / "final") == {expected}
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["torch_dtype"] == str(expected)[6:]


def test_a_base_with_a_missing_weight_is_refused_by_name(tmp_path: Path, dataset: Path, tiny_model: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(tiny_model / "model.safetensors"))
    del weights["model.norm.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    result = CliRunner().invoke(main, ["run", *cli_args(run_flags(dataset, broken, tmp_path / "run", max_steps=1))])
    assert result.exit_code == 1, result.output
    assert "model.norm.weight" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "final").exists()
