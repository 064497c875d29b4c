"""EXIF orientation: a photo stored sideways with an orientation tag is measured and decoded upright everywhere,
as ``datasets`` (``PIL.ImageOps.exif_transpose``) and so the original recipe read it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from phi3v_data.images import check_image, load_rgb, orientation
from phi3v_data.preview import thumbnail_data_uri


def _upright() -> Image.Image:
    """60 wide, 40 high; a red block at the top left and a blue one at the bottom right tell the turns apart."""
    image = Image.new("RGB", (60, 40), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 20, 10))
    image.paste((0, 0, 255), (45, 30, 60, 40))
    return image


def _stored_sideways(path: Path, **save: object) -> Image.Image:
    """What a camera held upright but mounted sideways writes: the pixels turned 90° counter-clockwise, and
    orientation 6 ("rotate 90° clockwise to display")."""
    stored = _upright().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, **save)
    return stored


def test_png_with_orientation_decodes_to_the_upright_pixels(tmp_path: Path) -> None:
    path = tmp_path / "page.png"
    stored = _stored_sideways(path)
    assert stored.size == (40, 60)
    with Image.open(path) as raw:
        assert orientation(raw) == 6 and raw.size == (40, 60)
    assert check_image(path) == (60, 40)  # the upright size, from the header
    assert load_rgb(path).tobytes() == _upright().tobytes()


def test_jpeg_with_orientation_decodes_upright(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _stored_sideways(path, quality=95)
    assert check_image(path) == check_image(path, deep=True) == (60, 40)
    upright = load_rgb(path)
    with Image.open(path) as raw:  # the stored (lossy) pixels, turned by hand: orientation 6 → ROTATE_270
        assert upright.tobytes() == raw.convert("RGB").transpose(Image.Transpose.ROTATE_270).tobytes()
    assert upright.getpixel((5, 5))[0] > 200 > upright.getpixel((5, 5))[2]  # red stays top left
    assert upright.getpixel((55, 35))[2] > 200 > upright.getpixel((55, 35))[0]  # blue bottom right


@pytest.mark.parametrize("value", [1, None])
def test_upright_or_untagged_images_are_left_as_stored(tmp_path: Path, value: int | None) -> None:
    path = tmp_path / "plain.png"
    exif = Image.Exif()
    if value is not None:
        exif[0x0112] = value
    _upright().save(path, exif=exif)
    assert check_image(path) == (60, 40)
    assert load_rgb(path).tobytes() == _upright().tobytes()


def test_preview_thumbnail_is_upright(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _stored_sideways(path, quality=95)
    uri, size = thumbnail_data_uri(path)
    assert size == (60, 40)
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.size == (60, 40)
