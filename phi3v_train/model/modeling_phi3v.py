"""Phi-3.5-vision on transformers' native Phi-3 decoder and CLIP vision tower — no remote code.

Parameter names follow the official checkpoints exactly (``model.vision_embed_tokens.img_processor.vision_model.…``,
``model.vision_embed_tokens.{glb_GN,sub_GN,img_projection.0,img_projection.2}``, ``model.embed_tokens``,
``model.layers.N.self_attn.qkv_proj``, ``lm_head``): transformers' own CLIP key mapping adds/strips the
``vision_model.`` level when loading and saving, so official checkpoints load with no missing or unexpected keys and
``save_pretrained`` writes the official layout.

Loading never leaves a weight at random init: a missing key is an error naming it. The one alternative layout accepted
is word embeddings stored only as ``model.vision_embed_tokens.wte.weight`` (the official model shares that module with
``model.embed_tokens``; some tools write only that name). Saving writes the checkpoint's own dtype when asked
(:func:`released`), the official ``config.json`` fields, the official remote code when the base had it, and files
with the permissions a plain ``open()`` gives.

Image placement: in row ``b`` of ``input_ids`` the positions holding ``-k`` receive the features of image ``k`` of
sample ``b``; ``pixel_values`` holds the images of all samples concatenated (sample order, then image order).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, GenerationMixin
from transformers.cache_utils import Cache
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel
from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3Model

from phi3v_data.tokens import grid_tokens
from schemas.errors import UserError

from .compat import CACHE, output_cache
from .configuration_phi3v import Phi3VConfig
from .files import REMOTE_CODE_FILES, checkpoint_dir, copy_files, plain_permissions, resolve_file

# Keep the vision tower, its projection and the output head in full precision under bitsandbytes quantisation:
# BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=QUANT_SKIP_MODULES).
QUANT_SKIP_MODULES = ["model.vision_embed_tokens", "lm_head"]
EMBED_KEY = "model.embed_tokens.weight"
SHARED_WTE_KEY = "model.vision_embed_tokens.wte.weight"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


class MissingWeightsError(UserError, ValueError):
    """A checkpoint lacks weights the model needs; they would otherwise be left at random init."""


class CLIPTower(nn.Module):
    """Holds transformers' ``CLIPVisionModel`` under ``vision_model`` so parameter names are the official ones.

    The extra level keeps ``…img_processor.vision_model.…`` in every state dict (save, load, peft adapters,
    DeepSpeed checkpoints) without depending on transformers' load-time key renaming.
    """

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class Phi3VImageEmbedding(nn.Module):
    """CLIP features → 2×2 merge → learnable row/global separators → 2-layer GELU projection (official)."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        vision_config = config.vision_config
        vision_config._attn_implementation_internal = config._attn_implementation_internal
        self.img_processor = CLIPTower(vision_config)
        self.image_dim_out = vision_config.hidden_size
        self.crop_size = vision_config.image_size
        self.layer_idx = config.feature_layer
        merged = self.image_dim_out * 4
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, merged))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, merged))
        self.img_projection = nn.Sequential(
            nn.Linear(merged, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )

    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """(n, 3, 336, 336) → (n, patches, dim): hidden states of ``layer_idx`` without the class token."""
        dtype = self.img_processor.vision_model.embeddings.patch_embedding.weight.dtype
        output = self.img_processor.vision_model(pixel_values=crops.to(dtype), output_hidden_states=True)
        return output.hidden_states[self.layer_idx][:, 1:]

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Projected tokens of all images, concatenated: (sum of tokens, hidden); split with ``tokens_per_image``.

        One projection call and one output tensor: under ZeRO-3 every module call gathers weights collectively and
        every output tensor gets a backward hook, so per-image calls or outputs would make ranks that hold different
        numbers of images disagree and hang.
        """
        weight = self.img_projection[0].weight
        tokens = self.merged_tokens(pixel_values, image_sizes)
        return self.img_projection(torch.cat(tokens).to(weight.device, weight.dtype))

    def tokens_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        """Token count of each image from its HD grid (the official formula, for this tower's patch grid)."""
        side = self.crop_size // self.img_processor.vision_model.config.patch_size // 2
        return [
            grid_tokens(int(h) // self.crop_size, int(w) // self.crop_size, side=side)
            for h, w in torch.as_tensor(image_sizes).tolist()
        ]

    def merged_tokens(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Per image, before projection: ``[sub-image grid + sub_GN per row, glb_GN, global view + sub_GN per row]``.

        Only the crops an image actually uses go through CLIP (the zero padding up to ``num_crops + 1`` is skipped);
        each crop is encoded independently, so this equals encoding all of them.
        """
        num_images, max_crops = pixel_values.shape[:2]
        grids = [(int(h) // self.crop_size, int(w) // self.crop_size) for h, w in image_sizes.tolist()]
        if len(grids) != num_images:
            raise ValueError(f"pixel_values holds {num_images} images but image_sizes {len(grids)}")
        used = torch.zeros(num_images, max_crops, dtype=torch.bool)
        for index, (rows, cols) in enumerate(grids):
            if rows * cols + 1 > max_crops:
                raise ValueError(
                    f"image {index}: image_sizes {rows * self.crop_size}x{cols * self.crop_size} needs "
                    f"{rows * cols + 1} crops but pixel_values has {max_crops}"
                )
            used[index, : rows * cols + 1] = True
        features = self.crop_features(pixel_values[used.to(pixel_values.device)])
        outputs = []
        for image_features, (rows, cols) in zip(features.split(used.sum(dim=1).tolist()), grids):
            glb = self._with_row_separators(self._merge_2x2(image_features[:1], 1, 1))
            sub = self._with_row_separators(self._merge_2x2(image_features[1:], rows, cols))
            outputs.append(torch.cat([sub, self.glb_GN.reshape(1, -1).to(sub.dtype), glb]))
        return outputs

    @staticmethod
    def _merge_2x2(features: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(rows*cols, side², C) crop features → (rows*side/2, cols*side/2, 4C) grid, crops in row-major order."""
        count, length, channels = features.shape
        side = math.isqrt(length)
        half = side // 2
        if side * side != length or side % 2 or count != rows * cols:
            raise ValueError(f"cannot merge {count} crops of {length} patches into a {rows}x{cols} grid")
        merged = (
            features.reshape(count, half, 2, half, 2, channels)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(rows, cols, half, half, 4 * channels)
            .permute(0, 2, 1, 3, 4)
        )
        return merged.reshape(rows * half, cols * half, 4 * channels)

    def _with_row_separators(self, grid: torch.Tensor) -> torch.Tensor:
        """Append ``sub_GN`` to every row of the (H, W, C) grid and flatten to (H*(W+1), C)."""
        height = grid.shape[0]
        separators = self.sub_GN.reshape(1, 1, -1).expand(height, 1, -1).to(grid.dtype)
        return torch.cat([grid, separators], dim=1).reshape(-1, grid.shape[-1])


def image_slots(input_ids: torch.Tensor, num_images: int) -> list[tuple[int, int]]:
    """(row, k) of every image in ``pixel_values`` order: rows in order, within a row ``k = 1..K_row``.

    ``K_row`` is the largest placeholder ``-k`` in the row; every ``1..K_row`` must occur (the official ids).
    """
    slots: list[tuple[int, int]] = []
    for row, ids in enumerate(input_ids.tolist()):
        present = sorted({-value for value in ids if value < 0})
        if present and present != list(range(1, present[-1] + 1)):
            found = [-k for k in present]
            raise ValueError(f"row {row}: image placeholders must be -1..-K without gaps, found {found}")
        slots += [(row, k) for k in present]
    if len(slots) != num_images:
        raise ValueError(f"input_ids reference {len(slots)} images but pixel_values holds {num_images}")
    return slots


def merge_image_features(
    input_ids: torch.Tensor, inputs_embeds: torch.Tensor, features: list[torch.Tensor]
) -> torch.Tensor:
    """Write each image's features into the placeholder positions of its row (out of place, autograd-safe)."""
    rows, cols, values = [], [], []
    for index, (row, k) in enumerate(image_slots(input_ids, len(features))):
        positions = (input_ids[row] == -k).nonzero(as_tuple=True)[0]
        if positions.numel() != features[index].shape[0]:
            raise ValueError(
                f"row {row}, image {k}: {positions.numel()} placeholder positions but the image has "
                f"{features[index].shape[0]} tokens (check num_crops of the processor and the model inputs)"
            )
        rows.append(torch.full_like(positions, row))
        cols.append(positions)
        values.append(features[index])
    if not values:
        return inputs_embeds
    index = (torch.cat(rows), torch.cat(cols))
    return inputs_embeds.index_put(index, torch.cat(values).to(inputs_embeds.dtype))


class Phi3VPreTrainedModel(PreTrainedModel):
    config: Phi3VConfig
    config_class = Phi3VConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer", "Phi3VImageEmbedding"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": Phi3DecoderLayer}

    def _init_weights(self, module: nn.Module) -> None:
        tower = self._clip_tower()
        if tower is not None and any(module is m for m in tower.modules()):
            CLIPPreTrainedModel._init_weights(tower, module)
            return
        super()._init_weights(module)
        if isinstance(module, Phi3VImageEmbedding):
            std = self.config.initializer_range
            nn.init.normal_(module.glb_GN, std=std)
            nn.init.normal_(module.sub_GN, std=std)

    def _clip_tower(self) -> CLIPVisionModel | None:
        base = getattr(self, "model", self)
        embedding = getattr(base, "vision_embed_tokens", None)
        return embedding.img_processor.vision_model if embedding is not None else None


class Phi3VModel(Phi3VPreTrainedModel, Phi3Model):
    """Phi-3 decoder whose input embeddings carry image features at the placeholder positions."""

    def __init__(self, config: Phi3VConfig) -> None:
        Phi3Model.__init__(self, config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if "past_key_values" in kwargs:  # the older name (transformers <= 5.17)
            cache = kwargs.pop("past_key_values")
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
            inputs_embeds = self.embed_images(input_ids, pixel_values, image_sizes)
        return Phi3Model.forward(
            self,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE: cache},
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )

    def embed_images(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_sizes: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings with image features written over the ``-k`` placeholders."""
        has_placeholders = bool((input_ids < 0).any())
        inputs_embeds = self.embed_tokens(input_ids.clamp(min=0))
        if has_placeholders:
            if pixel_values is None or image_sizes is None:
                raise ValueError("input_ids hold image placeholders (negative ids) but no pixel_values/image_sizes")
            image_sizes = torch.as_tensor(image_sizes)
            features = self.vision_embed_tokens(pixel_values, image_sizes)
            per_image = list(features.split(self.vision_embed_tokens.tokens_per_image(image_sizes)))
            inputs_embeds = merge_image_features(input_ids, inputs_embeds, per_image)
        elif self.training and is_deepspeed_zero3_enabled():
            inputs_embeds = inputs_embeds + 0.0 * self._idle_vision_pass(inputs_embeds)
        return self.embed_dropout(inputs_embeds)  # on every path, as the official embedding does


    def _idle_vision_pass(self, like: torch.Tensor) -> torch.Tensor:
        """Run the vision path on one blank image and return a zero-weight scalar.

        Under ZeRO-3 each module call gathers its sharded weights collectively; a rank whose batch has no image must
        still make the same calls as ranks that have images, or training hangs.
        """
        size = self.vision_embed_tokens.crop_size
        blank = like.new_zeros(1, 2, 3, size, size)
        return self.vision_embed_tokens(blank, torch.tensor([[size, size]])).sum().to(like.dtype)


class Phi3VForCausalLM(Phi3VPreTrainedModel, GenerationMixin):
    """Phi-3.5-vision for generation and finetuning; see the module docstring for the input contract."""

    _tied_weights_keys: dict[str, str] = {}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """transformers' loading (directory or Hub id) that refuses missing weights and accepts the shared-wte layout.

        Also records the dtype the checkpoint declares (``checkpoint_dtype``), which :func:`released` saves in.
        """
        want_info = kwargs.pop("output_loading_info", False)
        hub = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        config = kwargs.pop("config", None)
        if not isinstance(config, Phi3VConfig):
            config = Phi3VConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        declared = config.dtype
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, config=config, output_loading_info=True, **kwargs
        )
        missing = set(info["missing_keys"])
        if EMBED_KEY in missing and SHARED_WTE_KEY in info["unexpected_keys"]:
            model._load_shared_wte(pretrained_model_name_or_path, hub)
            missing.discard(EMBED_KEY)
            info["unexpected_keys"] = set(info["unexpected_keys"]) - {SHARED_WTE_KEY}
        if missing:
            names = sorted(missing)
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            raise MissingWeightsError(
                f"{pretrained_model_name_or_path}: the checkpoint has no weights for {len(names)} parameter(s) of "
                f"Phi3VForCausalLM ({shown}); they would be random. Is it a complete Phi-3(.5)-vision checkpoint?"
            )
        model.checkpoint_dtype = declared if isinstance(declared, torch.dtype) else None
        info["missing_keys"] = missing
        return (model, info) if want_info else model

    def _load_shared_wte(self, source: str | Path, hub: dict[str, Any]) -> None:
        """Copy ``model.vision_embed_tokens.wte.weight`` from the checkpoint files into ``model.embed_tokens``."""
        from safetensors import safe_open

        index = resolve_file(source, "model.safetensors.index.json", **hub)
        if index is not None:
            import json

            shard = json.loads(index.read_text(encoding="utf-8"))["weight_map"][SHARED_WTE_KEY]
            path = resolve_file(source, shard, **hub)
        else:
            path = resolve_file(source, "model.safetensors", **hub)
        if path is None:
            raise MissingWeightsError(f"{source}: cannot find the file that holds {SHARED_WTE_KEY}")
        with safe_open(str(path), "pt") as handle:
            weight = handle.get_tensor(SHARED_WTE_KEY)
        target = self.model.embed_tokens.weight
        gather = contextlib.nullcontext()
        if is_deepspeed_zero3_enabled():
            import deepspeed

            gather = deepspeed.zero.GatheredParameters([target], modifier_rank=0)
        with gather, torch.no_grad():
            target.copy_(weight.to(target.device, target.dtype))

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """transformers' saving, plus: weights in ``save_dtype`` when set, the official remote code when the base had
        it (so ``trust_remote_code`` loads the output), and plain file permissions."""
        dtype = getattr(self, "save_dtype", None)
        if dtype is not None and not getattr(self, "is_loaded_in_4bit", False):
            state_dict = kwargs.get("state_dict")
            state_dict = self.state_dict() if state_dict is None else state_dict
            kwargs["state_dict"] = {
                key: value.to(dtype) if value.is_floating_point() else value for key, value in state_dict.items()
            }
        super().save_pretrained(save_directory, *args, **kwargs)
        out = Path(save_directory)
        if dtype is not None and (out / "config.json").is_file():
            saved = self.config.dtype
            self.config.dtype = dtype
            try:
                self.config.save_pretrained(str(out))
            finally:
                self.config.dtype = saved
        source = getattr(self.config, "_name_or_path", None) or getattr(self, "name_or_path", None)
        if source:
            with contextlib.suppress(OSError, ValueError):
                copy_files(checkpoint_dir(source, local_files_only=True), out, REMOTE_CODE_FILES)
        plain_permissions(*out.glob("*.safetensors"))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if "past_key_values" in kwargs:  # the older name (transformers <= 5.17 and its generate())
            cache = kwargs.pop("past_key_values")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None and self.training:
            logits, loss = self._labelled_logits_and_loss(hidden_states, labels, kwargs.get("num_items_in_batch"))
            return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE: output_cache(outputs)},
                                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE: output_cache(outputs)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _labelled_logits_and_loss(
        self, hidden_states: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: logits only where a label follows (answer tokens), as (N, vocab); the loss transformers computes.

        Prompts and images are masked (-100) and make up almost every position: a 4k-token sample's full logits over
        32064 words are 0.5 GB in fp32. Position t predicts label t+1; the loss is the summed cross-entropy divided
        by ``num_items_in_batch`` when given (gradient accumulation), else the mean — as ``ForCausalLMLoss``.
        """
        targets = labels[:, 1:].to(hidden_states.device)
        keep = targets != -100
        logits = self.lm_head(hidden_states[:, :-1][keep]).float()
        loss = nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
        if num_items_in_batch is None:
            return logits, loss / keep.sum().clamp(min=1)
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        return logits, loss / num_items_in_batch

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """Images are encoded on the prefill step only; later steps see text tokens and the KV cache."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        if model_inputs.get("pixel_values") is None:
            model_inputs.pop("image_sizes", None)
        return model_inputs


@contextlib.contextmanager
def released(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Within the block, ``model.save_pretrained`` writes ``dtype`` (default: the dtype its checkpoint declared).

    Training keeps fp32 master weights; a finished model is released in the base's dtype (bf16 for the official
    checkpoints), not at twice its size. Intermediate checkpoints stay exact for resuming, so this is opt-in.
    """
    previous = getattr(model, "save_dtype", None)
    model.save_dtype = dtype or getattr(model, "checkpoint_dtype", None)
    try:
        yield
    finally:
        model.save_dtype = previous


__all__ = ["QUANT_SKIP_MODULES", "MissingWeightsError", "released", "Phi3VForCausalLM", "Phi3VModel",
           "Phi3VPreTrainedModel", "Phi3VImageEmbedding"]
