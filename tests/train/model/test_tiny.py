"""Presets, the tiny checkpoint files and ``phi3v-train init-tiny``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from phi3v_train.cli import main
from phi3v_train.model import count_parameters, preset_config

FIXTURES = Path(__file__).parents[2] / "fixtures" / "phi-3.5-vision-instruct"


def test_real_preset_has_the_official_size_without_allocating_it() -> None:
    config = preset_config("phi-3.5-vision")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (3072, 32, 32)
    assert config.vocab_size == 32064 and config.vision_config.hidden_size == 1024
    assert config.vision_config.num_hidden_layers == 24 and config.vision_config.hidden_act == "quick_gelu"
    assert config.rope_parameters["rope_type"] == "longrope"
    # by hand: LM 2*32064*3072 + 32*(3072*9216 + 3072*3072 + 3072*16384 + 8192*3072 + 2*3072) + 3072
    lm = 2 * 32064 * 3072 + 32 * (28_311_552 + 9_437_184 + 50_331_648 + 25_165_824 + 6144) + 3072
    # CLIP ViT-L/14-336: embeddings (1024 + 3*14*14*1024 + 577*1024) + 2 LNs + 24 layers of 12,596,224
    clip = 1024 + 602_112 + 590_848 + 2 * 2048 + 24 * 12_596_224
    projection = 2 * 4096 + (4096 * 3072 + 3072) + (3072 * 3072 + 3072)
    assert lm + clip + projection == 4_146_621_440
    assert count_parameters("phi-3.5-vision") == 4_146_621_440


def test_tiny_checkpoint_files(tiny_dir: Path) -> None:
    names = {path.name for path in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"preprocessor_config.json", "processor_config.json", "generation_config.json"} <= names
    config = json.loads((tiny_dir / "config.json").read_text())
    official = json.loads((FIXTURES / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["architectures"] == ["Phi3VForCausalLM"]
    assert config["img_processor"]["vision_config"]["image_size"] == 336
    assert config["embd_layer"] == official["embd_layer"] and config["auto_map"] == official["auto_map"]
    # the official rope at small size: type "su", every 6th of the official 48 factors (head dim 16 → 8 factors)
    assert config["rope_scaling"]["type"] == "su" and config["rope_theta"] == 10000.0
    assert config["rope_scaling"]["short_factor"] == official["rope_scaling"]["short_factor"][::6]
    assert config["original_max_position_embeddings"] == 4096 and config["max_position_embeddings"] == 131072
    assert (config["vocab_size"], config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (
        32064, 32000, 1, 2)
    assert config["torch_dtype"] == "float32" and config["use_cache"] is True
    assert not {"rope_parameters", "dtype"} & set(config)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):  # the real tokenizer, byte for byte
        assert (tiny_dir / name).read_bytes() == (FIXTURES / name).read_bytes(), name
    for name in ("preprocessor_config.json", "processor_config.json"):  # the official keys and values (num_crops 4)
        assert json.loads((tiny_dir / name).read_text()) == json.loads((FIXTURES / name).read_text()), name
    assert 10_000_000 < (tiny_dir / "model.safetensors").stat().st_size < 20_000_000  # 32064 x 64 embeddings twice


def test_init_tiny_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tiny"
    result = runner.invoke(main, ["init-tiny", str(out), "--seed", "3", "--num-crops", "16"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "preprocessor_config.json").read_text())["num_crops"] == 16
    again = runner.invoke(main, ["init-tiny", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output
    assert runner.invoke(main, ["init-tiny", str(out), "--preset", "huge"]).exit_code == 2
