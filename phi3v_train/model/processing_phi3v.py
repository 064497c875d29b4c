"""Text + images → model inputs, as the official Phi-3.5-vision processor builds them (plus a batched call).

Text path (official ``_convert_images_texts_to_inputs``): with images, the prompt is split at ``<|image_k|>`` tags;
every piece between tags — empty ones included — is tokenized on its own WITH the tokenizer's special tokens (so
each piece starts with BOS when the tokenizer adds one: a BOS follows every image), and tag ``k`` becomes
``[-k] * num_img_tokens[k-1]``. Without images the whole text is tokenized in one call (tags are not split).

:func:`phi3v_data.prompt.encode_segments` implements exactly this rule (BOS at the start and after every image), and
the processor calls it, so training, validation and inference share one encoder. :func:`bos_id` and
:class:`TextEncoder` (both: :func:`text_encoding`) give the arguments that training code passes to ``encode_record``.

Batched calls pad every sample to the longest with the tokenizer's pad id; the side is ``padding_side`` (default:
the tokenizer's, ``"right"`` for training; use ``"left"`` for batched ``generate``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from phi3v_data.io import write_json
from phi3v_data.prompt import Segment, encode_segments

from .files import (
    IMAGE_PROCESSOR_AUTO_MAP,
    PROCESSOR_AUTO_MAP,
    PROCESSOR_CONFIG,
    REMOTE_CODE_FILES,
    TOKENIZER_FILES,
    copy_files,
    officialise_tokenizer_config,
    resolve_file,
)
from .image_processing_phi3v import Phi3VImageProcessor

IMAGE_PLACEHOLDER_RE = re.compile(r"<\|image_\d+\|>")
"""``<|image_N|>`` in a prompt (schemas.IMAGE_TAG_RE's pattern; the model files import nothing of the project)."""
PREPROCESSOR_CONFIG = "preprocessor_config.json"
ImageList = Sequence[Image.Image]


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The BOS id the official processor puts in front of a prompt: the tokenizer's, if it adds one."""
    ids = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return bos if bos is not None and ids and ids[0] == bos else None


class TextEncoder:
    """Text → ids without special tokens, the ``encode`` argument of :func:`phi3v_data.prompt.encode_record` (BOS
    comes from :func:`bos_id`); a class, so data loader and measuring workers can unpickle it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def batch(self, texts: list[str]) -> list[list[int]]:
        """``[self(text) for text in texts]`` in one tokenizer call (measuring a million records at start-up)."""
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def text_encoding(tokenizer: PreTrainedTokenizerBase) -> tuple[TextEncoder, int | None]:
    """(``encode``, ``bos_id``): the two arguments every caller of ``encode_record`` passes for this tokenizer."""
    return TextEncoder(tokenizer), bos_id(tokenizer)


class Phi3VProcessor:
    """Tokenizer + :class:`Phi3VImageProcessor`; ``from_pretrained`` reads the official files."""

    special_image_token = "<|image|>"

    def __init__(
        self, image_processor: Phi3VImageProcessor, tokenizer: PreTrainedTokenizerBase, *, source: Path | None = None
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.num_img_tokens = image_processor.num_img_tokens
        self.source = source  # the directory the files came from: saving copies its tokenizer files verbatim

    @classmethod
    def from_pretrained(cls, path: str | Path, *, num_crops: int | None = None, **kwargs: Any) -> Phi3VProcessor:
        """Load ``preprocessor_config.json`` and the tokenizer of a checkpoint directory or Hub id (via the HF
        cache)."""
        hub = {key: kwargs[key] for key in ("cache_dir", "revision", "token", "local_files_only") if key in kwargs}
        config_path = resolve_file(path, PREPROCESSOR_CONFIG, **hub)
        if config_path is None:
            raise FileNotFoundError(
                f"{Path(path) / PREPROCESSOR_CONFIG}: missing; "
                f"is {path} a Phi-3.5-vision checkpoint directory or Hub id?"
            )
        try:
            settings = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            # worded as schemas.errors.json_file_error words it (the model files import nothing of the project)
            raise ValueError(f"{config_path}:{error.lineno}: invalid JSON: {error.msg} "
                             f"(column {error.colno})") from error
        keep = ("num_crops", "image_mean", "image_std", "do_convert_rgb")
        image_kwargs = {key: settings[key] for key in keep if key in settings}
        if num_crops is not None:
            image_kwargs["num_crops"] = num_crops
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        return cls(Phi3VImageProcessor(**image_kwargs), tokenizer, source=config_path.parent)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the files the official processor reads: ``preprocessor_config.json``, ``processor_config.json``
        (both with the official ``auto_map``) and the tokenizer files.

        The tokenizer never changes in training, so its files are copied from where it was loaded (byte for byte the
        official ones for an official base); otherwise transformers writes them and ``tokenizer_config.json`` is made
        readable by transformers 4.4x as well (class name, template inline, ``add_bos_token``).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / PREPROCESSOR_CONFIG, {
            "auto_map": IMAGE_PROCESSOR_AUTO_MAP,
            "do_convert_rgb": self.image_processor.do_convert_rgb,
            "image_mean": self.image_processor.image_mean,
            "image_processor_type": "Phi3VImageProcessor",
            "image_std": self.image_processor.image_std,
            "num_crops": self.image_processor.num_crops,
            "num_img_tokens": self.num_img_tokens,
            "processor_class": "Phi3VProcessor",
        })  # fmt: skip
        write_json(path / PROCESSOR_CONFIG, {"auto_map": PROCESSOR_AUTO_MAP, "processor_class": "Phi3VProcessor"})
        source = self.source
        if (source is not None and (source / "tokenizer.json").is_file()
                and (source / "tokenizer_config.json").is_file()):
            copy_files(source, path, TOKENIZER_FILES)
        else:
            self.tokenizer.save_pretrained(str(path))
        officialise_tokenizer_config(path / "tokenizer_config.json", chat_template=self.tokenizer.chat_template)
        if source is not None:
            copy_files(source, path, REMOTE_CODE_FILES)

    def __call__(
        self,
        text: str | Sequence[str],
        images: Image.Image | ImageList | Sequence[ImageList | None] | None = None,
        *,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
        **_: Any,
    ) -> BatchFeature:
        """One prompt with its images, or a batch: ``text`` a list and ``images`` a list of per-sample lists."""
        if isinstance(text, str):
            single = [images] if isinstance(images, Image.Image) else images
            return self._batch([text], [list(single or [])], padding_side, return_tensors)
        texts = list(text)
        if images is None:
            per_sample: list[list[Image.Image]] = [[] for _ in texts]
        else:
            per_sample = [list(sample or []) for sample in images]  # type: ignore[union-attr]
        if len(per_sample) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(per_sample)} image lists")
        return self._batch(texts, per_sample, padding_side, return_tensors)

    def encode_prompt(self, text: str, num_tokens: Sequence[int]) -> list[int]:
        """Official ids of one prompt whose images have ``num_tokens`` tokens each (see module docstring)."""
        if not num_tokens:
            return list(self.tokenizer(text)["input_ids"])
        tags = [int(tag[8:-2]) for tag in IMAGE_PLACEHOLDER_RE.findall(text)]
        if sorted(set(tags)) != list(range(1, len(num_tokens) + 1)):
            raise ValueError(
                f"image tags {sorted(set(tags))} must be exactly 1..{len(num_tokens)} for {len(num_tokens)} images"
            )
        segment = Segment(text, train=False)
        encoded = encode_segments(
            [segment], encode=TextEncoder(self.tokenizer), image_tokens=num_tokens, bos_id=bos_id(self.tokenizer)
        )
        return encoded.input_ids

    def _batch(
        self,
        texts: list[str],
        images: list[list[Image.Image]],
        padding_side: str | None,
        return_tensors: str | None,
    ) -> BatchFeature:
        flat = [image for sample in images for image in sample]
        image_inputs = self.image_processor(flat, return_tensors="pt") if flat else None
        counts = image_inputs["num_img_tokens"].tolist() if image_inputs is not None else []
        rows, start = [], 0
        for text, sample in zip(texts, images):
            rows.append(self.encode_prompt(text, counts[start : start + len(sample)]))
            start += len(sample)
        data: dict[str, Any] = self._pad(rows, padding_side or self.tokenizer.padding_side)
        if image_inputs is not None:
            data["pixel_values"] = image_inputs["pixel_values"]
            data["image_sizes"] = image_inputs["image_sizes"]
        if return_tensors != "pt":
            data = {key: value.tolist() for key, value in data.items()}
        return BatchFeature(data=data)

    def _pad(self, rows: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        longest = max(len(row) for row in rows)
        if pad_id is None and any(len(row) != longest for row in rows):
            raise ValueError("the tokenizer has no pad token; cannot pad samples of different lengths")
        input_ids = torch.full((len(rows), longest), pad_id if pad_id is not None else 0, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for index, row in enumerate(rows):
            span = slice(longest - len(row), longest) if side == "left" else slice(0, len(row))
            input_ids[index, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[index, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """The tokenizer's (official) chat template."""
        kwargs.setdefault("tokenize", False)
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)
