"""The fast token counter: the tokenizer's count for every text, a refusal for tokenizers it cannot count exactly,
and a wrong count caught by the spot check and measured again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from phi3v_train import lengths
from phi3v_train.model.processing_phi3v import TextEncoder
from schemas.layout import images_dir
from phi3v_train.model import Phi3VProcessor, bos_id
from phi3v_train.token_count import TokenCounter
from train_fixtures import write_dataset

TRICKY = [
    "", " ", "   ", "  two  spaces", " lead", "trail ", "a\n\nb", "\t tab", "x" * 300, "ünïcode 😀 emoji",
    "日本語のテキスト", "ок привет", "a\u2581b", "\u2581\u2581x", "\u200b zero width",
    "<|user|>\nhi<|end|>\n<|assistant|>\n",
    "<|assistant|> \u3000 \x1c x", "</s>  y", "hi</s>", "<s>x", "<|end|><|end|>", "a<|placeholder1|>\u2003b",
    "<|image|>\n\n", "<<|end|>>", "\nWhat is in the picture?<|end|>\n<|assistant|>\n", "red.<|end|>\n<|endoftext|>",
    "<|endoftext|>", "   <|user|>", "nbsp\u00a0inside", "tabs\t\tand\r\nnewlines",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):  # noqa: F811
    return Phi3VProcessor.from_pretrained(tiny_model, num_crops=1).tokenizer


def test_counts_equal_the_tokenizers_on_tricky_texts(tokenizer) -> None:
    counter = TokenCounter.of(tokenizer)
    assert counter is not None  # the Phi-3.5 tokenizer's shape
    encode = TextEncoder(tokenizer)
    assert [counter(text) for text in TRICKY] == [len(encode(text)) for text in TRICKY]
    assert [counter(text) for text in TRICKY] == [len(encode(text)) for text in TRICKY]  # from the word cache
    assert (counter(""), counter("<|assistant|>\n"), counter("<|end|>\n")) == (0, 1, 2)  # rstrip takes the "\n"


def _variant(tokenizer, change) -> Tokenizer:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    change(spec)
    return Tokenizer.from_str(json.dumps(spec))


def _crossing_merge(spec: dict) -> None:
    """A merge of "e" and "▁t": words cut before "▁" would never make the token "e▁t"."""
    spec["model"]["vocab"]["e▁t"] = 99_999
    spec["model"]["merges"].append(["e", "▁t"])


def test_a_tokenizer_of_another_shape_gets_no_counter(tokenizer) -> None:
    assert TokenCounter.of(_variant(tokenizer, lambda spec: None)) is not None
    changes = {
        "byte-level": lambda spec: spec.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False,
                                                              "trim_offsets": True, "use_regex": True}),
        "crossing merge": _crossing_merge,
        "lstrip token": lambda spec: spec["added_tokens"][3].update(lstrip=True),
        "normalizer": lambda spec: spec.update(normalizer={"type": "Lowercase"}),
        "dropout": lambda spec: spec["model"].update(dropout=0.1),
    }
    refused = {name: TokenCounter.of(_variant(tokenizer, change)) is None for name, change in changes.items()}
    assert refused == dict.fromkeys(changes, True)


def test_a_count_that_is_off_is_caught_and_everything_measured_again(
    tmp_path: Path, tokenizer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data")
    args = dict(images_root=images_dir(data), encode=TextEncoder(tokenizer), bos_id=bos_id(tokenizer), num_crops=1,
                workers=1)
    files = [data / "colors_train.jsonl"]
    right = lengths.measure(files, **args)
    monkeypatch.setattr(TokenCounter, "__call__", lambda self, text: 7)
    from rich.console import Console

    again = lengths.measure(files, console=Console(stderr=True, width=400), **args)
    assert np.array_equal(again.length, right.length) and len(right) == 8
    err = capsys.readouterr().err
    assert "the fast token count is off" in err and "counted 7 tokens, the tokenizer gives" in err
    monkeypatch.setattr(TokenCounter, "of", classmethod(lambda cls, tokenizer: None))  # the tokenizer alone
    assert np.array_equal(lengths.measure(files, **args).length, right.length)
