"""The processor's text path: official BOS handling, agreement with phi3v_data.prompt, batching, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from phi3v_data.prompt import Segment, encode_segments
from phi3v_data.tokens import num_image_tokens
from phi3v_train.model import Phi3VProcessor, TextEncoder, bos_id


def test_text_without_images_equals_encode_segments(processor) -> None:
    text = "<|user|>\nHow many cats?<|end|>\n<|assistant|>\n"
    tokenizer = processor.tokenizer
    expected = encode_segments(
        [Segment(text, train=False)], encode=TextEncoder(tokenizer), image_tokens=[], bos_id=bos_id(tokenizer)
    )
    assert processor(text)["input_ids"][0].tolist() == expected.input_ids
    assert expected.input_ids[0] == tokenizer.convert_tokens_to_ids("<s>")


def test_every_piece_between_tags_starts_with_bos_as_official(processor) -> None:
    tokenizer = processor.tokenizer
    images = [Image.new("RGB", (336, 336), (0, 0, 0)), Image.new("RGB", (672, 336), (0, 0, 0))]
    text = "<|user|>\n<|image_2|> and <|image_1|><|end|>\n"
    ids = processor(text, images)["input_ids"][0].tolist()
    n1, n2 = num_image_tokens(336, 336, 1), num_image_tokens(672, 336, 1)
    assert (n1, n2) == (313, 313)
    piece = lambda s: tokenizer(s)["input_ids"]  # noqa: E731 - with special tokens, i.e. BOS first
    assert ids == piece("<|user|>\n") + [-2] * n2 + piece(" and ") + [-1] * n1 + piece("<|end|>\n")
    # one source of truth: encode_segments with a BOS-adding encoder gives the same ids when no piece is empty
    same = encode_segments([Segment(text, train=False)], encode=piece, image_tokens=[n1, n2], bos_id=None)
    assert same.input_ids == ids


def test_empty_pieces_still_get_a_bos(processor) -> None:
    bos = processor.tokenizer.bos_token_id
    ids = processor("<|image_1|>", [Image.new("RGB", (10, 10), (0, 0, 0))])["input_ids"][0].tolist()
    assert ids == [bos] + [-1] * 313 + [bos]


def test_bad_tags_are_refused(processor) -> None:
    image = Image.new("RGB", (10, 10), (0, 0, 0))
    with pytest.raises(ValueError, match="must be exactly 1..1"):
        processor("<|image_2|>", [image])
    with pytest.raises(ValueError, match="must be exactly 1..2"):
        processor("<|image_1|>", [image, image])


def test_batch_pads_right_by_default_and_left_on_request(processor) -> None:
    pad = processor.tokenizer.pad_token_id
    texts = ["<|user|>\nhi<|end|>\n", "<|user|>\n<|image_1|>\nwhat is this picture<|end|>\n"]
    images = [None, [Image.new("RGB", (50, 50), (1, 1, 1))]]
    right = processor(texts, images)
    short = len(processor(texts[0])["input_ids"][0])
    assert right["input_ids"].shape[0] == 2
    assert right["attention_mask"][0].tolist() == [1] * short + [0] * (right["input_ids"].shape[1] - short)
    assert (right["input_ids"][0, short:] == pad).all()
    left = processor(texts, images, padding_side="left")
    width = left["input_ids"].shape[1]
    assert left["attention_mask"][0].tolist() == [0] * (width - short) + [1] * short
    assert right["pixel_values"].shape == (1, 2, 3, 336, 336)
    assert right["image_sizes"].tolist() == [[336, 336]]


def test_save_and_load_keep_official_preprocessor_config(processor, tmp_path: Path) -> None:
    processor.save_pretrained(tmp_path)
    settings = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert settings["image_processor_type"] == "Phi3VImageProcessor"
    assert settings["processor_class"] == "Phi3VProcessor"
    assert settings["num_crops"] == processor.image_processor.num_crops
    assert settings["num_img_tokens"] == 144
    again = Phi3VProcessor.from_pretrained(tmp_path, num_crops=16)
    assert again.image_processor.num_crops == 16
    assert again.tokenizer("hello")["input_ids"] == processor.tokenizer("hello")["input_ids"]


def test_reads_an_official_style_preprocessor_config(tiny_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    official = {
        "auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
        "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Phi3VImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "num_crops": 4,
        "num_img_tokens": 144,
        "processor_class": "Phi3VProcessor",
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(official))
    assert Phi3VProcessor.from_pretrained(tmp_path).image_processor.num_crops == 4
    (tmp_path / "preprocessor_config.json").write_text("{\n  oops")
    with pytest.raises(ValueError, match="preprocessor_config.json:2: invalid JSON: "):
        Phi3VProcessor.from_pretrained(tmp_path)


def test_auto_processor_and_chat_template(tiny_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    assert isinstance(processor, Phi3VProcessor)
    messages = [{"role": "user", "content": "<|image_1|>\nWhat is it?"}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|user|>\n<|image_1|>\nWhat is it?<|end|>\n<|assistant|>\n"
    tokenizer = processor.tokenizer
    assert "<|image_1|>" not in tokenizer.get_vocab()
    for token in ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>", "<|image|>", "<s>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.pad_token == "<|endoftext|>"
    decoded = tokenizer.decode(tokenizer("Hello world 42, é!")["input_ids"], skip_special_tokens=True)
    assert decoded == "Hello world 42, é!"


def test_numpy_and_list_outputs(processor) -> None:
    out = processor("hi", return_tensors=None)
    assert isinstance(out["input_ids"], list) and isinstance(out["input_ids"][0], list)
    assert torch.is_tensor(processor("hi")["input_ids"])
