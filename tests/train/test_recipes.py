"""Every recipe resolves to the original script's settings, written down here from the original.

Source: microsoft/Phi-3CookBook. Hyperparameters hard-coded in every ``finetune_hf_trainer_*.py`` (TrainingArguments):
per_device_train_batch_size=1, gradient_checkpointing=True, optim adamw_torch, adam_beta1=0.9, adam_beta2=0.95,
adam_epsilon=1e-7, weight_decay=args.wd (default 0.01), max_grad_norm=1.0, lr_scheduler_type='linear',
warmup_steps=50, deepspeed=DS_CONFIG_DICT (ZeRO-2) unless --use_lora. ``create_lora_config``: lora_dropout 0.0,
init_lora_weights='gaussian', targets qkv_proj/o_proj/down_proj/gate_up_proj/lm_head (+ CLIP and img_projection
unless --freeze_vision_model). ``--bf16 --use_flash_attention`` gives bf16 + flash_attention_2, otherwise fp16 +
eager. Rows: ``md/03.FineTuning/FineTuning_Vision.md``, "Suggested hyperparameters and expected accuracy".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from phi3v_train.cli import main
from phi3v_train.config import ConfigError, load_config
from phi3v_train.recipes import all_recipes, get_recipe

PHI3 = "microsoft/Phi-3-vision-128k-instruct"
PHI35 = "microsoft/Phi-3.5-vision-instruct"

# (name, strategy, precision, lora rank, lora alpha, lr, epochs, reported value, model it was measured on)
ROWS = [
    # DocVQA table (ANLS), "NOTE: Phi-3-vision": training method | data type | LoRA rank | LoRA alpha | batch | lr | epochs  # noqa: E501
    ("docvqa-full", "full", "bf16", None, None, 5e-6, 2, 83.65, PHI3),
    ("docvqa-full-fp16", "full", "fp16", None, None, 5e-6, 2, 82.60, PHI3),
    ("docvqa-frozen-vision", "frozen-vision", "bf16", None, None, 1e-4, 2, 79.19, PHI3),
    ("docvqa-frozen-vision-fp16", "frozen-vision", "fp16", None, None, 1e-4, 2, 78.74, PHI3),
    ("docvqa-lora", "lora", "bf16", 32, 16, 2e-4, 2, 82.46, PHI3),
    ("docvqa-lora-fp16", "lora", "fp16", 32, 16, 2e-4, 2, 82.34, PHI3),
    ("docvqa-qlora", "qlora", "bf16", 32, 16, 2e-4, 2, 81.85, PHI3),
    ("docvqa-qlora-fp16", "qlora", "fp16", 32, 16, 2e-4, 2, 81.85, PHI3),
    # Hateful memes table (accuracy), "NOTE: Phi-3-vision"
    ("hateful-memes-full", "full", "bf16", None, None, 5e-5, 2, 86.4, PHI3),
    ("hateful-memes-full-fp16", "full", "fp16", None, None, 5e-5, 2, 85.4, PHI3),
    ("hateful-memes-frozen-vision", "frozen-vision", "bf16", None, None, 1e-4, 3, 79.4, PHI3),
    ("hateful-memes-frozen-vision-fp16", "frozen-vision", "fp16", None, None, 1e-4, 3, 78.6, PHI3),
    ("hateful-memes-lora", "lora", "bf16", 128, 256, 2e-4, 2, 86.6, PHI3),
    ("hateful-memes-lora-fp16", "lora", "fp16", 128, 256, 2e-4, 2, 85.2, PHI3),
    ("hateful-memes-qlora", "qlora", "bf16", 128, 256, 2e-4, 2, 84.0, PHI3),
    ("hateful-memes-qlora-fp16", "qlora", "fp16", 128, 256, 2e-4, 2, 83.8, PHI3),
    # NLVR2 table (accuracy), Phi-3.5-vision (finetune_hf_trainer_nlvr2.py defaults to it); all rows bf16
    ("nlvr2-full", "full", "bf16", None, None, 1e-5, 3, 89.40, PHI35),
    ("nlvr2-frozen-vision", "frozen-vision", "bf16", None, None, 2e-5, 2, 89.20, PHI35),
]


def _resolve(name: str, tmp_path: Path, **flags):
    return load_config(flags={"recipe": name, "data": str(tmp_path), "output": str(tmp_path / "run"), **flags})


def test_one_recipe_per_original_row() -> None:
    assert sorted(r.name for r in all_recipes()) == sorted([row[0] for row in ROWS] + ["ucf101-full"])


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_recipe_matches_the_original_row(row: tuple, tmp_path: Path) -> None:
    name, strategy, precision, rank, alpha, lr, epochs, value, measured_on = row
    config = _resolve(name, tmp_path)
    flash = precision == "bf16"  # the tables' bf16 rows ran --bf16 --use_flash_attention; fp16 rows neither
    assert (config.strategy, config.precision, config.attention) == (
        strategy, precision, "flash_attention_2" if flash else "eager")
    assert (config.lr, config.epochs, config.global_batch_size, config.batch_size) == (lr, epochs, 64, 1)
    assert config.num_crops == 16  # --num_crops default 16 (docvqa, hateful_memes, nlvr2)
    assert (config.weight_decay, config.adam_beta1, config.adam_beta2, config.adam_epsilon) == (0.01, 0.9, 0.95, 1e-7)
    assert (config.scheduler, config.warmup, config.max_grad_norm, config.gradient_checkpointing) == (
        "linear", 50, 1.0, True)
    assert config.model == PHI35 and config.recipe == name
    # DeepSpeed ZeRO-2 (DS_CONFIG_DICT) for full finetuning only: deepspeed=None if args.use_lora
    assert config.deepspeed == ("zero2-original" if strategy in ("full", "frozen-vision") else None)
    if strategy == "frozen-vision":
        assert config.vision_freeze == "original"  # model.model.vision_embed_tokens.requires_grad_(False)
    if strategy in ("lora", "qlora"):
        lora = config.lora
        assert (lora.rank, lora.alpha, lora.dropout, lora.init) == (rank, alpha, 0.0, "gaussian")
        assert set(lora.targets) == {"qkv_proj", "o_proj", "down_proj", "gate_up_proj"}
        assert (lora.lm_head, lora.vision, lora.projector) == (True, True, True)  # vision not frozen in LoRA rows
        # BitsAndBytesConfig(load_in_4bit, nf4, compute bf16/fp16) quantizes every linear but lm_head, no double quant
        assert (lora.quantize_vision, lora.double_quant) == ((True, False) if strategy == "qlora" else (False, True))
    result = get_recipe(name).original.result
    assert (result.value, result.model) == (value, measured_on)
    assert result.metric == ("anls" if name.startswith("docvqa") else "accuracy")


def test_ucf101_recipe_is_the_scripts_defaults(tmp_path: Path) -> None:
    # finetune_hf_trainer_ucf101.py argparse defaults: no --use_lora (full + ZeRO-2), no --bf16 (fp16),
    # no --use_flash_attention (eager), --batch_size 16, --num_crops 4, --num_train_epochs 1, --learning_rate 4e-5
    config = _resolve("ucf101-full", tmp_path)
    assert (config.strategy, config.precision, config.attention, config.deepspeed) == (
        "full", "fp16", "eager", "zero2-original")
    assert (config.global_batch_size, config.num_crops, config.epochs, config.lr) == (16, 4, 1.0, 4e-5)
    assert (config.adam_beta2, config.adam_epsilon, config.warmup, config.scheduler) == (0.95, 1e-7, 50, "linear")
    assert get_recipe("ucf101-full").original.result is None  # the guide reports no UCF-101 accuracy


def test_original_deepspeed_config_is_ds_config_dict() -> None:
    path = Path(__file__).parents[2] / "phi3v_train" / "configs" / "zero2-original.json"
    # DS_CONFIG_DICT, identical in all four scripts
    assert json.loads(path.read_text()) == {
        "zero_optimization": {
            "stage": 2, "allgather_partitions": True, "allgather_bucket_size": 5e8, "overlap_comm": True,
            "reduce_scatter": True, "reduce_bucket_size": 5e8, "contiguous_gradients": True,
            "round_robin_gradients": True,
        },
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    }


def test_flags_and_yaml_win_over_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("recipe: docvqa-lora\nlr: 1.0e-4\nlora: {rank: 8}\n")
    config = load_config(path, flags={"data": str(tmp_path), "output": "o", "epochs": 1.0, "lora": {"alpha": 4.0}})
    assert (config.lr, config.epochs, config.lora.rank, config.lora.alpha) == (1e-4, 1.0, 8, 4.0)
    assert (config.lora.lm_head, config.adam_beta2, config.num_crops) == (True, 0.95, 16)  # the rest from the recipe


def test_unknown_recipe_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _resolve("docvqa-lroa", tmp_path)
    assert caught.value.problems == [
        "--recipe docvqa-lroa: no such recipe; did you mean docvqa-lora or docvqa-qlora or docvqa-lora-fp16? "
        "`phi3v-train recipes` lists them"]


def test_dry_run_prints_and_writes_the_resolved_settings_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--recipe", "hateful-memes-lora", "--data", str(tmp_path),
                                       "--output", str(out), "--epochs", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "# changed from the recipe: epochs" in result.output
    assert "# original result: accuracy 86.6 (microsoft/Phi-3-vision-128k-instruct)" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # no checkpoints, no logs: nothing ran
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["recipe"], saved["epochs"], saved["lora"]["rank"], saved["lora"]["alpha"]) == (
        "hateful-memes-lora", 1.0, 128, 256.0)
    assert load_config(out / "config.yaml") == _resolve("hateful-memes-lora", tmp_path, epochs=1.0, output=str(out))


def test_recipes_command_lists_every_recipe() -> None:
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0, result.output
    for recipe in all_recipes():
        assert recipe.name in result.output
    shown = CliRunner().invoke(main, ["recipes", "nlvr2-full"])
    assert "finetune_hf_trainer_nlvr2.py --bf16 --use_flash_attention --batch_size 64" in shown.output


@pytest.mark.parametrize("warmup", [50.0, 0.1])
def test_warmup_is_steps_or_a_fraction(warmup: float, tmp_path: Path) -> None:
    assert _resolve("docvqa-lora", tmp_path, warmup=warmup).warmup == warmup


def test_fractional_warmup_steps_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--warmup 12.5: a value >= 1 counts steps and must be whole"):
        _resolve("docvqa-lora", tmp_path, warmup=12.5)


def test_nlvr2_original_tag_layout_through_the_converter_prompt() -> None:
    # finetune_hf_trainer_nlvr2.py: 'content': f'<|image_1|><|image_2|>\n{question}' — both tags on one line
    from converters.nlvr2 import NLVR2Options
    from phi3v_data.prompt import chat_segments
    from schemas import Record

    prompt = NLVR2Options(prompt="<|image_1|><|image_2|>\n{sentence}").prompt
    record = Record.model_validate({"id": "dev-1", "source": "nlvr2", "task": "binary", "conversations": [
        {"images": ["dev/a-img0.png", "dev/a-img1.png"], "user": prompt.format(sentence="Two dogs."),
         "assistant": "yes"}]})
    assert chat_segments(record)[0].text == "<|user|>\n<|image_1|><|image_2|>\nTwo dogs.<|end|>\n<|assistant|>\n"


def test_recipe_reaches_the_optimizer_and_scheduler(tmp_path: Path) -> None:
    from phi3v_train.train import training_arguments

    args = training_arguments(_resolve("hateful-memes-lora", tmp_path), world_size=4)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.9, 0.95, 1e-7, 0.01)
    assert (args.lr_scheduler_type.value, args.learning_rate, args.max_grad_norm) == ("linear", 2e-4, 1.0)
    assert args.gradient_accumulation_steps == 16  # global batch 64 = 1 per device × 4 devices × 16
    assert args.get_warmup_steps(1000) == 50  # 50 steps, whatever the run's length
    fraction = training_arguments(_resolve("hateful-memes-lora", tmp_path, warmup=0.1), world_size=4)
    assert fraction.get_warmup_steps(1000) == 100
