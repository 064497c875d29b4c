"""Samples → one padded model batch. Runs inside the data loader's worker processes, where images are decoded.

Token ids and labels come from :func:`phi3v_data.prompt.encode_record` with each image's token count as the image
processor reports it, so the batch matches what the validator and the sampler measured. Padding is on the right:
``attention_mask`` 0 and ``labels`` -100 there. All images of the batch go through the image processor in one call,
so their crop dimension is padded alike: ``pixel_values`` (N_images, max_crops + 1, 3, 336, 336) in sample order
then image order, ``image_sizes`` (N_images, 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from phi3v_data.io import resolve_inside
from phi3v_data.prompt import IGNORE_INDEX, Encoded, encode_record
from phi3v_train.data import Sample


class TextEncoder:
    """Text → ids without special tokens (``encode`` of :func:`encode_record`); a class, so workers can unpickle it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


class Collator:
    """Callable batch builder; picklable, so DataLoader workers get their own copy."""

    def __init__(
        self, *, image_processor: Callable[..., Any], encode: Callable[[str], list[int]], bos_id: int | None,
        pad_id: int, images_root: Path,
    ) -> None:
        self.image_processor = image_processor
        self.encode = encode
        self.bos_id = bos_id
        self.pad_id = pad_id
        self.images_root = images_root

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        images = [self._load(rel) for sample in samples for rel in sample.record.images]
        batch: dict[str, torch.Tensor] = {}
        tokens: list[int] = []
        if images:
            processed = self.image_processor(images, return_tensors="pt")
            batch["pixel_values"] = processed["pixel_values"]
            batch["image_sizes"] = processed["image_sizes"]
            tokens = [int(n) for n in processed["num_img_tokens"]]
        encoded = []
        for sample in samples:
            count = len(sample.record.images)
            encoded.append(self._encode(sample, tokens[:count]))
            tokens = tokens[count:]
        batch.update(pad(encoded, pad_id=self.pad_id))
        return batch

    def _load(self, rel: str) -> Image.Image:
        with Image.open(resolve_inside(self.images_root, rel)) as image:
            return image.convert("RGB")

    def _encode(self, sample: Sample, image_tokens: list[int]) -> Encoded:
        encoded = encode_record(sample.record, encode=self.encode, image_tokens=image_tokens, bos_id=self.bos_id)
        if len(encoded) != sample.length:
            # The sampler and the --max-length filter trusted the measured length; a change means the data moved.
            raise RuntimeError(
                f"{sample.where}: record {sample.record.id!r} is {len(encoded)} tokens now but measured "
                f"{sample.length} at start-up; did its images change during the run?"
            )
        return encoded


def pad(encoded: Sequence[Encoded], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token ids (``pad_id``), labels (-100) and build the attention mask.

    >>> pad([Encoded([5, 6], [-100, 6]), Encoded([7], [7])], pad_id=0)["attention_mask"].tolist()
    [[1, 1], [1, 0]]
    """
    width = max(len(e) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        input_ids[row, : len(e)] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, : len(e)] = torch.tensor(e.labels, dtype=torch.long)
        attention_mask[row, : len(e)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
