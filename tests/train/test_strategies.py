"""Each strategy trains (its loss falls on a memorisable set) and changes only the parameters it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from phi3v_train.config import LoraSettings, load_config
from phi3v_train.model import Phi3VForCausalLM
from phi3v_train.strategies import apply_strategy, lora_targets, part_of, resolve_attention, unused_vision_prefixes
from phi3v_train.train import fit, setup
from train_fixtures import run_flags, write_dataset


def _train(tmp_path: Path, model: Path, **overrides) -> tuple[list[float], nn.Module]:
    """4 full-batch steps on 4 records: every step sees the same data, so the loss must go down."""
    data = write_dataset(tmp_path / "data", count=4)
    flags = run_flags(data, model, tmp_path / "run", batch_size=2, global_batch_size=4, **overrides)
    state = setup(load_config(flags=flags))
    result = fit(state)
    return result.losses, state.trainer.model


def _base_parameters(model: Path) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in Phi3VForCausalLM.from_pretrained(model).named_parameters()}


def _changed_parts(trained: nn.Module, base: dict[str, torch.Tensor]) -> dict[str, set[bool]]:
    """Part → {whether each of its base parameters changed}; peft names are mapped back to the base names."""
    parts: dict[str, set[bool]] = {}
    for name, param in trained.named_parameters():
        if "lora_" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        parts.setdefault(part_of(plain), set()).add(not torch.equal(param.detach().float(), base[plain].float()))
    return parts


def test_full_trains_everything_but_the_unused_clip_tail(tmp_path: Path, tiny_model: Path) -> None:
    base = _base_parameters(tiny_model)
    losses, model = _train(tmp_path, tiny_model, strategy="full")
    assert losses[-1] < losses[0] - 0.1, losses
    unused = unused_vision_prefixes(model.config)
    for name, param in model.named_parameters():
        assert param.requires_grad == (not any(p in name for p in unused)), name
        if param.requires_grad and name.endswith("weight") and "norm" not in name:
            assert not torch.equal(param.detach(), base[name]), f"{name} did not change"


@pytest.mark.parametrize("train_projector", [True, False])
def test_frozen_vision_keeps_the_tower_bit_identical(tmp_path: Path, tiny_model: Path, train_projector: bool) -> None:
    base = _base_parameters(tiny_model)
    losses, model = _train(tmp_path, tiny_model, strategy="frozen-vision", train_projector=train_projector)
    assert losses[-1] < losses[0] - 0.1, losses
    changed = _changed_parts(model, base)
    assert changed["vision"] == {False}
    assert changed["projector"] == ({True} if train_projector else {False})
    assert True in changed["language"]


def test_lora_leaves_the_base_untouched(tmp_path: Path, tiny_model: Path) -> None:
    base = _base_parameters(tiny_model)
    losses, model = _train(tmp_path, tiny_model, strategy="lora", lr=1e-2, lora={"dropout": 0.0})
    assert losses[-1] < losses[0] - 0.1, losses
    assert _changed_parts(model, base) == {"vision": {False}, "projector": {False}, "language": {False}}
    adapters = {n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0}
    assert len(adapters) == 2 * 4  # 2 layers x qkv/o/gate_up/down, all moved off their zero init
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file() and (final / "preprocessor_config.json").is_file()


@pytest.mark.slow  # bf16 autocast and 4-bit matmuls are slow on CPU (~20 s)
def test_qlora_trains_adapters_on_a_4bit_base(tmp_path: Path, tiny_model: Path) -> None:
    losses, model = _train(tmp_path, tiny_model, strategy="qlora", precision="bf16", lr=1e-2, max_steps=3)
    assert losses[-1] < losses[0], losses
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith("qkv_proj.base_layer")}
    assert kinds == {"Linear4bit"}
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


class StandIn(nn.Module):
    """The official module layout in miniature: LM linears, a 2-layer vision tower read at layer -2, a projector."""

    def __init__(self) -> None:
        super().__init__()
        tower = nn.Module()
        tower.vision_model = nn.Module()
        tower.vision_model.encoder = nn.Module()
        tower.vision_model.encoder.layers = nn.ModuleList(
            nn.ModuleDict({"o_proj": nn.Linear(2, 2), "fc1": nn.Linear(2, 2)}) for _ in range(2)
        )
        tower.vision_model.post_layernorm = nn.LayerNorm(2)
        embed = nn.Module()
        embed.img_processor = tower
        embed.img_projection = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Linear(2, 2))
        embed.glb_GN = nn.Parameter(torch.zeros(1, 1, 2))
        self.model = nn.Module()
        self.model.vision_embed_tokens = embed
        self.model.layers = nn.ModuleList(nn.ModuleDict({"o_proj": nn.Linear(2, 2), "qkv_proj": nn.Linear(2, 2)})
                                          for _ in range(2))
        self.lm_head = nn.Linear(2, 2)
        self.config = type("C", (), {"feature_layer": -2, "vision_config": type("V", (), {"num_hidden_layers": 2})})


def test_lora_targets_stay_in_their_part() -> None:
    model = StandIn()
    language_only = lora_targets(model, LoraSettings(targets=["o_proj"]))
    assert language_only == ["model.layers.0.o_proj", "model.layers.1.o_proj"]  # not the tower's o_proj
    everywhere = lora_targets(model, LoraSettings(targets=["o_proj"], vision=True, projector=True))
    tower = "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0"
    assert everywhere == [f"{tower}.o_proj", f"{tower}.fc1", "model.vision_embed_tokens.img_projection.0",
                          "model.vision_embed_tokens.img_projection.2", *language_only]  # layer 1 is past layer -2
    with pytest.raises(ValueError, match="--lora.targets q_proj: no such linear layer in the language model"):
        lora_targets(model, LoraSettings(targets=["q_proj"]))


def test_frozen_vision_selection_on_stand_in() -> None:
    config = load_config(flags={"data": "d", "model": "m", "output": "o", "strategy": "frozen-vision",
                                "train_projector": False})
    model = apply_strategy(StandIn(), config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("model.layers.", "lm_head."))}


def test_missing_flash_attn_falls_back_to_sdpa(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_attention("eager") == "eager"
    assert resolve_attention("flash_attention_2") == "sdpa"  # no flash-attn and no GPU on the test machine
    assert "using sdpa attention instead" in caplog.text


class StandInWithEmbeddings(StandIn):
    """StandIn plus the language model's token embeddings, which the original recipe's frozen vision also froze."""

    def __init__(self) -> None:
        super().__init__()
        self.model.embed_tokens = nn.Embedding(4, 2)


def _trainable(vision_freeze: str, train_projector: bool = True) -> set[str]:
    config = load_config(flags={"data": "d", "model": "m", "output": "o", "strategy": "frozen-vision",
                                "vision_freeze": vision_freeze, "train_projector": train_projector})
    return {n for n, p in apply_strategy(StandInWithEmbeddings(), config).named_parameters() if p.requires_grad}


def test_frozen_vision_scopes() -> None:
    model = StandInWithEmbeddings()
    layers_and_head = {n for n, _ in model.named_parameters() if n.startswith(("model.layers.", "lm_head."))}
    projector = {"model.vision_embed_tokens.glb_GN", "model.vision_embed_tokens.img_projection.0.weight",
                 "model.vision_embed_tokens.img_projection.0.bias", "model.vision_embed_tokens.img_projection.2.weight",
                 "model.vision_embed_tokens.img_projection.2.bias"}
    # clip (ours): only the tower is frozen; the embeddings and, by default, the projector and separators train
    assert _trainable("clip") == layers_and_head | projector | {"model.embed_tokens.weight"}
    # original: vision_embed_tokens.requires_grad_(False) — tower, projector, separators and the shared wte
    assert _trainable("original") == layers_and_head
    assert _trainable("original", train_projector=True) == _trainable("original", train_projector=False)


def test_lora_on_lm_head() -> None:
    model = StandIn()
    assert lora_targets(model, LoraSettings(targets=["o_proj"], lm_head=True)) == [
        "model.layers.0.o_proj", "model.layers.1.o_proj", "lm_head"]
    assert lora_targets(model, LoraSettings(targets=["lm_head"])) == ["lm_head"]  # was refused as "no such layer"


def test_gaussian_init_and_lm_head_adapter_on_the_model(tiny_model: Path) -> None:
    torch.manual_seed(0)
    config = load_config(flags={"data": "d", "model": str(tiny_model), "output": "o", "strategy": "lora",
                                "precision": "fp32", "lora": {"rank": 8, "init": "gaussian", "lm_head": True}})
    model = apply_strategy(Phi3VForCausalLM.from_pretrained(tiny_model), config)
    head_a = model.base_model.model.lm_head.lora_A["default"].weight
    assert head_a.shape == (8, model.config.hidden_size)
    # PEFT's 'gaussian' draws A from N(0, 1/rank); its default (kaiming-uniform, a=sqrt(5)) would give std 1/sqrt(3·64)
    assert abs(head_a.std().item() - 1 / 8) < 0.01
    assert torch.count_nonzero(model.base_model.model.lm_head.lora_B["default"].weight) == 0


def test_quantization_scope_settings() -> None:
    from phi3v_train.strategies import quantization_config

    ours = quantization_config(load_config(flags={"data": "d", "model": "m", "output": "o", "strategy": "qlora"}))
    assert ((ours.llm_int8_skip_modules, ours.bnb_4bit_use_double_quant)
            == (["model.vision_embed_tokens", "lm_head"], True))
    original = quantization_config(load_config(flags={
        "data": "d", "model": "m", "output": "o", "strategy": "qlora",
        "lora": {"quantize_vision": True, "double_quant": False}}))
    assert (original.llm_int8_skip_modules, original.bnb_4bit_use_double_quant) == (["lm_head"], False)
