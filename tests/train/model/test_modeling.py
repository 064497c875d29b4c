"""Separator placement, placeholder merging, batching, save/load, generation and gradient checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from phi3v_train.model import Phi3VForCausalLM
from phi3v_train.model.compat import enable_checkpointing
from phi3v_train.model.modeling_phi3v import merge_image_features

PROMPT_1 = "<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\n"
PROMPT_2 = "<|user|>\n<|image_1|>\n<|image_2|>\nSame or different?<|end|>\n<|assistant|>\n"
PROMPT_0 = "<|user|>\nSay hello in one long sentence please.<|end|>\n<|assistant|>\n"


def _coded_features(crops: torch.Tensor) -> torch.Tensor:
    """Fake CLIP output: value = 1000 * crop index + patch index (same in every channel)."""
    count = crops.shape[0]
    codes = 1000 * torch.arange(count).view(count, 1) + torch.arange(576).view(1, 576)
    return codes.float().unsqueeze(-1).expand(count, 576, 32)


def test_separators_and_merge_order(model: Phi3VForCausalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    embedding = model.model.vision_embed_tokens
    monkeypatch.setattr(embedding, "crop_features", _coded_features)
    with torch.no_grad():
        embedding.sub_GN.fill_(-1.0)
        embedding.glb_GN.fill_(-2.0)
    (tokens,) = embedding.merged_tokens(torch.zeros(1, 5, 3, 336, 336), torch.tensor([[672, 672]]))
    assert tokens.shape == (757, 128)
    sub = tokens[:600].reshape(24, 25, 128)  # 2x2 crops → 24 rows of 24 merged tokens + sub_GN
    assert (sub[:, 24] == -1).all() and not (sub[:, :24] == -1).any()
    assert (tokens[600] == -2).all()  # glb_GN between the sub-images and the global view
    glb = tokens[601:].reshape(12, 13, 128)
    assert (glb[:, 12] == -1).all() and not (glb[:, :12] == -1).any()
    # crops: 0 global, 1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right; a merged token = patches p, p+1,
    # p+24, p+25
    assert sub[0, 0, ::32].tolist() == [1000, 1001, 1024, 1025]
    assert sub[0, 12, ::32].tolist() == [2000, 2001, 2024, 2025]
    assert sub[12, 0, ::32].tolist() == [3000, 3001, 3024, 3025]
    assert sub[13, 13, ::32].tolist() == [4050, 4051, 4074, 4075]  # row 1 col 1 of crop 4: patch 2*24 + 2
    assert glb[0, 1, ::32].tolist() == [2, 3, 26, 27]


def test_placeholders_follow_their_image_number_even_out_of_order() -> None:
    input_ids = torch.tensor([[7, -2, -2, 8, -1, 9], [-1, -1, -1, 5, 6, 0]])
    embeds = torch.zeros(2, 6, 4)
    features = [torch.full((1, 4), 1.0), torch.full((2, 4), 2.0), torch.full((3, 4), 3.0)]  # row 0: img 1, 2; row 1
    merged = merge_image_features(input_ids, embeds, features)
    assert merged[0, :, 0].tolist() == [0, 2, 2, 0, 1, 0]
    assert merged[1, :, 0].tolist() == [3, 3, 3, 0, 0, 0]


def test_placeholder_count_mismatch_names_both_counts() -> None:
    input_ids = torch.tensor([[-1, -1, 5]])
    with pytest.raises(ValueError, match="2 placeholder positions but the image has 3 tokens"):
        merge_image_features(input_ids, torch.zeros(1, 3, 4), [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="reference 1 images but pixel_values holds 2"):
        merge_image_features(input_ids, torch.zeros(1, 3, 4), [torch.zeros(2, 4), torch.zeros(2, 4)])


def test_input_ids_are_not_modified(processor, model) -> None:
    batch = processor(PROMPT_1, [Image.new("RGB", (40, 30), (1, 2, 3))])
    before = batch["input_ids"].clone()
    model(**batch)
    assert torch.equal(batch["input_ids"], before)


def test_save_load_round_trip_keeps_official_names(processor, model, tmp_path: Path) -> None:
    batch = processor(PROMPT_1, [Image.new("RGB", (500, 300), (9, 99, 199))])
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    for key in (
        "model.embed_tokens.weight",
        "model.vision_embed_tokens.glb_GN",
        "model.vision_embed_tokens.sub_GN",
        "model.vision_embed_tokens.img_projection.0.weight",
        "model.vision_embed_tokens.img_projection.2.bias",
        "model.vision_embed_tokens.img_processor.vision_model.embeddings.patch_embedding.weight",
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.1.self_attn.q_proj.weight",
        "model.vision_embed_tokens.img_processor.vision_model.post_layernorm.weight",
        "model.layers.1.self_attn.qkv_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.gate_up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ):
        assert key in keys
    prefixes = ("model.embed_tokens.", "model.vision_embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
    assert all(key.startswith(prefixes) for key in keys)
    assert not any("rotary" in key or "position_ids" in key for key in keys)
    loaded, info = Phi3VForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == (set(), set())
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, expected, rtol=0, atol=0)


def test_official_config_with_auto_map_loads_without_remote_code(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_phi3_v.Phi3VConfig", "AutoModelForCausalLM": "x.Y"}
    config["_attn_implementation"] = "flash_attention_2"  # as the official config.json pins it for its remote code
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "Phi3VConfig"
    model = AutoModelForCausalLM.from_pretrained(tmp_path)  # no flash-attn here: the pin must not make loading fail
    assert isinstance(model, Phi3VForCausalLM) and model.config._attn_implementation == "sdpa"
    eager = Phi3VForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_batch_with_zero_one_and_two_images_equals_one_by_one(processor, model) -> None:
    images = [[Image.new("RGB", (300, 500), (200, 10, 10))], [], [Image.new("RGB", (64, 64), (0, 90, 0))] * 2]
    images[2] = [images[2][0], Image.new("RGB", (900, 200), (5, 5, 5))]
    texts = [PROMPT_1, PROMPT_0, PROMPT_2]
    batch = processor(texts, images)
    assert batch["pixel_values"].shape[0] == 3
    with torch.no_grad():
        logits = model(**batch).logits
        for row, (text, sample) in enumerate(zip(texts, images)):
            single = processor(text, sample or None)
            length = single["input_ids"].shape[1]
            assert torch.equal(batch["input_ids"][row, :length], single["input_ids"][0])
            assert batch["attention_mask"][row].sum() == length
            alone = model(**single).logits[0]
            torch.testing.assert_close(logits[row, :length], alone, atol=1e-4, rtol=1e-4)


def test_generate_greedy_equals_manual_loop(processor, model) -> None:
    batch = processor(PROMPT_1, [Image.new("RGB", (120, 90), (30, 60, 90))])
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=None)
    ids = batch["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, ids)


def test_generate_reuses_the_key_value_cache(processor, model) -> None:
    """After the prompt, each step feeds one new token: the cache travels under the installed transformers' name."""
    batch = processor(PROMPT_1, [Image.new("RGB", (120, 90), (30, 60, 90))])
    fed: list[int] = []

    def record(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        fed.append(ids.shape[1])

    handle = model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model.generate(**batch, max_new_tokens=4, do_sample=False, eos_token_id=None, use_cache=True)
    finally:
        handle.remove()
    assert fed == [batch["input_ids"].shape[1], 1, 1, 1]


def test_left_padded_batched_generate_matches_single(processor, model) -> None:
    images = [[Image.new("RGB", (120, 90), (30, 60, 90))], []]
    batch = processor([PROMPT_1, PROMPT_0], images, padding_side="left")
    together = model.generate(**batch, max_new_tokens=4, do_sample=False, eos_token_id=None)
    alone = model.generate(**processor(PROMPT_0), max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert torch.equal(together[1, -4:], alone[0, -4:])


def test_gradient_checkpointing_gives_the_same_gradients(processor, model) -> None:
    batch = processor(PROMPT_1, [Image.new("RGB", (200, 100), (1, 100, 200))])
    labels = batch["input_ids"].clamp(min=0).masked_fill(batch["input_ids"] < 0, -100)
    watched = {
        "clip": model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers[0].self_attn.q_proj.weight,
        "lm": model.model.layers[0].self_attn.qkv_proj.weight,
        "proj": model.model.vision_embed_tokens.img_projection[0].weight,
    }

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**batch, labels=labels).loss.backward()
        return {name: parameter.grad.clone() for name, parameter in watched.items()}

    model.train()
    plain = grads()
    enable_checkpointing(model)
    clip_layer = model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers[0]
    assert clip_layer.gradient_checkpointing and model.model.layers[0].gradient_checkpointing
    checkpointed = grads()
    for name in watched:
        assert plain[name].abs().sum() > 0
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_eager_and_sdpa_agree(tiny_dir: Path, processor) -> None:
    batch = processor(PROMPT_1, [Image.new("RGB", (100, 100), (50, 50, 50))])
    outputs = []
    for implementation in ("eager", "sdpa"):
        model = Phi3VForCausalLM.from_pretrained(tiny_dir, attn_implementation=implementation).eval()
        tower = model.model.vision_embed_tokens.img_processor.vision_model
        assert tower.config._attn_implementation == implementation
        with torch.no_grad():
            outputs.append(model(**batch).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)


def test_loss_accepts_num_items_in_batch(processor, model) -> None:
    batch = processor(PROMPT_0)
    labels = batch["input_ids"].clone()
    loss = model(**batch, labels=labels).loss
    summed = model(**batch, labels=labels, num_items_in_batch=torch.tensor(1)).loss
    torch.testing.assert_close(summed, loss * (labels.shape[1] - 1), rtol=1e-5, atol=1e-5)


def test_training_loss_uses_only_labelled_logits_and_equals_the_full_loss(processor, model) -> None:
    batch = processor([PROMPT_0, PROMPT_1], [[], [Image.new("RGB", (40, 30), (1, 2, 3))]])
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 5:9] = batch["input_ids"][0, 5:9]  # 4 labelled positions in row 0, 2 in row 1
    labels[1, -2:] = batch["input_ids"][1, -2:]
    full = model(**batch, labels=labels)  # eval mode: all logits, transformers' loss
    model.train()
    for num_items in (None, torch.tensor(6)):
        trained = model(**batch, labels=labels, num_items_in_batch=num_items)
        assert trained.logits.shape == (6, model.config.vocab_size)
        torch.testing.assert_close(trained.loss, full.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trained.logits[0], full.logits[0, 4], rtol=1e-5, atol=1e-5)  # position 4 predicts 5
