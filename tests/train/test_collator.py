"""Collator: padded batches whose lengths are the ones encode_record, the loader and the sampler computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from phi3v_data.prompt import IGNORE_INDEX, encode_record
from phi3v_train.collator import Collator, TextEncoder
from phi3v_train.data import DataError, load_split, preflight
from phi3v_train.model import Phi3VProcessor, bos_id
from train_fixtures import dataset, tiny_model, write_dataset  # noqa: F401 - fixtures

NUM_CROPS = 2


@pytest.fixture(scope="module")
def processor(tiny_model: Path) -> Phi3VProcessor:  # noqa: F811
    return Phi3VProcessor.from_pretrained(tiny_model, num_crops=NUM_CROPS)


def _load(data: Path, processor: Phi3VProcessor, *, max_length: int = 100_000):
    return load_split(data, "train", encode=TextEncoder(processor.tokenizer), bos_id=bos_id(processor.tokenizer),
                      num_crops=NUM_CROPS, max_length=max_length)


def test_batch_lengths_match_encode_record_and_measured_lengths(dataset: Path, processor: Phi3VProcessor) -> None:  # noqa: F811
    samples, summary = _load(dataset, processor)
    assert summary.kept == 8
    collate = Collator(image_processor=processor.image_processor, encode=TextEncoder(processor.tokenizer),
                       bos_id=bos_id(processor.tokenizer), pad_id=processor.tokenizer.pad_token_id,
                       images_root=dataset / "images")
    batch = collate([samples[0], samples[3]])  # sample 3 has two turns and two images
    real = batch["attention_mask"].sum(dim=1).tolist()
    assert real == [samples[0].length, samples[3].length]
    images = [Image.open(dataset / "images" / p).convert("RGB") for s in (samples[0], samples[3]) for p in s.record.images]
    tokens = [int(n) for n in processor.image_processor(images, return_tensors="pt")["num_img_tokens"]]
    expected = encode_record(samples[3].record, encode=TextEncoder(processor.tokenizer), image_tokens=tokens[1:],
                             bos_id=bos_id(processor.tokenizer))
    assert batch["input_ids"][1, : len(expected)].tolist() == expected.input_ids
    assert batch["labels"][1, : len(expected)].tolist() == expected.labels
    width = max(real)
    assert batch["input_ids"].shape == (2, width)
    assert batch["input_ids"][0, real[0]:].tolist() == [processor.tokenizer.pad_token_id] * (width - real[0])
    assert batch["labels"][0, real[0]:].tolist() == [IGNORE_INDEX] * (width - real[0])
    assert batch["pixel_values"].shape[0] == 3 and batch["image_sizes"].shape == (3, 2)
    assert (batch["input_ids"][1] == -2).sum() == tokens[2]  # the second image of sample 3 is <|image_2|>


def test_unlabeled_and_too_long_are_counted_not_kept(tmp_path: Path, processor: Phi3VProcessor) -> None:
    unlabeled = {"id": "u", "task": "chat", "conversations": [{"images": [], "user": "hi", "assistant": None}]}
    data = write_dataset(tmp_path / "d", extra=[unlabeled])
    samples, _ = _load(data, processor)
    limit = sorted(s.length for s in samples)[5]
    kept, summary = _load(data, processor, max_length=limit)
    assert (summary.kept, summary.unlabeled, summary.too_long) == (len(kept), 1, 8 - len(kept))
    assert all(s.length <= limit for s in kept.samples)
    assert summary.longest_dropped == max(s.length for s in samples)


def test_missing_split_and_broken_dataset_are_refused(tmp_path: Path, processor: Phi3VProcessor) -> None:
    data = write_dataset(tmp_path / "d")
    with pytest.raises(DataError, match=r"no \*_val\.jsonl file \(found: colors_train\.jsonl\)"):
        load_split(data, "val", encode=str.split, bos_id=None, num_crops=1, max_length=10)
    assert preflight(data, "train", report_dir=tmp_path / "run", workers=1) is None
    broken = {"id": "b", "conversations": [{"images": ["train/missing.png"], "user": "q", "assistant": "a"}]}
    with (data / "colors_train.jsonl").open("a") as handle:
        handle.write(json.dumps(broken) + "\n")
    message = preflight(data, "train", report_dir=tmp_path / "run", workers=1)
    assert message is not None and "colors_train.jsonl:9" in message and "preflight-train.json" in message
    report = json.loads((tmp_path / "run" / "preflight-train.json").read_text())
    assert report["valid"] is False and report["findings"][0]["code"] == "image_missing"


def test_pad_right() -> None:
    from phi3v_data.prompt import Encoded
    from phi3v_train.collator import pad

    out = pad([Encoded([5, 6, 7], [IGNORE_INDEX, 6, 7]), Encoded([8], [8])], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert out["attention_mask"].dtype == torch.long and out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_exif_rotated_jpeg_is_measured_and_trained_upright(tmp_path: Path, processor: Phi3VProcessor) -> None:
    upright = Image.new("RGB", (90, 40), (255, 255, 255))
    upright.paste((255, 0, 0), (0, 0, 30, 20))  # a red block at the top left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90° counter-clockwise: "rotate 90° clockwise to display"
    (tmp_path / "images" / "train").mkdir(parents=True)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "images/train/photo.jpg", exif=exif, quality=95)
    record = {"id": "p", "conversations": [{"images": ["train/photo.jpg"], "user": "Color?", "assistant": "red"}]}
    (tmp_path / "p_train.jsonl").write_text(json.dumps(record) + "\n")
    samples, _ = _load(tmp_path, processor)
    assert samples[0].image_sizes == ((90, 40),)
    collate = Collator(image_processor=processor.image_processor, encode=TextEncoder(processor.tokenizer),
                       bos_id=bos_id(processor.tokenizer), pad_id=processor.tokenizer.pad_token_id,
                       images_root=tmp_path / "images")
    batch = collate([samples[0]])
    with Image.open(tmp_path / "images/train/photo.jpg") as stored:  # orientation 6 is undone by ROTATE_270
        by_hand = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert by_hand.size == (90, 40)
    expected = processor.image_processor([by_hand], return_tensors="pt")
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert batch["image_sizes"].tolist() == expected["image_sizes"].tolist()
    assert int(batch["attention_mask"].sum()) == samples[0].length  # tokens counted for the upright size
