"""Cheap and thorough checks that an image file is usable, without ever decoding a decompression bomb, and the one
way pixels are read for training, evaluation and previews.

Images are used upright: a JPEG whose EXIF orientation says "rotated" is turned as ``PIL.ImageOps.exif_transpose``
turns it — what ``datasets`` does when it decodes an image, so what the original recipe trained on. Sizes are the
upright sizes too (:func:`check_image` reads the orientation from the header), so the image tokens counted by
validation and training match the pixels the collator builds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps

MAX_PIXELS = 178_956_970  # Pillow's own bomb threshold (2 × MAX_IMAGE_PIXELS); larger images are refused
ORIENTATION = 0x0112  # EXIF tag
QUARTER_TURNS = frozenset({5, 6, 7, 8})  # orientations whose upright image swaps width and height


class ImageProblem(Exception):
    """Why an image cannot be used; ``code`` is a stable machine-readable kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_image(path: str | os.PathLike[str], *, deep: bool = False, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Return (width, height) of an image file, raising :class:`ImageProblem` when it is unusable.

    By default only the header is read (fast: size and format). ``deep=True`` decodes every pixel, which catches
    truncated files. Images over ``max_pixels`` are refused before any decoding. The size is the upright one
    (:func:`orientation`): a 4000x3000 photo tagged "rotate 90°" is 3000x4000.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise ImageProblem("image_empty", f"image has size {width}x{height}")
                if width * height > max_pixels:
                    raise ImageProblem(
                        "image_too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
                    )
                if deep:
                    image.load()
                if orientation(image) in QUARTER_TURNS:
                    return height, width
                return width, height
    except ImageProblem:
        raise
    except FileNotFoundError:
        raise ImageProblem("image_missing", "file does not exist") from None
    except IsADirectoryError:
        raise ImageProblem("image_missing", "is a directory, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem("image_too_large", f"refused as a decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageProblem("image_undecodable", "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageProblem("image_undecodable", f"does not decode: {exc}") from None


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright) from the header, without decoding pixels.

    Pillow's ``getexif`` decodes a whole PNG to look for an ``eXIf`` chunk after the pixels; a PNG's chunk before
    them (where the PNG spec puts it) is already in ``info``, so that is all that is read for PNGs.
    """
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        value = exif.get(ORIENTATION, 1)
        return value if isinstance(value, int) and 1 <= value <= 8 else 1
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError):  # a broken EXIF block: leave it as stored
        return 1


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The decoded image, upright (``ImageOps.exif_transpose``) and in RGB: what training and evaluation see."""
    with Image.open(path) as image:
        if orientation(image) != 1:
            ImageOps.exif_transpose(image, in_place=True)
        return image.convert("RGB")
