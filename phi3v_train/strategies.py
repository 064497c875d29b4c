"""What gets trained: loading the base model for a strategy and choosing its trainable parameters.

=============  =======================================================  ==============================================
strategy       trains                                                   trade-off
=============  =======================================================  ==============================================
full           everything that reaches the loss                         best fit, most memory (use DeepSpeed ZeRO)
frozen-vision  --vision-freeze clip: language model + projector          CLIP features kept; 0.3B of 4.2B params frozen
               (unless --freeze-projector); original: language model    (original: 0.42B frozen, embeddings included)
               only — CLIP, projector, separators and embeddings frozen
lora           low-rank adapters on the language model's linears        small adapter; base weights untouched
               (optionally on lm_head, vision tower and projector too)
qlora          the same adapters on a 4-bit NF4 base (bitsandbytes)     fits a 24 GB GPU; slower steps
=============  =======================================================  ==============================================

Parts of the model are told apart by the official parameter names: the CLIP tower lives under
``vision_embed_tokens.img_processor``, the projector is ``vision_embed_tokens.{img_projection,glb_GN,sub_GN}``,
everything else is the language model. The original recipe's "freeze vision model" froze its whole
``vision_embed_tokens`` module, which also holds the token embeddings (the ``wte`` it shares with the language
model): ``--vision-freeze original`` reproduces that scope, ``clip`` (the default) freezes the CLIP tower alone.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from phi3v_train.config import LoraSettings, TrainConfig
from phi3v_train.parts import LANGUAGE, PROJECTOR, TOKEN_EMBEDDINGS, VISION, VISION_TOWER, part_of

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def unused_vision_prefixes(config: object) -> list[str]:
    """Vision-tower modules that never reach the loss: features come from hidden state ``layer_idx`` (official: -2),
    so later CLIP layers and its ``post_layernorm`` get no gradient. They stay frozen in every strategy — DDP would
    otherwise stop on parameters without gradients, and the optimizer would keep state for them.

    >>> from types import SimpleNamespace
    >>> unused_vision_prefixes(SimpleNamespace(feature_layer=-2, vision_config=SimpleNamespace(num_hidden_layers=3)))
    ['vision_embed_tokens.img_processor.vision_model.encoder.layers.2.', 'vision_embed_tokens.img_processor.vision_model.post_layernorm.']
    """  # noqa: E501
    layers = config.vision_config.num_hidden_layers
    used = config.feature_layer if config.feature_layer >= 0 else layers + 1 + config.feature_layer
    tower = VISION_TOWER + "vision_model."
    return [f"{tower}encoder.layers.{i}." for i in range(used, layers)] + [f"{tower}post_layernorm."]


def _freeze_unused(model: nn.Module) -> None:
    prefixes = unused_vision_prefixes(model.config)
    for name, param in model.named_parameters():
        if any(prefix in name for prefix in prefixes):
            param.requires_grad_(False)


def resolve_attention(requested: str) -> str:
    """The attention implementation to load: flash-attn when asked for and usable, otherwise sdpa with a warning."""
    if requested != "flash_attention_2":
        return requested
    if importlib.util.find_spec("flash_attn") is None:
        log.warning("flash-attn is not installed (pip install 'phi3v[flash]'); using sdpa attention instead")
        return "sdpa"
    if not torch.cuda.is_available():
        log.warning("flash attention needs a CUDA GPU; using sdpa attention instead")
        return "sdpa"
    return requested


def load_dtype(config: TrainConfig) -> torch.dtype:
    """Weights dtype at load time. Fully trained weights stay fp32 (the optimizer's master copy; autocast does the
    bf16/fp16 compute); a frozen LoRA base is stored in the compute dtype to halve its memory."""
    if config.strategy in ("lora", "qlora"):
        return DTYPES[config.precision]
    return torch.float32


def quantization_config(config: TrainConfig):  # -> transformers.BitsAndBytesConfig | None
    """NF4 for qlora. By default the vision tower and the output head stay unquantized (they are small and
    sensitive) and the quantization constants are quantized too; ``lora.quantize_vision`` / ``lora.double_quant``
    give the original recipe's choice (every linear but ``lm_head`` in 4 bit, no double quantization)."""
    if config.strategy != "qlora":
        return None
    from transformers import BitsAndBytesConfig  # noqa: PLC0415 - bitsandbytes only matters for qlora

    from phi3v_train.model import QUANT_SKIP_MODULES  # noqa: PLC0415

    # a copy: transformers may extend it
    skip = ["lm_head"] if config.lora.quantize_vision else list(QUANT_SKIP_MODULES)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=config.lora.double_quant,
        bnb_4bit_compute_dtype=DTYPES[config.precision], llm_int8_skip_modules=skip,
    )


def lora_targets(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Full names of the linear layers that get adapters: the language model's ``settings.targets``, the output
    head with ``settings.lm_head`` (or ``lm_head`` among the targets), plus every linear of the vision tower /
    projector when asked. Full names keep a target such as ``o_proj`` from matching a same-named layer in the vision
    tower."""
    wanted = set(settings.targets)
    unused = unused_vision_prefixes(model.config)
    names = []
    for name, module in model.named_modules():
        if not _is_linear(module) or any(prefix in name + "." for prefix in unused):
            continue
        part = part_of(name)
        last = name.rsplit(".", 1)[-1]
        head = last == "lm_head" and (settings.lm_head or "lm_head" in wanted)
        if head or (part == LANGUAGE and last in wanted and last != "lm_head") or (
            part == VISION and settings.vision
        ) or (part == PROJECTOR and settings.projector):
            names.append(name)
    if not any(part_of(n) == LANGUAGE for n in names):
        raise ValueError(f"--lora.targets {','.join(settings.targets)}: no such linear layer in the language model")
    return names


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")  # bitsandbytes layers (qlora)


def apply_strategy(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Freeze / wrap ``model`` for ``config.strategy``; returns the model to train (a PeftModel for lora/qlora)."""
    if config.strategy == "full":
        model.requires_grad_(True)
        _freeze_unused(model)
        return model
    if config.strategy == "frozen-vision":
        original = config.vision_freeze == "original"
        for name, param in model.named_parameters():
            part = part_of(name)
            if original:  # the original froze its whole vision_embed_tokens module, shared token embeddings included
                param.requires_grad_(part == LANGUAGE and TOKEN_EMBEDDINGS not in "." + name)
            else:
                param.requires_grad_(part == LANGUAGE or (part == PROJECTOR and config.train_projector))
        return model
    return _wrap_lora(model, config)


def _wrap_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: PLC0415

    if config.strategy == "qlora":
        # Casts the unquantized rest to fp32 and hooks input gradients so checkpointed 4-bit layers backpropagate.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    settings = config.lora
    peft_config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        init_lora_weights="gaussian" if settings.init == "gaussian" else True,
        target_modules=lora_targets(model, settings), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def trainable_summary(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameter counts per part, for the start-up log."""
    summary: dict[str, list[int]] = {VISION: [0, 0], PROJECTOR: [0, 0], LANGUAGE: [0, 0], "adapters": [0, 0]}
    for name, param in model.named_parameters():
        part = "adapters" if "lora_" in name else part_of(name)
        summary[part][1] += param.numel()
        if param.requires_grad:
            summary[part][0] += param.numel()
    return {part: (trainable, total) for part, (trainable, total) in summary.items() if total}


def load_base_model(config: TrainConfig) -> nn.Module:
    """The base model in the dtype, attention and quantization the strategy needs.

    Under DeepSpeed ZeRO-3 the TrainingArguments must exist before this call: transformers then builds the model
    already partitioned instead of materialising it whole on every rank.
    """
    from phi3v_train.model import Phi3VForCausalLM  # noqa: PLC0415 - the model code loads only when a run starts

    return Phi3VForCausalLM.from_pretrained(
        config.model, attn_implementation=resolve_attention(config.attention), dtype=load_dtype(config),
        quantization_config=quantization_config(config),
    )
