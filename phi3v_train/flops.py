"""Model FLOPs and MFU of one Phi-3.5-vision training step, from parameter counts and sequence lengths.

Counted per part (vision tower, image projector, language model)::

    forward   2·N·T + 4·L·d·S²·n_seq
    one step  2·N·T·(1 + g) + 4·L·d·S²·n_seq·(1 + 2g) + 2·N_trainable·T

N = parameters the tokens pass through (embedding lookups excluded: they do no multiply-adds), T = tokens through
the part (tower: 577 per crop — 576 patches + class token — for every crop an image uses, global view included;
projector: the 2×2-merged patches; language model: batch × sequence length), L/d = layers/hidden size, S =
attention length (577 per crop; the sequence length), n_seq = attention sequences (crops; batch). g = 1 when
activation gradients flow back through the part (it, or a part after it in the backward pass, needs them: i.e. it or
an earlier part has trainable weights); the attention core has no weights, its backward costs twice its forward.
Full finetuning gives the familiar 6·N·T + 12·L·d·S² per sequence (PaLM's MFU), a frozen tower 2·N·T, LoRA
≈ 4·N·T. MFU = step FLOPs / (step seconds × peak FLOP/s); H100/H200 bf16 dense peak is 989e12.
"""

from __future__ import annotations

from dataclasses import dataclass

from phi3v_train.parts import LANGUAGE, PROJECTOR, VISION, part_of

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # bf16 dense tensor-core peaks
VISION_PART, PROJECTOR_PART, LM_PART = "vision", "projector", "language model"
_LABELS = {VISION: VISION_PART, PROJECTOR: PROJECTOR_PART, LANGUAGE: LM_PART}  # parts.part_of → the FLOP table's


@dataclass(frozen=True)
class FlopPart:
    """One stage of the model as the FLOP count sees it."""

    name: str
    params: int
    trainable: int
    tokens: int
    layers: int = 0
    width: int = 0
    attn_len: int = 0
    sequences: int = 0
    grads_flow: bool = False

    def forward_linear(self) -> float:
        return 2.0 * self.params * self.tokens

    def forward_attention(self) -> float:
        return 4.0 * self.layers * self.width * self.attn_len**2 * self.sequences

    def step_flops(self) -> float:
        g = 1 if self.grads_flow else 0
        return (self.forward_linear() * (1 + g) + self.forward_attention() * (1 + 2 * g)
                + 2.0 * self.trainable * self.tokens)


def training_flops(parts: list[FlopPart]) -> float:
    """Model FLOPs of one optimizer step (the formula in this module's docstring)."""
    return sum(part.step_flops() for part in parts)


def mfu(flops_per_step: float, step_seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None without a known peak."""
    if not peak or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak


def device_peak_flops(device_name: str) -> float | None:
    """bf16 dense peak of a known accelerator, from its name."""
    return next((peak for key, peak in PEAK_FLOPS.items() if key in device_name.upper()), None)


def count_params(model: object, *, trainable_only: bool = False) -> dict[str, int]:
    """Parameters per part, embedding lookups excluded (a lookup does no multiply-adds).

    Count the base on an unquantized (e.g. meta-device) model: 4-bit weights are stored packed.
    """
    import torch

    lookups = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    counts = dict.fromkeys((VISION_PART, PROJECTOR_PART, LM_PART), 0)
    for name, param in model.named_parameters():
        if id(param) in lookups or (trainable_only and not param.requires_grad):
            continue
        counts[_LABELS[part_of(name)]] += param.numel()
    return counts


def flop_parts(config: object, base: dict[str, int], trainable: dict[str, int], *, crops: int, batch: int,
               seq_len: int) -> list[FlopPart]:
    """The three stages of Phi-3.5-vision for one step of ``batch`` sequences carrying ``crops`` crops in all."""
    vision = config.vision_config
    per_crop = (vision.image_size // vision.patch_size) ** 2 + 1  # 577 for ViT-L/14-336: patches + class token
    merged = crops * (per_crop - 1) // 4  # the projector sees 2×2-merged patches (separators ignored)
    vision_grads = trainable[VISION_PART] > 0
    projector_grads = vision_grads or trainable[PROJECTOR_PART] > 0
    return [
        FlopPart(VISION_PART, base[VISION_PART], trainable[VISION_PART], crops * per_crop, vision.num_hidden_layers,
                 vision.hidden_size, per_crop, crops, vision_grads),
        FlopPart(PROJECTOR_PART, base[PROJECTOR_PART], trainable[PROJECTOR_PART], merged, grads_flow=projector_grads),
        FlopPart(LM_PART, base[LM_PART], trainable[LM_PART], batch * seq_len, config.num_hidden_layers,
                 config.hidden_size, seq_len, batch, True),
    ]


FORMULA = ("MFU = model FLOPs per step / (step time × peak FLOP/s); per part (vision tower, projector, language "
           "model) FLOPs = 2·N·T·(1+g) + 4·L·d·S²·n_seq·(1+2g) + 2·N_trainable·T, N = parameters without embedding "
           "lookups, T = tokens through the part (577 per crop for the tower), g = 1 when gradients flow through it; "
           "full finetuning ≈ 6·N·T, frozen parts 2·N·T, LoRA ≈ 4·N·T")

