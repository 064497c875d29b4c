"""The single homes of issue 23: process helpers without a process group, the model-part rule, the text encoder,
the inference loader's refusal and the CLI's load-failure messages."""

from __future__ import annotations

import pickle
from pathlib import Path

import click
import pytest
import torch

from phi3v_train import distributed
from phi3v_train.parts import part_of


def test_one_process_is_rank_0_of_1_and_every_collective_is_its_own_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.world(), distributed.is_main(), distributed.is_distributed()) == ((0, 1), True, False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")  # before the process group exists: what the launcher announces
    assert (distributed.world(), distributed.is_main()) == ((3, 4), False)
    distributed.barrier()  # no group: returns at once
    counts = torch.tensor([1.0, 2.0], dtype=torch.float64)
    summed = distributed.sum_over_ranks(counts)
    counts.zero_()  # a copy came back: the trainer zeroes its counters after reading them
    assert summed.tolist() == [1.0, 2.0]
    assert distributed.count_over_ranks(5) == 5
    assert distributed.gather_over_ranks({"rows": 1}) == [{"rows": 1}]
    assert (distributed.any_rank(True), distributed.any_rank(False)) == (True, False)
    assert distributed.all_finite(torch.tensor(1.5)) is True
    assert distributed.all_finite(torch.tensor(float("nan"))) is False
    assert distributed.all_finite(torch.tensor([1.0, float("inf")])) is False


def test_part_of_reads_plain_and_peft_prefixed_names_and_flops_counts_by_it() -> None:
    from phi3v_train.flops import LM_PART, PROJECTOR_PART, VISION_PART, count_params

    assert [part_of(name) for name in (
        "model.vision_embed_tokens.img_processor.vision_model.embeddings.patch_embedding.weight",
        "base_model.model.model.vision_embed_tokens.img_projection.0.lora_A.default.weight",
        "model.vision_embed_tokens.glb_GN",
        "model.vision_embed_tokens.sub_GN",
        "model.embed_tokens.weight",
        "lm_head.weight",
    )] == ["vision", "projector", "projector", "projector", "language", "language"]

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_embed_tokens = torch.nn.Module()
            self.vision_embed_tokens.img_processor = torch.nn.Linear(2, 3)  # 9 parameters
            self.vision_embed_tokens.img_projection = torch.nn.Linear(3, 1)  # 4
            self.embed_tokens = torch.nn.Embedding(10, 2)  # a lookup: not counted
            self.lm_head = torch.nn.Linear(2, 5, bias=False)  # 10

    assert count_params(Tiny()) == {VISION_PART: 9, PROJECTOR_PART: 4, LM_PART: 10}


def test_text_encoding_is_the_encoder_without_special_tokens_and_the_bos_the_processor_adds() -> None:
    from phi3v_train.model import Phi3VProcessor, TextEncoder, bos_id, text_encoding

    fixture = Path(__file__).parents[1] / "fixtures" / "phi-3.5-vision-instruct"
    tokenizer = Phi3VProcessor.from_pretrained(fixture).tokenizer
    encode, bos = text_encoding(tokenizer)
    assert isinstance(encode, TextEncoder) and bos == bos_id(tokenizer) == tokenizer.bos_token_id == 1
    assert encode("yes") == tokenizer("yes", add_special_tokens=False)["input_ids"] and encode("yes")[0] != bos
    assert encode.batch(["yes", "no"]) == [encode("yes"), encode("no")] and encode.batch([]) == []
    assert pickle.loads(pickle.dumps(encode))("no") == encode("no")  # data loader workers unpickle it


def test_the_inference_loader_names_a_path_that_is_neither_a_directory_nor_a_hub_id(tmp_path: Path) -> None:
    from phi3v_train.loading import LoadError, load_for_inference

    with pytest.raises(LoadError) as caught:
        load_for_inference(tmp_path / "nope")
    assert str(caught.value) == f"{tmp_path / 'nope'}: no such model directory, and not a Hub id (org/name)"


def test_load_failures_turn_known_and_weights_errors_into_one_message_and_let_bugs_through() -> None:
    from phi3v_train.cli.inputs import load_failures
    from phi3v_train.loading import LoadError

    with pytest.raises(click.ClickException) as known:
        with load_failures("--model m", LoadError):
            raise LoadError("m/config.json: not a checkpoint")
    assert known.value.message == "m/config.json: not a checkpoint"
    with pytest.raises(click.ClickException) as weights:
        with load_failures("--model m", LoadError):
            raise RuntimeError("loading failed") from pickle.UnpicklingError("Weights only load failed")
    assert weights.value.message == (
        "--model m: a pickled weights file (.bin/.pt) holds Python objects besides tensors, and loading it could run "
        "arbitrary code, so it is refused; convert it to safetensors from a trusted environment")
    with pytest.raises(KeyError):
        with load_failures("--model m", LoadError):
            raise KeyError("a bug")
