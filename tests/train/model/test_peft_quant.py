"""LoRA via peft and bitsandbytes 4-bit loading, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from phi3v_train.model import QUANT_SKIP_MODULES, Phi3VForCausalLM
from phi3v_train.model.compat import enable_checkpointing

PROMPT = "<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\nA cat.<|end|>\n"
TARGETS = [
    "qkv_proj", "o_proj", "gate_up_proj", "down_proj",  # Phi-3 decoder
    "q_proj", "k_proj", "v_proj", "out_proj",  # CLIP attention
    "img_projection.0", "img_projection.2",  # image projection
]  # fmt: skip


def _batch(processor) -> dict:
    batch = processor(PROMPT, [Image.new("RGB", (90, 60), (120, 30, 60))])
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] < 0, -100)
    return batch


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_only_adapters_everywhere(processor, model, checkpointing: bool) -> None:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    lora = peft.get_peft_model(model, config)
    if checkpointing:
        enable_checkpointing(lora)
    lora.train()
    trainable = {name for name, parameter in lora.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    lora(**_batch(processor)).loss.backward()
    # the last CLIP layer feeds nothing (features come from layer -2, as in the official model), so check layer 0
    for fragment in ("self_attn.qkv_proj", "mlp.down_proj", "vision_model.encoder.layers.0.self_attn.q_proj",
                     "encoder.layers.0.self_attn.out_proj", "img_projection.0", "img_projection.2"):  # fmt: skip
        grads = [p.grad for n, p in lora.named_parameters() if fragment in n and "lora_A" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), fragment


def test_four_bit_loading_on_cpu(tiny_dir: Path, processor) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=QUANT_SKIP_MODULES,
    )
    try:
        model = Phi3VForCausalLM.from_pretrained(tiny_dir, quantization_config=config).eval()
    except (RuntimeError, ImportError, NotImplementedError) as error:  # pragma: no cover - depends on the bnb build
        pytest.skip(f"bitsandbytes cannot quantise on this CPU: {error}")
    import bitsandbytes as bnb

    assert isinstance(model.model.layers[0].self_attn.qkv_proj, bnb.nn.Linear4bit)
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, bnb.nn.Linear4bit)
    tower = model.model.vision_embed_tokens.img_processor.vision_model
    assert not isinstance(tower.encoder.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    reference = Phi3VForCausalLM.from_pretrained(tiny_dir).eval()
    batch = _batch(processor)
    with torch.no_grad():
        quantised, full = model(**batch), reference(**batch)
    assert torch.isfinite(quantised.logits).all()
    # nf4 rounding moves the logits a little but keeps them close to the full-precision model's
    # NF4 keeps 16 levels per 64-weight block: ~10-15% mean logit error on this random tiny model (init std 0.1)
    assert (quantised.logits - full.logits).abs().mean() < 0.2 * full.logits.abs().mean()
