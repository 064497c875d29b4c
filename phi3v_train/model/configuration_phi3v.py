"""Configuration of Phi-3.5-vision: the Phi-3 language-model fields plus the official ``embd_layer``/``img_processor``.

Reading: the official ``config.json`` (``model_type: "phi3_v"``) of Phi-3.5-vision-instruct and
Phi-3-vision-128k-instruct is read as shipped: ``rope_scaling.type`` "su" (the pre-5.x name) and "longrope" are the same
scaling, with ``original_max_position_embeddings`` at top level; ``auto_map`` is kept as plain data, never executed.

Writing (:meth:`Phi3VConfig.to_dict`): the fields the official ``configuration_phi3_v.py`` reads — ``rope_scaling``
``{"type": "su", short_factor, long_factor}``, ``rope_theta``, ``torch_dtype``, the official ``auto_map``,
``use_cache: true`` — and no 5.x-only ``rope_parameters``/``dtype``. ``img_processor.vision_config`` (a dict of
``CLIPVisionConfig`` fields) is this project's extension for tiny test towers; the official code ignores it (its tower
is always CLIP ViT-L/14-336, as here without it).
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

OFFICIAL_AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_phi3_v.Phi3VConfig",
    "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
}
# what the official remote code names the scaling ("su"); transformers 5.x calls it "longrope"
ROPE_TYPE_ON_DISK = "su"
_LONGROPE_NAMES = ("su", "longrope")
# 5.x-only keys the official configuration class would keep as stray attributes
_NOT_WRITTEN = ("rope_parameters", "dtype")

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
        kwargs.setdefault("auto_map", dict(OFFICIAL_AUTO_MAP))  # written back: the official code finds its classes
        super().__post_init__(**kwargs)
        self._check_vision_settings()

    def convert_rope_params_to_dict(self, default_theta: float = 10_000.0, ignore_keys: set | None = None, **kwargs):
        """Read ``rope_scaling.type`` "su" as "longrope" before transformers standardises it.

        transformers 5.x renames "su" only after it has decided which keys the scaling needs, and then misses the
        top-level ``original_max_position_embeddings`` (a KeyError on the official file). Both names are one
        computation: long factors past ``original_max_position_embeddings``, attention scaled by
        ``sqrt(1 + ln(max/original) / ln(original))``.
        """
        scaling = kwargs.get("rope_scaling") or (
            self.rope_parameters if isinstance(self.rope_parameters, dict) else None)
        if isinstance(scaling, dict):
            scaling = dict(scaling)  # never edit the caller's dict
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind in _LONGROPE_NAMES:
                scaling.pop("type", None)
                scaling["rope_type"] = "longrope"
            if "rope_scaling" in kwargs and kwargs["rope_scaling"]:
                kwargs["rope_scaling"] = scaling
            else:
                self.rope_parameters = scaling
        kwargs = super().convert_rope_params_to_dict(default_theta=default_theta, ignore_keys=ignore_keys, **kwargs)
        rope = self.rope_parameters
        if rope.get("rope_type") == "longrope" and rope.get("original_max_position_embeddings"):
            # the official ratio, stated so transformers does not warn that it has to derive it
            rope.setdefault("factor", self.max_position_embeddings / rope["original_max_position_embeddings"])
        return kwargs

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
        """The official ``config.json`` fields (see the module docstring); transformers 5.x reads them back."""
        output = super().to_dict()
        rope = output.get("rope_parameters") or {}
        output["rope_theta"] = rope.get("rope_theta", 10000.0)
        if rope.get("rope_type", "default") == "default":
            output["rope_scaling"] = None
        else:
            kind = ROPE_TYPE_ON_DISK if rope["rope_type"] == "longrope" else rope["rope_type"]
            keep = ("long_factor", "short_factor")
            output["rope_scaling"] = {**{key: rope[key] for key in keep if key in rope}, "type": kind}
        dtype = output.get("dtype")
        if dtype is not None:
            output["torch_dtype"] = str(dtype).removeprefix("torch.")
        output["use_cache"] = True  # training turns the KV cache off; a saved model is for inference
        for key in _NOT_WRITTEN:
            output.pop(key, None)
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """``to_dict`` minus defaults, but always with the keys the official code needs to find explicitly."""
        output = super().to_diff_dict()
        full = self.to_dict()
        for key in ("rope_scaling", "rope_theta", "original_max_position_embeddings", "torch_dtype", "use_cache",
                    "auto_map", "embd_layer", "img_processor", "vocab_size", "bos_token_id", "eos_token_id"):
            if key in full:
                output[key] = full[key]
        for key in _NOT_WRITTEN:
            output.pop(key, None)
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
