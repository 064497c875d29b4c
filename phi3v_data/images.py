"""Cheap and thorough checks that an image file is usable, without ever decoding a decompression bomb."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

MAX_PIXELS = 178_956_970  # Pillow's own bomb threshold (2 × MAX_IMAGE_PIXELS); larger images are refused


class ImageProblem(Exception):
    """Why an image cannot be used; ``code`` is a stable machine-readable kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_image(path: str | os.PathLike[str], *, deep: bool = False, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Return (width, height) of an image file, raising :class:`ImageProblem` when it is unusable.

    By default only the header is read (fast: size and format). ``deep=True`` decodes every pixel, which catches
    truncated files. Images over ``max_pixels`` are refused before any decoding.
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
