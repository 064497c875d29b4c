"""Random-weight checkpoints in the official Phi-3.5-vision format, built offline from the official files.

Both presets start from the official ``config.json`` and the real tokenizer (``official/``, shipped with the package),
so every test and the demo take the path a real checkpoint takes: rope "su", vocabulary 32064, the real added tokens.

``tiny``: the official config at small sizes (2-layer LM of width 64, 2-layer CLIP tower at 336 px so the 24×24 →
12×12 grid holds, 8 rope factors sampled from the official 48) — ~17 MB, a forward pass well under a second on CPU.
``phi-3.5-vision``: the official config unchanged (≈4.15B parameters) with random weights, for speed benchmarks on a
GPU; it is only materialised when written — :func:`preset_config` + the meta device give its size without memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig

from .configuration_phi3v import Phi3VConfig
from .files import OFFICIAL_DIR, plain_permissions
from .image_processing_phi3v import Phi3VImageProcessor
from .modeling_phi3v import Phi3VForCausalLM
from .processing_phi3v import Phi3VProcessor

PRESETS = ("tiny", "phi-3.5-vision")
TINY_TOWER: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu", "projection_dim": 32,
}  # fmt: skip
TINY_SIZES: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "torch_dtype": "float32",
    # random weights at the usual 0.02 give near-uniform logits at hidden size 64, and LoRA then needs hundreds of
    # steps before the demo learns anything
    "initializer_range": 0.1,
}  # fmt: skip


def official_config_dict() -> dict[str, Any]:
    """The official Phi-3.5-vision-instruct ``config.json``, as shipped."""
    return json.loads((OFFICIAL_DIR / "config.json").read_text(encoding="utf-8"))


def preset_config(preset: str) -> Phi3VConfig:
    """The :class:`Phi3VConfig` of a preset (no weights)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    settings = official_config_dict()
    if preset == "tiny":
        settings.update(TINY_SIZES)
        settings["img_processor"] = {**settings["img_processor"], "image_dim_out": TINY_TOWER["hidden_size"],
                                     "vision_config": TINY_TOWER}  # fmt: skip
        half = TINY_SIZES["hidden_size"] // TINY_SIZES["num_attention_heads"] // 2
        rope = settings["rope_scaling"]
        step = len(rope["short_factor"]) // half
        settings["rope_scaling"] = {
            "long_factor": rope["long_factor"][::step], "short_factor": rope["short_factor"][::step],
            "type": rope["type"],
        }  # fmt: skip
        settings.pop("_name_or_path", None)
    return Phi3VConfig.from_dict(settings)


def count_parameters(preset: str) -> int:
    """Parameter count of a preset, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = Phi3VForCausalLM(preset_config(preset))
    return sum(parameter.numel() for parameter in model.parameters())


def create_tiny_checkpoint(out_dir: str | Path, *, preset: str = "tiny", seed: int = 0, num_crops: int = 4) -> Path:
    """Write a complete random-weight checkpoint: the official files with this model's config and weights."""
    config = preset_config(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(config.dtype)
    try:
        model = Phi3VForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig.from_pretrained(str(OFFICIAL_DIR))
    model.save_pretrained(str(out), max_shard_size="2GB")
    tokenizer = AutoTokenizer.from_pretrained(str(OFFICIAL_DIR))
    processor = Phi3VProcessor(Phi3VImageProcessor(num_crops=num_crops), tokenizer, source=OFFICIAL_DIR)
    processor.save_pretrained(out)
    plain_permissions(out)
    return out

