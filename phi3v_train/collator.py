"""Samples → one padded model batch. Runs inside the data loader's worker processes, where images are decoded.

Token ids and labels come from :func:`phi3v_data.prompt.encode_record` with each image's token count as the image
processor reports it, so the batch matches what the validator and the sampler measured. Padding is on the right:
``attention_mask`` 0 and ``labels`` -100 there. The image processor pads every image's crop dimension to
``num_crops + 1``, so the batch stacks them: ``pixel_values`` (N_images, max_crops + 1, 3, 336, 336) in sample order
then image order, ``image_sizes`` (N_images, 2). For a mixture of datasets (several image roots) the batch also
carries ``source_ids`` (N_samples,): which dataset each sample came from, counted (and removed) by the trainer.

A sample whose image no longer decodes (a truncated file the header check let through) never stops the run: it is
logged with its file and line, replaced by a stand-in of the same length whose labels are all ignored, and counted
in ``skipped_samples`` (a batch key only when non-zero), which the trainer adds up for log.jsonl and the final line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from phi3v_data.images import load_rgb
from phi3v_data.io import resolve_inside
from phi3v_data.prompt import DEFAULT_FORMAT, IGNORE_INDEX, Encoded, PromptFormat, encode_record
from phi3v_data.tokens import CROP
from phi3v_train.dataset import Sample

log = logging.getLogger(__name__)

SKIPPED_KEY = "skipped_samples"
"""Batch key: how many samples of the batch were stood in for (the trainer counts and removes it)."""


class BadSample(Exception):
    """A sample that measured fine at start-up but cannot be built now (an undecodable image, a changed file)."""


class Collator:
    """Callable batch builder; picklable, so DataLoader workers get their own copy."""

    def __init__(
        self, *, image_processor: Callable[..., Any], encode: Callable[[str], list[int]], bos_id: int | None,
        pad_id: int, images_root: Path | Sequence[Path], fmt: PromptFormat = DEFAULT_FORMAT,
    ) -> None:
        self.image_processor = image_processor
        self.encode = encode
        self.bos_id = bos_id
        self.pad_id = pad_id
        self.images_roots = [images_root] if isinstance(images_root, Path) else list(images_root)  # by Sample.source
        self.fmt = fmt  # must be what the samples were measured with (load_split)

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        encoded, pixels, sizes, skipped = [], [], [], 0
        for sample in samples:  # the processor works image by image anyway; per sample, one bad file costs one sample
            try:
                one, processed = self._prepare(sample)
            except BadSample as exc:
                log.warning("%s: record %r skipped (%s); training goes on without it", sample.where, sample.record.id,
                            exc)
                one, processed = self._stand_in(sample)
                skipped += 1
            encoded.append(one)
            if processed is not None:
                pixels.append(processed["pixel_values"])
                sizes.append(processed["image_sizes"])
        batch: dict[str, torch.Tensor] = {}
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)  # every image has num_crops + 1 crops, padded alike
            batch["image_sizes"] = torch.cat(sizes)
        batch.update(pad(encoded, pad_id=self.pad_id))
        if len(self.images_roots) > 1:
            batch["source_ids"] = torch.tensor([sample.source for sample in samples], dtype=torch.long)
        if skipped:
            batch[SKIPPED_KEY] = torch.tensor(skipped, dtype=torch.long)
        return batch

    def _prepare(self, sample: Sample) -> tuple[Encoded, Any]:
        """Decode, HD-transform and encode one sample; BadSample says why it cannot be trained on now."""
        images = [self._load(self.images_roots[sample.source], rel) for rel in sample.record.images]
        try:
            processed, tokens = self._process(images)
        except ValueError as exc:  # e.g. an image replaced by one too elongated for the HD transform
            raise BadSample(f"image processor: {exc}") from None
        encoded = encode_record(sample.record, encode=self.encode, image_tokens=tokens, bos_id=self.bos_id,
                                fmt=self.fmt)
        if len(encoded) != sample.length:
            # The sampler and the --max-length filter trusted the measured length; a change means the data moved.
            raise BadSample(f"{len(encoded)} tokens now but {sample.length} measured at start-up; did its images "
                            "change during the run?")
        return encoded, processed

    def _process(self, images: list[Image.Image]) -> tuple[Any, list[int]]:
        """The image processor's output for ``images`` (None for none) and each image's token count."""
        if not images:
            return None, []
        processed = self.image_processor(images, return_tensors="pt")
        return processed, [int(n) for n in processed["num_img_tokens"]]

    def _load(self, root: Path, rel: str) -> Image.Image:
        try:
            return load_rgb(resolve_inside(root, rel))  # upright (EXIF orientation applied), as measured
        except Exception as exc:  # noqa: BLE001 - decoding arbitrary bytes: Pillow's plugins raise many kinds
            raise BadSample(f"{rel}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _stand_in(self, sample: Sample) -> tuple[Encoded, Any]:
        """The sample with white images of its measured sizes and no label trained on: same length, no gradient.

        Keeping the shape (rather than dropping the row) keeps the batch, the sampler's lengths and every rank's
        step in lockstep, and the vision tower still runs (DDP expects its gradients, zero here).
        """
        sizes = sample.image_sizes or ((CROP, CROP),) * len(sample.record.images)  # a Sample built without sizes
        processed, tokens = self._process([Image.new("RGB", size, (255, 255, 255)) for size in sizes])
        encoded = encode_record(sample.record, encode=self.encode, image_tokens=tokens, bos_id=self.bos_id,
                                fmt=self.fmt)
        return Encoded(encoded.input_ids, [IGNORE_INDEX] * len(encoded)), processed


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
