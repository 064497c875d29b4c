"""Answers from a model: a record's turn built into the prompt training showed it, answered in left-padded batches.

Evaluation (:mod:`phi3v_train.evaluate`), validation during training and ``phi3v-train predict`` all answer through
:class:`Generator`, so a prediction is the same whichever command made it. Each answer also carries P(yes) among
yes/no at its first token, the score binary tasks are ranked by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from phi3v_data.images import ImageProblem, check_image, load_rgb
from phi3v_data.io import resolve_inside
from phi3v_data.prompt import DEFAULT_FORMAT, PromptFormat, encode_record
from phi3v_data.tokens import num_image_tokens
from phi3v_train.model import text_encoding
from schemas import Record

STOP_TOKENS = ("<|end|>", "<|endoftext|>")
"""An answer ends at ``<|end|>``; ``<|endoftext|>`` closes the conversation (both end generation)."""


@dataclass
class PreparedTurn:
    """A turn's prompt as training would build it, and the images it needs (paths inside the images root)."""

    input_ids: torch.Tensor  # int32: a split's prompts are held at once, image placeholders included
    image_paths: list[Path]
    image_tokens: list[int]


class Generator:
    """Builds prompts and answers them in left-padded batches; also reads P(yes) at the first answer position."""

    def __init__(
        self, model: torch.nn.Module, processor: Any, *, images_root: Path, num_crops: int, max_new_tokens: int,
        generation: dict[str, Any] | None = None, fmt: PromptFormat = DEFAULT_FORMAT,
    ) -> None:
        self.model, self.processor = model, processor
        self.fmt = fmt
        self.generation = generation or {"do_sample": False}
        self.tokenizer = processor.tokenizer
        self.images_root, self.num_crops, self.max_new_tokens = images_root, num_crops, max_new_tokens
        self.encode, self.bos_id = text_encoding(self.tokenizer)
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(token) for token in STOP_TOKENS]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[-1]
        # Training encodes an answer as its own chunk, so its first token is the first token of encode("yes").
        self.yes_id, self.no_id = (self.encode(word)[0] for word in ("yes", "no"))
        self.max_length: int | None = getattr(model.config, "max_position_embeddings", None)

    def prepare(self, record: Record, *, turn: int, image_paths: Sequence[Path] | None = None) -> PreparedTurn:
        """The prompt for answering ``turn``; ``ValueError`` naming the image or tag when it cannot be built.

        ``image_paths`` (files anywhere, e.g. from the command line) stand in for the record's paths under the
        images root.
        """
        paths = [path for earlier in record.conversations[: turn + 1] for path in earlier.images]
        given = list(image_paths) if image_paths is not None else None
        if given is not None and len(given) != len(paths):
            raise ValueError(f"{len(given)} image files given for {len(paths)} images in the record")
        resolved, tokens = [], []
        for index, rel in enumerate(paths):
            path = given[index] if given is not None else resolve_inside(self.images_root, rel)
            rel = str(path) if given is not None else rel
            try:
                width, height = check_image(path)
            except ImageProblem as exc:
                raise ValueError(f"image {rel}: {exc}") from None
            resolved.append(path)
            tokens.append(num_image_tokens(width, height, self.num_crops))
        encoded = encode_record(record, encode=self.encode, image_tokens=tokens, bos_id=self.bos_id, upto=turn,
                                fmt=self.fmt)
        if self.max_length is not None and len(encoded) + self.max_new_tokens > self.max_length:
            raise ValueError(
                f"prompt of {len(encoded)} tokens + {self.max_new_tokens} new ones exceeds the model's "
                f"{self.max_length} positions (fewer --num-crops or --max-new-tokens would fit)"
            )
        return PreparedTurn(torch.tensor(encoded.input_ids, dtype=torch.int32), resolved, tokens)

    def load_images(self, prepared: PreparedTurn) -> list[Image.Image]:
        """Decoded RGB images of one turn; ``ValueError`` when one does not decode."""
        images = []
        for path in prepared.image_paths:
            try:
                images.append(load_rgb(path))  # upright, as training read it
            except (OSError, SyntaxError, ValueError, ImageProblem) as exc:
                shown = path.relative_to(self.images_root) if path.is_relative_to(self.images_root) else path
                raise ValueError(f"image {shown} does not decode: {exc}") from None
        return images

    @torch.inference_mode()
    def generate(self, batch: Sequence[PreparedTurn], images: Sequence[list[Image.Image]]) -> list[tuple[str, float]]:
        """(answer text, P(yes) among yes/no at the first answer token) for each prompt, greedy."""
        inputs = self._inputs(batch, [image for turn_images in images for image in turn_images])
        out = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            **self.generation,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        first = out.logits[0].float()  # batch x vocab, the distribution of each answer's first token
        p_yes = torch.softmax(first[:, [self.yes_id, self.no_id]], dim=-1)[:, 0].tolist()
        answers = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        return [(self._decode(ids), p) for ids, p in zip(answers, p_yes)]

    def _inputs(self, batch: Sequence[PreparedTurn], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Left-padded ids and mask (generation appends on the right) plus the batch's images in sample order."""
        device = next(self.model.parameters()).device
        length = max(len(turn.input_ids) for turn in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, turn in enumerate(batch):
            ids[row, length - len(turn.input_ids) :] = turn.input_ids
            mask[row, length - len(turn.input_ids) :] = 1
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if images:
            features = self.processor.image_processor(images, return_tensors="pt", num_crops=self.num_crops)
            expected = [count for turn in batch for count in turn.image_tokens]
            if list(map(int, features["num_img_tokens"])) != expected:  # the prompt and the features would disagree
                raise RuntimeError(f"image processor gives {list(features['num_img_tokens'])} tokens, "
                                   f"prompts hold {expected}")
            inputs["pixel_values"] = features["pixel_values"].to(device, self.model.dtype)
            inputs["image_sizes"] = features["image_sizes"].to(device)
        return inputs

    def _decode(self, ids: list[int]) -> str:
        for position, token in enumerate(ids):
            if token in self.stop_ids:
                ids = ids[:position]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
