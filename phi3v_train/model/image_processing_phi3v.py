"""Phi-3.5-vision's HD image transform, vectorised, reproducing the official ``Phi3VImageProcessor``.

Per image: RGB; tall images are transposed so the long side is horizontal; PIL bilinear resize (what torchvision's
``resize`` does on a PIL image) to the size :func:`phi3v_data.tokens.resized_size` gives; ``ToTensor`` + CLIP
mean/std; white padding of the short side to a multiple of 336, centred with ``int((target - h) / 2)`` rows on top;
transposed back. The global view is a bicubic (no antialias) resize of the normalised HD image to 336×336. Output
crops: ``[global, row-major sub-crops…, zero padding up to num_crops + 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from phi3v_data.images import to_rgb
from phi3v_data.tokens import CROP, hd_grid, num_image_tokens, resized_size

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Phi3VImageProcessor(BaseImageProcessor):
    """Images → ``pixel_values`` (N, num_crops+1, 3, 336, 336), ``image_sizes`` (N, 2) = HD (h, w), token counts."""

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 1,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(num_crops) < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        self.num_crops = int(num_crops)
        self.image_mean = list(image_mean) if image_mean is not None else list(CLIP_MEAN)
        self.image_std = list(image_std) if image_std is not None else list(CLIP_STD)
        self.do_convert_rgb = do_convert_rgb

    @property
    def num_img_tokens(self) -> int:
        """Tokens per crop (the official processor reads this attribute)."""
        return 144

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        """Official name for :func:`phi3v_data.tokens.num_image_tokens` at this processor's ``num_crops``."""
        return num_image_tokens(width, height, self.num_crops)

    def preprocess(  # type: ignore[override]
        self,
        images: Image.Image | Sequence[Image.Image],
        return_tensors: str | None = "pt",
        num_crops: int | None = None,
        **_: Any,
    ) -> BatchFeature:
        """HD-transform every image; all outputs stacked along the image axis."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        crops = int(num_crops or self.num_crops)
        pixel_values = torch.empty(len(images), crops + 1, 3, CROP, CROP)
        sizes, tokens = [], []
        for index, image in enumerate(images):
            hd_image = self.hd_image(image, crops)
            height, width = hd_image.shape[1:]
            rows, cols = height // CROP, width // CROP
            pixel_values[index, 0] = F.interpolate(hd_image[None], size=(CROP, CROP), mode="bicubic")[0]
            grid = hd_image.reshape(3, rows, CROP, cols, CROP).permute(1, 3, 0, 2, 4)
            pixel_values[index, 1 : 1 + rows * cols] = grid.reshape(rows * cols, 3, CROP, CROP)
            pixel_values[index, 1 + rows * cols :] = 0.0  # official zero padding up to num_crops + 1
            sizes.append([height, width])
            tokens.append(num_image_tokens(image.width, image.height, crops))
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
            "num_img_tokens": torch.tensor(tokens, dtype=torch.long),
        }
        if return_tensors in (None, "np"):
            data = {key: value.numpy() for key, value in data.items()}
            if return_tensors is None:
                data["num_img_tokens"] = data["num_img_tokens"].tolist()
        return BatchFeature(data=data)

    def hd_image(self, image: Image.Image, num_crops: int) -> torch.Tensor:
        """The normalised, white-padded HD image (3, H, W) with H and W multiples of 336."""
        if image.mode != "RGB":
            image = to_rgb(image)  # 16-bit and float pixels scaled to 8 bits, not clipped
        width, height = image.size
        new_width, new_height = resized_size(width, height, num_crops)
        grid_width, grid_height = hd_grid(width, height, num_crops)
        if min(new_width, new_height) < 1:
            raise ValueError(f"image of {width}x{height} is too elongated: its short side would resize to 0 pixels")
        tall = width < height
        if tall:  # the official transform works on the transposed image; PIL resize is not transpose-symmetric
            image = image.transpose(Image.Transpose.TRANSPOSE)
            new_width, new_height = new_height, new_width
            grid_width, grid_height = grid_height, grid_width
        pixels = np.asarray(image.resize((new_width, new_height), Image.Resampling.BILINEAR))
        table = self._lookup_table()
        canvas = torch.empty(3, grid_height, new_width)
        top = int((grid_height - new_height) / 2)
        canvas[:, :top] = table[:, 255].view(3, 1, 1)  # white padding, normalised
        canvas[:, top + new_height :] = table[:, 255].view(3, 1, 1)
        target = canvas.numpy()
        for channel in range(3):  # one table lookup per pixel instead of ToTensor + Normalize passes
            np.take(table[channel].numpy(), pixels[:, :, channel], out=target[channel, top : top + new_height])
        return canvas.transpose(1, 2) if tall else canvas

    def _lookup_table(self) -> torch.Tensor:
        """(3, 256) normalised value of each byte, computed with exactly ToTensor's and Normalize's float32 ops."""
        key = (tuple(self.image_mean), tuple(self.image_std))
        if getattr(self, "_table_key", None) != key:
            values = torch.arange(256, dtype=torch.uint8).float().div(255)
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1)
            self._table, self._table_key = (values.view(1, 256) - mean) / std, key
        return self._table
