"""The real Phi-3.5-vision files (tests/fixtures/phi-3.5-vision-instruct/) in both directions: read as shipped, written
as the official code reads them, from a directory or a Hub id in the HF cache, never with a weight left random."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from phi3v_train.model import Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor
from phi3v_train.model.files import OFFICIAL_DIR
from phi3v_train.model.modeling_phi3v import MissingWeightsError, released

FIXTURES = Path(__file__).parents[2] / "fixtures" / "phi-3.5-vision-instruct"
PROMPT = "<|user|>\n<|image_1|>\nWhat is shown?<|end|>\n<|assistant|>\n"


def _plain(*, directory: bool = False) -> int:
    """What open()/mkdir give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def test_packaged_official_files_are_the_fixtures_byte_for_byte() -> None:
    names = sorted(path.name for path in OFFICIAL_DIR.iterdir())
    assert names == sorted(path.name for path in FIXTURES.iterdir() if path.name != "README.md")
    for name in names:
        assert (OFFICIAL_DIR / name).read_bytes() == (FIXTURES / name).read_bytes(), name


def test_unmodified_official_config_builds_the_full_model_on_meta() -> None:
    config = Phi3VConfig.from_pretrained(FIXTURES)
    rope = config.rope_parameters
    assert rope["rope_type"] == "longrope" and rope["original_max_position_embeddings"] == 4096
    assert len(rope["short_factor"]) == len(rope["long_factor"]) == 48 and rope["factor"] == 32.0
    assert config.dtype == torch.bfloat16 and config.vocab_size == 32064
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    names = dict(model.named_parameters())
    assert sum(p.numel() for p in names.values()) == 4_146_621_440  # by hand in test_tiny.py
    for name in ("model.embed_tokens.weight", "model.layers.31.self_attn.qkv_proj.weight",
                 "model.layers.31.mlp.gate_up_proj.weight", "model.norm.weight", "lm_head.weight",
                 "model.vision_embed_tokens.glb_GN", "model.vision_embed_tokens.sub_GN",
                 "model.vision_embed_tokens.img_projection.0.weight",
                 "model.vision_embed_tokens.img_projection.2.weight",
                 "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.23.self_attn.q_proj.weight",
                 "model.vision_embed_tokens.img_processor.vision_model.pre_layrnorm.weight"):  # fmt: skip
        assert name in names, name
    assert names["model.layers.0.self_attn.qkv_proj.weight"].shape == (9216, 3072)


def test_phi3_vision_128k_config_shape_loads(tmp_path: Path) -> None:
    """Phi-3-vision-128k-instruct: same model_type, rope "su" and processor; sliding_window 131072, other factors."""
    settings = json.loads((FIXTURES / "config.json").read_text())
    settings.update(_name_or_path="Phi-3-vision-128k-instruct", sliding_window=131072)
    settings["rope_scaling"]["short_factor"] = [1.05] * 48
    (tmp_path / "config.json").write_text(json.dumps(settings))
    config = Phi3VConfig.from_pretrained(tmp_path)
    assert config.sliding_window == 131072 and config.rope_parameters["short_factor"] == [1.05] * 48
    assert config.rope_parameters["rope_type"] == "longrope"


@pytest.mark.parametrize("kind", ["su", "longrope"])
def test_su_rope_is_computed_as_the_official_code_does(kind: str) -> None:
    settings = json.loads((FIXTURES / "config.json").read_text())
    settings.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1)
    factors = {key: settings["rope_scaling"][key][::6] for key in ("short_factor", "long_factor")}
    settings["rope_scaling"] = {**factors, "type": kind}
    model = Phi3VForCausalLM(Phi3VConfig.from_dict(settings))
    rotary = model.model.rotary_emb
    # official Phi3SuScaledRotaryEmbedding: short factors up to 4096 positions, long beyond; cos/sin scaled by
    # sqrt(1 + ln(131072/4096) / ln(4096))
    scale = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))
    for length, key in ((10, "short_factor"), (4100, "long_factor")):
        positions = torch.arange(length).unsqueeze(0)
        cos, sin = rotary(torch.zeros(1, length, 64), positions)
        inv_freq = 1.0 / (torch.tensor(factors[key]) * 10000.0 ** (torch.arange(0, 16, 2).float() / 16))
        angles = positions[0, :, None].float() * inv_freq[None]
        expected = torch.cat([angles, angles], dim=-1)
        torch.testing.assert_close(cos[0], expected.cos() * scale, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sin[0], expected.sin() * scale, atol=1e-5, rtol=1e-5)


def test_written_config_has_the_fields_the_official_code_reads() -> None:
    config = Phi3VConfig.from_pretrained(FIXTURES)
    config.use_cache = False  # what training sets
    written = json.loads(config.to_json_string())
    official = json.loads((FIXTURES / "config.json").read_text())
    assert written["rope_scaling"] == official["rope_scaling"]  # type "su", exactly three keys
    for key in ("auto_map", "torch_dtype", "original_max_position_embeddings", "rope_theta", "embd_layer",
                "img_processor", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "sliding_window"):
        assert written[key] == official[key], key
    assert written["use_cache"] is True and not {"rope_parameters", "dtype", "_attn_implementation"} & set(written)
    again = Phi3VConfig.from_dict(written)
    assert again.rope_parameters == config.rope_parameters


# The official processor tokenises the text between image tags chunk by chunk, each chunk with BOS.
@pytest.mark.parametrize(("prompt", "chunks"), [
    (PROMPT, [["<s>", "<|user|>", "<0x0A>"], ["<s>", "▁", "<0x0A>", "What", "▁is", "▁shown", "?", "<|end|>", "<0x0A>",
                                              "<|assistant|>"]]),
    ("<|user|>\n<|image_1|>\n<|image_2|>\nSame or different?<|end|>\n<|assistant|>\n",
     [["<s>", "<|user|>", "<0x0A>"], ["<s>", "▁", "<0x0A>"],
      ["<s>", "▁", "<0x0A>", "S", "ame", "▁or", "▁different", "?", "<|end|>", "<0x0A>", "<|assistant|>"]]),
    ("<|system|>\nDescribe the image.<|end|>\n<|user|>\n<|image_1|>red<|end|>\n",
     [["<s>", "<|system|>", "<0x0A>", "Des", "cribe", "▁the", "▁image", ".", "<|end|>", "<0x0A>", "<|user|>", "<0x0A>"],
      ["<s>", "▁red", "<|end|>", "<0x0A>"]]),
])  # fmt: skip
def test_real_tokenizer_gives_the_official_chunked_ids(tiny_dir: Path, prompt: str, chunks: list[list[str]]) -> None:
    tokenizer_file = json.loads((FIXTURES / "tokenizer.json").read_text())
    vocab = {**tokenizer_file["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer_file["added_tokens"]}}
    processor = Phi3VProcessor.from_pretrained(tiny_dir, num_crops=1)
    images = prompt.count("<|image_")
    ids = processor.encode_prompt(prompt, [3] * images)
    expected: list[int] = []
    for index, chunk in enumerate(chunks):
        expected += [vocab[piece] for piece in chunk] + ([-(index + 1)] * 3 if index < images else [])
    assert ids == expected
    if prompt == PROMPT:  # the worked example of the reference README
        assert ids[6:] == [1, 29871, 13, 5618, 338, 4318, 29973, 32007, 13, 32001]


def _logits(model: Phi3VForCausalLM, processor: Phi3VProcessor) -> torch.Tensor:
    inputs = processor(PROMPT, [Image.new("RGB", (60, 40), (10, 200, 90))])
    with torch.no_grad():
        return model(**inputs).logits


def test_missing_weight_is_an_error_naming_it(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["lm_head.weight"], weights["model.norm.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match=r"2 parameter\(s\).*lm_head.weight, model.norm.weight"):
        Phi3VForCausalLM.from_pretrained(broken)


def test_shared_wte_layout_loads_into_embed_tokens(tiny_dir: Path, tmp_path: Path, processor) -> None:
    shared = tmp_path / "shared"
    shutil.copytree(tiny_dir, shared)
    weights = load_file(str(shared / "model.safetensors"))
    weights["model.vision_embed_tokens.wte.weight"] = weights.pop("model.embed_tokens.weight")
    save_file(weights, str(shared / "model.safetensors"), metadata={"format": "pt"})
    model = Phi3VForCausalLM.from_pretrained(shared).eval()
    reference = Phi3VForCausalLM.from_pretrained(tiny_dir).eval()
    torch.testing.assert_close(_logits(model, processor), _logits(reference, processor), atol=0, rtol=0)


def test_bf16_base_is_released_in_bf16_with_plain_permissions(tiny_dir: Path, tmp_path: Path, processor) -> None:
    base = tmp_path / "bf16"
    model = Phi3VForCausalLM.from_pretrained(tiny_dir)
    with released(model, torch.bfloat16):
        model.save_pretrained(base)
    assert json.loads((base / "config.json").read_text())["torch_dtype"] == "bfloat16"
    trained = Phi3VForCausalLM.from_pretrained(base, dtype=torch.float32)  # as a run loads it
    assert trained.dtype == torch.float32 and trained.checkpoint_dtype == torch.bfloat16
    trained.save_pretrained(tmp_path / "checkpoint")  # an intermediate checkpoint: exact fp32
    with released(trained):
        trained.save_pretrained(tmp_path / "final")
    for name, dtype in (("checkpoint", torch.float32), ("final", torch.bfloat16)):
        with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as handle:
            assert {handle.get_tensor(key).dtype for key in handle.keys()} == {dtype}, name
        assert json.loads((tmp_path / name / "config.json").read_text())["torch_dtype"] == str(dtype)[6:]
        assert (tmp_path / name / "model.safetensors").stat().st_mode & 0o777 == _plain()


def test_hub_id_resolves_every_component_offline_from_the_cache(
    tiny_dir: Path, tmp_path: Path, processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub_constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--microsoft--Phi-3.5-vision-instruct"
    shutil.copytree(tiny_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_id = "microsoft/Phi-3.5-vision-instruct"
    model = Phi3VForCausalLM.from_pretrained(hub_id).eval()
    hub_processor = Phi3VProcessor.from_pretrained(hub_id, num_crops=1)
    assert hub_processor.source == repo / "snapshots" / revision
    reference = Phi3VForCausalLM.from_pretrained(tiny_dir).eval()
    torch.testing.assert_close(_logits(model, hub_processor), _logits(reference, processor), atol=0, rtol=0)
    with pytest.raises(OSError):
        Phi3VProcessor.from_pretrained("microsoft/not-in-the-cache")
