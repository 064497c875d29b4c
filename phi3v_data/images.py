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

import numpy as np
from PIL import Image, ImageOps

from phi3v_data.io import special_file_problem
from schemas.errors import UserError

MAX_PIXELS = 178_956_970  # Pillow's own bomb threshold (2 × MAX_IMAGE_PIXELS); larger images are refused
ORIENTATION = 0x0112  # EXIF tag
QUARTER_TURNS = frozenset({5, 6, 7, 8})  # orientations whose upright image swaps width and height


class ImageProblem(UserError):
    """Why an image cannot be used; ``code`` is a stable machine-readable kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Pillow's modes for one channel of more than 8 bits (16-bit grayscale PNG and TIFF, 32-bit integer TIFF)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB pixels of a decoded image, scaled the way image libraries do (OpenCV, scikit-image), which Pillow's
    ``convert("RGB")`` does not: it clips, so a 16-bit scan turns white and a float TIFF black.

    16-bit grayscale keeps its high byte (``v >> 8``: 65535 → 255, 32768 → 128, 255 → 0); float pixels in [0, 1]
    become ``round(255 * v)`` (0.5 → 128). Wider integers or floats outside [0, 1] (NaN included) have no agreed
    8-bit meaning and are refused (:class:`ImageProblem`, code ``image_pixel_range``). Every other mode converts as
    Pillow converts it (palette, CMYK, 16-bit RGB, which Pillow already reads as 8-bit).
    """
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image).astype(np.int64)
        low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
        if low < 0 or high > 0xFFFF:
            raise ImageProblem("image_pixel_range", f"{image.mode} pixels range {low}..{high}, beyond 16 bits; save "
                               "the image with 8 or 16 bits per channel")
        return Image.fromarray((pixels >> 8).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0):
            raise ImageProblem("image_pixel_range", f"float pixels range {np.nanmin(pixels):g}..{np.nanmax(pixels):g}"
                               " (or hold NaN), outside [0, 1]; save the image with 8 or 16 bits per channel")
        return Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")  # a loaded copy also when already RGB: callers close the file it came from


def check_image(
    path: str | os.PathLike[str], *, deep: bool = False, draft: bool = False, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """Return (width, height) of an image file, raising :class:`ImageProblem` when it is unusable.

    By default only the header is read (fast: size and format). ``deep=True`` decodes every pixel, which catches
    truncated files. ``draft=True`` lets a JPEG decode at 1/8 scale: every byte is still read, so truncation is
    still caught, at about half the cost. Images over ``max_pixels`` are refused before any decoding. The size is
    the upright one (:func:`orientation`): a 4000x3000 photo tagged "rotate 90°" is 3000x4000.
    """
    special = special_file_problem(path)
    if special is not None:  # a FIFO named page.png would block the open below forever
        raise ImageProblem("image_not_a_file", special)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise ImageProblem("image_empty", f"image has size {width}x{height}")
                if width * height > max_pixels:
                    raise ImageProblem(
                        "image_too_large",
                        f"{width}x{height} pixels exceeds the limit of {max_pixels} (decompression bomb?)",
                    )
                if deep:
                    if draft:
                        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))  # JPEG only; else no-op
                    image.load()
                    if image.mode == "F" or image.mode in SIXTEEN_BIT_MODES:
                        to_rgb(image)  # pixels beyond 16 bits or outside [0, 1] are refused by file
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
    """The decoded image, upright (``ImageOps.exif_transpose``) and in 8-bit RGB (:func:`to_rgb`): what training,
    evaluation and preview see."""
    with Image.open(path) as image:
        if orientation(image) != 1:
            ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
