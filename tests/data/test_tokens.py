import pytest

from phi3v_data.tokens import hd_grid, num_image_tokens, resized_size


# Hand-derived from the official formula: tokens = (rows*cols + 1) * 144 + 1 + (rows + 1) * 12.
@pytest.mark.parametrize(
    ("width", "height", "num_crops", "grid", "tokens"),
    [
        (336, 336, 1, (336, 336), 313),  # 1x1 grid: 2*144 + 1 + 24
        (336, 336, 4, (672, 672), 757),  # scale 2 → 2x2 grid: 5*144 + 1 + 36
        (320, 240, 4, (672, 672), 757),  # ratio 4/3: scale 2, new_h = int(672 / 1.333) = 504 → padded 672
        (1700, 2200, 16, (1344, 1344), 2509),  # tall: transposed, scale 4, 4x4 grid: 17*144 + 1 + 60
        (1000, 100, 16, (3360, 336), 1609),  # ratio 10: scale 10 (11*ceil(1.1) = 22 > 16), 1x10 grid: 11*144 + 1 + 24
    ],
)
def test_token_counts_match_official_formula(width, height, num_crops, grid, tokens) -> None:
    assert hd_grid(width, height, num_crops) == grid
    assert num_image_tokens(width, height, num_crops) == tokens


def test_resized_size_keeps_aspect_ratio_before_padding() -> None:
    assert resized_size(320, 240, 4) == (672, 504)
    assert resized_size(240, 320, 4) == (504, 672)


@pytest.mark.parametrize("bad", [(0, 10, 4), (10, -1, 4), (10, 10, 0)])
def test_invalid_sizes_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        num_image_tokens(*bad)
