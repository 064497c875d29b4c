"""Configuration of Phi-3.5-vision: the Phi-3 language-model fields plus the official ``embd_layer``/``img_processor``.

The official ``config.json`` (``model_type: "phi3_v"``) is read as is; its ``auto_map`` entries are kept as plain data
and never executed. ``img_processor.vision_config`` (a dict of ``CLIPVisionConfig`` fields) is this project's
extension for tiny test towers; without it the tower is CLIP ViT-L/14-336, as in the official checkpoints.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config

CLIP_VIT_L14_336: dict[str, Any] = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 336,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-5,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
}

DEFAULT_EMBD_LAYER: dict[str, Any] = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}

DEFAULT_IMG_PROCESSOR: dict[str, Any] = {
    "image_dim_out": 1024,
    "model_name": "openai/clip-vit-large-patch14-336",
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}


@strict
class Phi3VConfig(Phi3Config):
    """Phi-3 config + the vision embedding settings of the official Phi-3.5-vision ``config.json``."""

    model_type = "phi3_v"

    embd_layer: dict | None = None
    img_processor: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # The official config.json pins "_attn_implementation": "flash_attention_2" for its remote code. Honouring
        # it would make every load fail where flash-attn is not installed, so attention is chosen at load time
        # (``attn_implementation=``; transformers' default, sdpa, otherwise).
        kwargs.pop("_attn_implementation", None)
        self.embd_layer = {**DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        self.img_processor = {**DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        super().__post_init__(**kwargs)
        self._check_vision_settings()

    def _check_vision_settings(self) -> None:
        layer = self.embd_layer
        if layer.get("hd_transform_order") != "sub_glb" or not layer.get("use_hd_transform"):
            raise ValueError(
                "Phi3VConfig supports only the official HD transform (embd_layer.use_hd_transform=true, "
                f"hd_transform_order='sub_glb'); got {layer}"
            )
        if layer.get("projection_cls", "mlp") != "mlp" or not layer.get("with_learnable_separator"):
            raise ValueError(f"Phi3VConfig supports only projection_cls='mlp' with learnable separators; got {layer}")
        if self.img_processor.get("type_feature", "patch") != "patch":
            raise ValueError("Phi3VConfig supports only img_processor.type_feature='patch' (class token dropped)")
        dim_out = self.img_processor.get("image_dim_out")
        if dim_out != self.vision_config.hidden_size:
            raise ValueError(
                f"img_processor.image_dim_out={dim_out} must equal the vision tower hidden size "
                f"{self.vision_config.hidden_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Also write the pre-5.x ``rope_theta``/``rope_scaling`` keys the official remote code reads."""
        output = super().to_dict()
        rope = output.get("rope_parameters") or {}
        output["rope_theta"] = rope.get("rope_theta", 10000.0)
        if rope.get("rope_type", "default") == "default":
            output["rope_scaling"] = None
        else:
            keep = ("short_factor", "long_factor")
            output["rope_scaling"] = {"type": rope["rope_type"], **{key: rope[key] for key in keep if key in rope}}
        return output

    @property
    def vision_config(self) -> CLIPVisionConfig:
        """The CLIP tower's config: ``img_processor.vision_config`` if given, else ViT-L/14-336."""
        fields = {**CLIP_VIT_L14_336, **(self.img_processor.get("vision_config") or {})}
        return CLIPVisionConfig(**fields)

    @property
    def feature_layer(self) -> int:
        """Hidden-state index the image features come from (official default: second to last)."""
        return int(self.img_processor.get("layer_idx", -2))
