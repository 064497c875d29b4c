"""How many tokens an image becomes, from its size alone (no decoding, no torch).

Phi-3.5-vision's HD transform resizes an image onto a grid of 336×336 crops (at most ``num_crops`` of them, aspect
ratio kept, long side horizontal), pads the short side with white to a multiple of 336, and adds one global 336×336
view. Each crop gives 12×12 merged patches (144 tokens); the sub-image grid gets one ``sub_GN`` separator per row of
patches and the global view 12; one ``glb_GN`` sits between them. This module reproduces the official
``calc_num_image_tokens_from_image_size`` exactly, including its float arithmetic.
"""

from __future__ import annotations

import math

CROP = 336
ROWS_PER_CROP = 12


def resized_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """Size (width, height) the image is resized to before white padding, as the official processor computes it.

    The long side becomes ``scale * 336`` for the largest ``scale`` whose grid still fits ``num_crops`` crops.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_width = int(scale * CROP)
    new_height = int(new_width / ratio)
    return (new_height, new_width) if transposed else (new_width, new_height)


def elongation_problem(width: int, height: int, num_crops: int) -> str | None:
    """Why an image of ``width``×``height`` cannot go through the HD transform at ``num_crops``, or None when it can.

    An image so elongated that its short side resizes to 0 pixels breaks the official processor; the token formula
    still returns a count for it, so validation and the training pre-flight both ask this one rule first.

    >>> elongation_problem(10000, 1, 1)
    '10000x1 is too elongated for --num-crops 1: the HD transform would give a 0-pixel side'
    """
    if min(resized_size(width, height, num_crops)) >= 1:
        return None
    return f"{width}x{height} is too elongated for --num-crops {num_crops}: the HD transform would give a 0-pixel side"


def hd_grid(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """Size (width, height) in pixels of the HD-transformed image, both multiples of 336 — before the global view.

    >>> hd_grid(1700, 2200, 16)
    (1344, 1344)
    """
    new_width, new_height = resized_size(width, height, num_crops)
    if width < height:  # the short side (here the width) is padded
        return int(math.ceil(new_width / CROP) * CROP), new_height
    return new_width, int(math.ceil(new_height / CROP) * CROP)


def num_image_tokens(width: int, height: int, num_crops: int) -> int:
    """Tokens one image of ``width``×``height`` pixels occupies in the prompt at ``num_crops``.

    >>> num_image_tokens(336, 336, 1)
    313
    """
    grid_w, grid_h = hd_grid(width, height, num_crops)
    return grid_tokens(grid_h // CROP, grid_w // CROP)


def grid_tokens(rows: int, cols: int, *, side: int = ROWS_PER_CROP) -> int:
    """Tokens of a ``rows``×``cols`` crop grid plus the global view, each crop ``side``×``side`` merged patches.

    Sub-image rows each end in a separator, then one ``glb_GN``, then the global view with its row separators.

    >>> grid_tokens(1, 1)
    313
    """
    return rows * side * (cols * side + 1) + 1 + side * (side + 1)
