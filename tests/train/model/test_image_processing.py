"""Token counts, pixel layout and white padding of the HD transform, derived by hand from the official formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v_data.tokens import num_image_tokens
from phi3v_train.model import Phi3VImageProcessor
from phi3v_train.model.image_processing_phi3v import CLIP_MEAN, CLIP_STD

# (width, height, num_crops) → tokens. By hand: transpose if tall; ratio = long/short; scale = largest s with
# s*ceil(s/ratio) <= num_crops; long side s*336, short int(s*336/ratio) padded up to 336s; rows/cols in the image's
# own orientation; tokens = (rows*cols + 1)*144 + 1 + (rows + 1)*12.
TABLE = [
    (336, 336, 1, 313),  # 1x1
    (336, 336, 4, 757),  # 2x2
    (336, 336, 16, 2509),  # 4x4
    (1, 1, 1, 313),
    (1, 1, 16, 2509),
    (16, 16, 4, 757),
    (10000, 50, 1, 313),  # ratio 200: short side int(336/200)=1 px, padded to one row
    (10000, 50, 4, 745),  # 1 row x 4 cols: 5*144 + 1 + 2*12
    (10000, 50, 16, 2473),  # 1 x 16: 17*144 + 1 + 2*12
    (50, 10000, 1, 313),
    (50, 10000, 4, 781),  # 4 rows x 1 col: 5*144 + 1 + 5*12
    (50, 10000, 16, 2653),  # 16 x 1: 17*144 + 1 + 17*12
    (1700, 2200, 1, 313),  # ratio 1.294: scale 1, 336x259 padded to 336x336
    (1700, 2200, 4, 757),  # scale 2: 672x519 → 672x672 (2x2)
    (1700, 2200, 16, 2509),  # scale 4: 1344x1038 → 1344x1344 (4x4)
    (1000, 300, 4, 601),  # ratio 3.33: scale 3, 1008x302 → 1 row x 3 cols: 4*144 + 1 + 2*12
    (1000, 300, 16, 1909),  # scale 6, 2016x604 → 2 rows x 6 cols: 13*144 + 1 + 3*12
]


@pytest.mark.parametrize(("width", "height", "num_crops", "tokens"), TABLE)
def test_token_count_table(width: int, height: int, num_crops: int, tokens: int) -> None:
    assert num_image_tokens(width, height, num_crops) == tokens
    processor = Phi3VImageProcessor(num_crops=num_crops)
    assert processor.calc_num_image_tokens_from_image_size(width, height) == tokens


@pytest.mark.parametrize(("width", "height", "num_crops", "tokens"), [t for t in TABLE if t[0] * t[1] <= 2_000_000])
def test_processor_outputs_agree_with_the_formula(width: int, height: int, num_crops: int, tokens: int) -> None:
    out = Phi3VImageProcessor(num_crops=num_crops)([Image.new("RGB", (width, height), (90, 30, 200))])
    h, w = out["image_sizes"][0].tolist()
    assert out["num_img_tokens"].tolist() == [tokens]
    assert (h // 336 * w // 336 + 1) * 144 + 1 + (h // 336 + 1) * 12 == tokens
    assert out["pixel_values"].shape == (1, num_crops + 1, 3, 336, 336)
    used = 1 + (h // 336) * (w // 336)
    assert torch.count_nonzero(out["pixel_values"][0, used:]) == 0  # zero padding up to num_crops + 1


def _normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(rgb, CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)


def test_wide_image_is_centred_with_white_rows() -> None:
    colour = (200, 40, 10)
    out = Phi3VImageProcessor(num_crops=1)([Image.new("RGB", (336, 168), colour)])
    assert out["image_sizes"].tolist() == [[336, 336]]
    crop = out["pixel_values"][0, 1]  # the single sub-crop; ratio 2 → 336x168, padded int(168/2)=84 rows on top
    white, inside = _normalised((255, 255, 255)), _normalised(colour)
    torch.testing.assert_close(crop[:, :84], white.expand(3, 84, 336))
    torch.testing.assert_close(crop[:, 84:252], inside.expand(3, 168, 336))
    torch.testing.assert_close(crop[:, 252:], white.expand(3, 84, 336))
    # the global view of a constant region stays constant under bicubic resizing
    torch.testing.assert_close(out["pixel_values"][0, 0, :, 168, 100], inside.view(3), atol=1e-5, rtol=0)


def test_tall_image_is_padded_left_and_right() -> None:
    colour = (0, 128, 255)
    out = Phi3VImageProcessor(num_crops=1)([Image.new("RGB", (168, 336), colour)])
    # transposed: 336x168 (ratio 2), scale 1 → padded to 336x336 with 84 rows on top; back: 84 white columns left
    assert out["image_sizes"].tolist() == [[336, 336]]
    crop = out["pixel_values"][0, 1]
    white, inside = _normalised((255, 255, 255)), _normalised(colour)
    torch.testing.assert_close(crop[:, :, :84], white.expand(3, 336, 84))
    torch.testing.assert_close(crop[:, :, 84:252], inside.expand(3, 336, 168))
    torch.testing.assert_close(crop[:, :, 252:], white.expand(3, 336, 84))


def test_tall_image_gets_more_rows_than_columns() -> None:
    out = Phi3VImageProcessor(num_crops=4)([Image.new("RGB", (168, 336), (1, 2, 3))])
    # transposed 336x168, scale 2 (2*ceil(2/2)=2 <= 4, 3*ceil(1.5)=6 > 4) → 672x336, no padding; back: 2 rows x 1 col
    assert out["image_sizes"].tolist() == [[672, 336]]
    assert out["num_img_tokens"].tolist() == [(2 + 1) * 144 + 1 + 3 * 12]


def test_crops_are_row_major() -> None:
    image = Image.new("RGB", (672, 336), (0, 0, 0))
    image.paste((255, 0, 0), (336, 0, 672, 336))  # right half red
    out = Phi3VImageProcessor(num_crops=2)([image])
    assert out["image_sizes"].tolist() == [[336, 672]]
    torch.testing.assert_close(out["pixel_values"][0, 1], _normalised((0, 0, 0)).expand(3, 336, 336))
    torch.testing.assert_close(out["pixel_values"][0, 2], _normalised((255, 0, 0)).expand(3, 336, 336))


def test_too_elongated_image_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="too elongated"):
        Phi3VImageProcessor(num_crops=1)([Image.new("RGB", (1000, 1), (0, 0, 0))])


def test_grey_and_rgba_images_are_converted() -> None:
    out = Phi3VImageProcessor(num_crops=1)([Image.new("L", (40, 40), 255), Image.new("RGBA", (40, 40), (0, 0, 0, 0))])
    assert out["pixel_values"].shape == (2, 2, 3, 336, 336)
    torch.testing.assert_close(out["pixel_values"][0, 1], _normalised((255, 255, 255)).expand(3, 336, 336))


def _reference_hd_image(image: Image.Image, num_crops: int) -> torch.Tensor:
    """The official steps written out plainly: transpose, PIL bilinear resize, white paste, ToTensor, Normalize."""
    width, height = image.size
    tall = width < height
    if tall:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        width, height = image.size
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_width = int(scale * 336)
    new_height = int(new_width / ratio)
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    target = int(math.ceil(new_height / 336) * 336)
    canvas = Image.new("RGB", (new_width, target), (255, 255, 255))
    canvas.paste(image, (0, int((target - new_height) / 2)))
    if tall:
        canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
    pixels = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float().div(255)
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.mark.parametrize(("width", "height", "num_crops"), [(170, 220, 16), (220, 170, 4), (37, 999, 4), (333, 50, 1)])
def test_vectorised_transform_is_bitwise_the_official_one(width: int, height: int, num_crops: int) -> None:
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    processor = Phi3VImageProcessor(num_crops=num_crops)
    expected = _reference_hd_image(image, num_crops)
    assert torch.equal(processor.hd_image(image, num_crops), expected)
    out = processor([image])
    glb = torch.nn.functional.interpolate(expected[None], size=(336, 336), mode="bicubic")[0]
    torch.testing.assert_close(out["pixel_values"][0, 0], glb, rtol=0, atol=1e-6)
