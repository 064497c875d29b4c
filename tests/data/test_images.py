"""Pixels wider than 8 bits (16-bit grayscale scans, float TIFFs) reach training, preview and predict scaled as image
libraries scale them, never clipped by Pillow's convert("RGB") into a white or black page. Values derived by hand:
16 bits keep the high byte (v >> 8), floats in [0, 1] become round(255 v)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data.cli import main
from phi3v_data.images import ImageProblem, check_image, to_rgb
from phi3v_data.preview import _flatten

SIXTEEN = np.array([[0, 255, 256, 1000, 32768, 65535]], dtype=np.uint16)
SIXTEEN_AS_8 = [0, 0, 1, 3, 128, 255]  # 1000 >> 8 = 3, 32768 >> 8 = 128
FLOAT = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], dtype=np.float32)
FLOAT_AS_8 = [0, 64, 128, 191, 255]  # 63.75 → 64, 127.5 → 128 (to even), 191.25 → 191


def _png16(path: Path, pixels: np.ndarray = SIXTEEN) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "PNG")
    with Image.open(path) as image:
        assert image.mode == "I;16"  # what Pillow reads a 16-bit grayscale PNG as
    return path


def _tiff(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "TIFF")
    return path


def _rgb(image: Image.Image) -> list[list[int]]:
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.shape[2] == 3 and (array[..., 0] == array[..., 2]).all()
    return array[..., 0].tolist()


def test_sixteen_bit_png_and_float_tiff_scale_to_eight_bits(tmp_path: Path) -> None:
    with Image.open(_png16(tmp_path / "scan.png")) as image:
        assert _rgb(to_rgb(image)) == [SIXTEEN_AS_8]
        assert _rgb(image.convert("RGB")) == [[0, 255, 255, 255, 255, 255]]  # what Pillow alone gives: white
    with Image.open(_tiff(tmp_path / "f.tif", FLOAT)) as image:
        assert image.mode == "F" and _rgb(to_rgb(image)) == [FLOAT_AS_8]
    with Image.open(_tiff(tmp_path / "i.tif", SIXTEEN.astype(np.int32))) as image:
        assert image.mode == "I" and _rgb(to_rgb(image)) == [SIXTEEN_AS_8]


@pytest.mark.parametrize("pixels, shown", [
    (np.array([[0.0, 255.0]], dtype=np.float32), "float pixels range 0..255"),
    (np.array([[0.0, np.nan]], dtype=np.float32), "(or hold NaN), outside [0, 1]"),
    (np.array([[0, 70000]], dtype=np.int32), "I pixels range 0..70000, beyond 16 bits"),
])
def test_pixels_without_an_eight_bit_meaning_are_refused_by_file(tmp_path: Path, pixels: np.ndarray,
                                                                  shown: str) -> None:
    path = _tiff(tmp_path / "images" / "val" / "bad.tif", pixels)
    with Image.open(path) as image, pytest.raises(ImageProblem, match=shown.replace("(", r"\(").replace(")", r"\)")
                                                  .replace("[", r"\[").replace("]", r"\]")):
        to_rgb(image)
    assert check_image(path) == (2, 1)  # the header check alone passes; --deep (and the training preflight) refuse
    with pytest.raises(ImageProblem) as caught:
        check_image(path, deep=True)
    assert caught.value.code == "image_pixel_range"
    record = {"id": "r", "conversations": [{"images": ["val/bad.tif"], "user": "What?", "assistant": "x"}]}
    (tmp_path / "x_val.jsonl").write_text(json.dumps(record) + "\n")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "x_val.jsonl"), "--deep", "--json"])
    assert result.exit_code == 1
    [finding] = json.loads(result.output)["findings"]
    assert ((finding["code"], finding["line"], finding["field"])
            == ("image_pixel_range", 1, "conversations[0].images[0]"))


def test_preview_shows_a_sixteen_bit_scan_as_training_sees_it(tmp_path: Path) -> None:
    with Image.open(_png16(tmp_path / "scan.png")) as image:
        assert _rgb(_flatten(image)) == [SIXTEEN_AS_8]


def test_predict_and_eval_load_scaled_pixels(tmp_path: Path) -> None:
    from phi3v_train.generate import Generator, PreparedTurn

    path = _png16(tmp_path / "images" / "scan.png")
    prepared = PreparedTurn(input_ids=None, image_paths=[path], image_tokens=[1])  # type: ignore[arg-type]
    [image] = Generator.load_images(SimpleNamespace(images_root=tmp_path / "images"), prepared)  # type: ignore[arg-type]
    assert _rgb(image) == [SIXTEEN_AS_8]
    bad = _tiff(tmp_path / "images" / "bad.tif", np.array([[2.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="image bad.tif does not decode: float pixels range 2..2"):
        Generator.load_images(SimpleNamespace(images_root=tmp_path / "images"),  # type: ignore[arg-type]
                              PreparedTurn(input_ids=None, image_paths=[bad], image_tokens=[1]))  # type: ignore[arg-type]
