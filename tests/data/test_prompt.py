import json
from pathlib import Path

import pytest

from phi3v_data.prompt import IGNORE_INDEX, chat_segments, encode_record
from schemas import Record


def _record(turns: list[dict]) -> Record:
    return Record.model_validate({"id": "r", "conversations": turns})


def _chars(text: str) -> list[int]:
    """A stand-in tokenizer: one id per character (ord), so lengths are countable by hand."""
    return [ord(c) for c in text]


def test_images_go_first_without_tags_and_numbering_is_global() -> None:
    record = _record([
        {"images": ["a.jpg", "b.jpg"], "user": "Q1", "assistant": "A1"},
        {"images": ["c.jpg"], "user": "Q2", "assistant": "A2"},
    ])
    assert [(s.text, s.train) for s in chat_segments(record)] == [
        ("<|user|>\n<|image_1|>\n<|image_2|>\nQ1<|end|>\n<|assistant|>\n", False),
        ("A1<|end|>\n", True),
        ("<|user|>\n<|image_3|>\nQ2<|end|>\n<|assistant|>\n", False),
        ("A2<|end|>\n<|endoftext|>", True),
    ]


def test_explicit_tags_are_kept_where_the_user_put_them() -> None:
    record = _record([{"images": ["a.jpg"], "user": "Look: <|image_1|> what?", "assistant": "x"}])
    assert chat_segments(record)[0].text == "<|user|>\nLook: <|image_1|> what?<|end|>\n<|assistant|>\n"


def test_upto_stops_at_the_prompt_of_that_turn() -> None:
    record = _record([
        {"user": "Q1", "assistant": "A1"},
        {"user": "Q2", "assistant": "A2"},
    ])
    assert [s.text for s in chat_segments(record, upto=1)] == [
        "<|user|>\nQ1<|end|>\n<|assistant|>\n",
        "A1<|end|>\n",
        "<|user|>\nQ2<|end|>\n<|assistant|>\n",
    ]


def test_encode_expands_images_and_masks_prompts() -> None:
    record = _record([{"images": ["a.jpg"], "user": "Q", "assistant": "A"}])
    encoded = encode_record(record, encode=_chars, image_tokens=[3], bos_id=1)
    prompt_before = _chars("<|user|>\n")
    prompt_after = _chars("\nQ<|end|>\n<|assistant|>\n")
    answer = _chars("A<|end|>\n<|endoftext|>")
    # BOS starts the text and follows every image, as the official processor's per-chunk tokenization does
    assert encoded.input_ids == [1, *prompt_before, -1, -1, -1, 1, *prompt_after, *answer]
    n_prompt = 1 + len(prompt_before) + 3 + 1 + len(prompt_after)
    assert encoded.labels == [IGNORE_INDEX] * n_prompt + answer
    assert len(encoded) == n_prompt + len(answer)


def test_tag_beyond_the_images_is_an_error() -> None:
    record = _record([{"images": ["a.jpg"], "user": "<|image_1|><|image_2|>", "assistant": "A"}])
    with pytest.raises(ValueError, match="image_2"):
        encode_record(record, encode=_chars, image_tokens=[3])


def test_unlabeled_record_encodes_prompt_only() -> None:
    record = _record([{"user": "Q"}])
    encoded = encode_record(record, encode=_chars, image_tokens=[])
    assert encoded.input_ids == _chars("<|user|>\nQ<|end|>\n<|assistant|>\n")
    assert set(encoded.labels) == {IGNORE_INDEX}


def test_adjacent_images_each_get_a_following_bos() -> None:
    record = _record([{"images": ["a.jpg", "b.jpg"], "user": "<|image_1|><|image_2|>Q", "assistant": "A"}])
    encoded = encode_record(record, encode=_chars, image_tokens=[2, 1], bos_id=1)
    user = _chars("<|user|>\n")
    assert encoded.input_ids[: len(user) + 6] == [1, *user, -1, -1, 1, -2, 1]


def test_every_added_token_of_the_model_is_a_control_look_alike_and_image_tags_are_not() -> None:
    """CONTROL_TEXT_RE must cover the real tokenizer's added tokens, or data could still spell one of them."""
    from phi3v_data.prompt import CONTROL_TEXT_RE

    tokenizer = json.loads((Path(__file__).parents[1] / "fixtures/phi-3.5-vision-instruct/tokenizer.json").read_text())
    added = [token["content"] for token in tokenizer["added_tokens"]]
    assert len(added) == 48 and all(CONTROL_TEXT_RE.fullmatch(token) for token in added)
    assert not CONTROL_TEXT_RE.search("<|image_1|> <|image_12|> a<b> x|y <| end |> <||")
