"""Export: LoRA/QLoRA adapter + base → one official checkpoint whose logits equal the adapter-wrapped model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from phi3v_train.cli import main
from phi3v_train.model import Phi3VForCausalLM, Phi3VProcessor, create_tiny_checkpoint

peft = pytest.importorskip("peft")

TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "q_proj", "v_proj", "fc1"]  # language model + CLIP


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny", num_crops=2)


def _make_run(base: Path, run: Path, *, quantization_config: object = None) -> Path:
    """Save ``RUN/final`` as a lora/qlora run does: adapter (non-zero B, so merging matters) + processor files."""
    kwargs = {"quantization_config": quantization_config, "device_map": "cpu"} if quantization_config else {}
    model = Phi3VForCausalLM.from_pretrained(str(base), **kwargs)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    final = run / "final"
    wrapped.save_pretrained(str(final))
    Phi3VProcessor.from_pretrained(str(base)).save_pretrained(final)
    return final


def _inputs(processor: Phi3VProcessor) -> dict[str, torch.Tensor]:
    image = Image.new("RGB", (500, 300), (200, 30, 60))
    prompt = "<|user|>\n<|image_1|>\nwhat colour is this?<|end|>\n<|assistant|>\n"
    return dict(processor(text=prompt, images=[image], return_tensors="pt"))


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _keys(checkpoint: Path) -> set[str]:
    keys: set[str] = set()
    for shard in checkpoint.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            keys |= set(handle.keys())
    return keys


def _export(*args: str) -> object:
    return CliRunner().invoke(main, ["export", *args], catch_exceptions=False)


def test_lora_export_matches_adapter_logits_and_official_keys(base: Path, tmp_path: Path) -> None:
    final = _make_run(base, tmp_path / "run")
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    result = _export("--adapter", str(final), "--out", str(tmp_path / "merged"))
    assert result.exit_code == 0, result.output
    merged = Phi3VForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    wrapped = peft.PeftModel.from_pretrained(Phi3VForCausalLM.from_pretrained(str(base)), str(final)).eval()
    processor = Phi3VProcessor.from_pretrained(str(tmp_path / "merged"))
    inputs = _inputs(processor)
    reference = _logits(wrapped, inputs)
    # the bar: logits equal to 1e-4
    torch.testing.assert_close(_logits(merged, inputs), reference, atol=1e-4, rtol=0)
    plain = Phi3VForCausalLM.from_pretrained(str(base)).eval()
    assert (_logits(plain, inputs) - reference).abs().max() > 1e-2  # the adapter really changes the outputs
    assert _keys(tmp_path / "merged") == _keys(base)
    assert processor.image_processor.num_crops == 2
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "phi3_v"


def test_qlora_adapter_merges_onto_full_precision_base(base: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    nf4 = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.float32)
    try:
        final = _make_run(base, tmp_path / "run", quantization_config=nf4)
    except (RuntimeError, NotImplementedError, ImportError) as exc:  # pragma: no cover - depends on the bnb build
        pytest.skip(f"bitsandbytes NF4 does not run on this CPU build: {exc}")
    result = _export("--adapter", str(final), "--out", str(tmp_path / "merged"))
    assert result.exit_code == 0, result.output
    # merged = full-precision base weight + B @ A * alpha / r, exactly (not NF4-rounded base weights)
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as adapter:
        prefix = "base_model.model.model.layers.0.self_attn.qkv_proj"
        delta = adapter.get_tensor(f"{prefix}.lora_B.weight") @ adapter.get_tensor(f"{prefix}.lora_A.weight") * (8 / 4)
    name = "model.layers.0.self_attn.qkv_proj.weight"
    original = Phi3VForCausalLM.from_pretrained(str(base)).state_dict()[name]
    merged_model = Phi3VForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    torch.testing.assert_close(merged_model.state_dict()[name], original + delta, atol=1e-6, rtol=0)
    wrapped = peft.PeftModel.from_pretrained(Phi3VForCausalLM.from_pretrained(str(base)), str(final)).eval()
    inputs = _inputs(Phi3VProcessor.from_pretrained(str(tmp_path / "merged")))
    # the bar: logits equal to 1e-4
    torch.testing.assert_close(_logits(merged_model, inputs), _logits(wrapped, inputs), atol=1e-4, rtol=0)
    assert _keys(tmp_path / "merged") == _keys(base)


def test_export_base_override_and_clear_errors(base: Path, tmp_path: Path) -> None:
    final = _make_run(base, tmp_path / "run")
    config_path = final / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    config_path.write_text(json.dumps(config))

    missing = _export("--adapter", str(final), "--out", str(tmp_path / "merged"))
    assert missing.exit_code == 1
    assert "moved-away" in missing.output and "--base" in missing.output

    ok = _export("--adapter", str(tmp_path / "run"), "--base", str(base), "--out", str(tmp_path / "merged"))
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    again = _export("--adapter", str(final), "--base", str(base), "--out", str(tmp_path / "merged"))
    assert again.exit_code == 1 and "--overwrite" in again.output

    not_adapter = _export("--adapter", str(base), "--out", str(tmp_path / "other"))
    assert not_adapter.exit_code == 1 and "adapter_config.json" in not_adapter.output
    assert not (tmp_path / "other").exists()


def test_export_refuses_a_quantised_base(tmp_path: Path) -> None:
    quantised = tmp_path / "nf4-base"
    quantised.mkdir()
    (quantised / "config.json").write_text(
        json.dumps({"model_type": "phi3_v", "quantization_config": {"load_in_4bit": True}}))
    adapter = tmp_path / "run" / "final"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(quantised)}))
    result = _export("--adapter", str(adapter), "--out", str(tmp_path / "merged"))
    assert result.exit_code == 1
    assert f"{quantised / 'config.json'}: the base checkpoint is quantised" in result.output
    assert "--base" in result.output
