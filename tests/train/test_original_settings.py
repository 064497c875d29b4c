"""The settings that give the original recipe's optimisation and order: --loss-norm, --decay-exempt, --order.

The original scripts ran transformers 4.4x's Trainer. Its ``training_step`` (4.45) backpropagates
``self.accelerator.backward(loss)`` of each micro-batch's mean loss (the model's ``CrossEntropyLoss`` mean), divided by
the accumulation steps: the mean of micro-batch means. Its decay set (4.45)::

    decay_parameters = get_parameter_names(model, ALL_LAYERNORM_LAYERS)   # ALL_LAYERNORM_LAYERS = [nn.LayerNorm]
    decay_parameters = [name for name in decay_parameters if "bias" not in name]

so Phi-3's RMSNorm weights (not nn.LayerNorm) were decayed.
"""

from __future__ import annotations

import random
import tempfile
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from phi3v_train.config import load_config
from phi3v_train.recipes import all_recipes
from phi3v_train.sampler import LengthGroupedSampler, MixtureSampler
from phi3v_train.trainer import Phi3VTrainer


class _Toy(nn.Module):
    """loss = sum(w * label) / n over label tokens, n = num_items_in_batch when given (as our model divides)."""

    accepts_loss_kwargs = True

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, input_ids, attention_mask, labels, num_items_in_batch=None, **kwargs):  # noqa: ANN001, ARG002
        keep = labels != -100
        total = (self.w * labels.float() * keep).sum()
        return {"loss": total / (num_items_in_batch if num_items_in_batch is not None else keep.sum())}


def _accumulated_grad(loss_norm: str) -> float:
    model = _Toy()
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), gradient_accumulation_steps=2, use_cpu=True,
                             report_to="none", per_device_train_batch_size=1)
    trainer = Phi3VTrainer(model=model, args=args, sampler=LengthGroupedSampler([1], batch_size=1, global_batch_size=1),
                           loss_norm=loss_norm)
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop
    first = {"input_ids": torch.tensor([[5, 5]]), "attention_mask": torch.tensor([[1, 1]]),
             "labels": torch.tensor([[1, 2]])}
    second = {"input_ids": torch.tensor([[5, 5]]), "attention_mask": torch.tensor([[1, 0]]),
              "labels": torch.tensor([[6, -100]])}
    tokens = torch.tensor(3)  # label tokens of the whole accumulated batch, as the Trainer counts them
    for micro_batch in (first, second):
        trainer.training_step(trainer.model, micro_batch, tokens)
    return model.w.grad.item()


def test_loss_norm_tokens_and_micro_batch_gradients_by_hand() -> None:
    # micro-batch 1: labels 1, 2 (2 tokens); micro-batch 2: label 6 (1 token); d loss / d w = sum(labels) / divisor
    assert _accumulated_grad("tokens") == pytest.approx((1 + 2 + 6) / 3)  # 3.0: every token weighs 1/3
    assert _accumulated_grad("micro-batch") == pytest.approx(((1 + 2) / 2 + 6 / 1) / 2)  # 3.75: the original's


def test_equal_answer_lengths_give_the_same_gradient_either_way() -> None:
    def grad(loss_norm: str) -> float:
        model = _Toy()
        args = TrainingArguments(output_dir=tempfile.mkdtemp(), gradient_accumulation_steps=2, use_cpu=True,
                                 report_to="none")
        trainer = Phi3VTrainer(model=model, args=args, sampler=LengthGroupedSampler([1], batch_size=1,
                                                                                    global_batch_size=1),
                               loss_norm=loss_norm)
        trainer.current_gradient_accumulation_steps = 2
        for labels in ([[1, 2]], [[3, 4]]):
            trainer.training_step(trainer.model, {"input_ids": torch.tensor([[5, 5]]),
                                                  "attention_mask": torch.tensor([[1, 1]]),
                                                  "labels": torch.tensor(labels)}, torch.tensor(4))
        return model.w.grad.item()

    assert grad("tokens") == grad("micro-batch") == pytest.approx(10 / 4)


class _Block(nn.Module):
    """Parameter kinds of Phi-3.5-vision: an RMSNorm (not nn.LayerNorm), CLIP's nn.LayerNorm, linears with biases."""

    def __init__(self) -> None:
        super().__init__()

        class Phi3RMSNorm(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.weight = nn.Parameter(torch.ones(2))

        self.input_layernorm = Phi3RMSNorm()
        self.norm = Phi3RMSNorm()
        self.qkv_proj = nn.Linear(2, 2, bias=False)
        self.layer_norm1 = nn.LayerNorm(2)
        self.fc1 = nn.Linear(2, 2)


def _decay_names(exempt: str) -> list[str]:
    trainer = object.__new__(Phi3VTrainer)  # only the method under test: no model, no accelerator
    trainer.decay_exempt = exempt
    return sorted(trainer.get_decay_parameter_names(_Block()))


def test_decay_exempt_layernorm_decays_rmsnorm_weights_as_transformers_4_4x() -> None:
    assert _decay_names("layernorm") == ["fc1.weight", "input_layernorm.weight", "norm.weight", "qkv_proj.weight"]


def test_decay_exempt_norms_is_transformers_5s_set() -> None:
    assert _decay_names("norms") == ["fc1.weight", "qkv_proj.weight"]
    assert _decay_names("norms") == sorted(Trainer.get_decay_parameter_names(SimpleNamespace(), _Block()))


def test_recipes_use_the_originals_decay_set_and_keep_token_normalisation(tmp_path) -> None:
    for recipe in all_recipes():
        config = load_config(flags={"recipe": recipe.name, "data": str(tmp_path), "output": str(tmp_path / "o")})
        assert (config.decay_exempt, config.loss_norm, config.order, config.image_tags) == (
            "layernorm", "tokens", "length", "joined"), recipe.name
        # finetune_hf_trainer_nlvr2.py encodes each turn alone; the other scripts train one turn per sample
        assert config.turns == ("separate" if recipe.dataset == "nlvr2" else "together"), recipe.name
    plain = load_config(flags={"data": str(tmp_path), "model": "m", "output": "o"})
    assert (plain.decay_exempt, plain.loss_norm, plain.order, plain.image_tags, plain.turns) == (
        "norms", "tokens", "length", "lines", "together")


LENGTHS = [10, 80, 20, 70, 30, 60, 40, 50, 90]


def test_file_order_is_the_records_in_file_order_every_epoch() -> None:
    sampler = LengthGroupedSampler(LENGTHS, batch_size=2, global_batch_size=4, seed=7, order="file")
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert list(sampler) == list(range(9))
    assert sampler.batches(0) == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    mixture = MixtureSampler([5, 6, 7, 50], sizes=[3, 1], weights=[1, 1], batch_size=1, global_batch_size=1,
                             order="file")
    drawn = mixture.order(0)  # quotas 2 + 2: 2 of dataset 0's 3 samples (drawn, in file order), dataset 1's one twice
    assert drawn[2:] == [3, 3] and drawn[0] < drawn[1] < 3


def test_random_order_is_a_seeded_reproducible_shuffle_without_grouping() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        return LengthGroupedSampler(LENGTHS, batch_size=2, global_batch_size=4, seed=seed, order="random").order(epoch)

    assert order(3, 0) == order(3, 0) and sorted(order(3, 0)) == list(range(9))
    expected = list(range(9))
    random.Random(3 * 1_000_003 + 0).shuffle(expected)  # one shuffle of the file order per (seed, epoch)
    assert order(3, 0) == expected
    assert order(3, 1) != order(3, 0) and order(4, 0) != order(3, 0)
    grouped = LengthGroupedSampler(LENGTHS, batch_size=2, global_batch_size=4, seed=3).order(0)
    assert grouped[:4] == [8, 1, 3, 5] and order(3, 0)[:4] != grouped[:4]  # not sorted into length groups


def test_unknown_order_is_refused() -> None:
    with pytest.raises(ValueError, match="order must be length, file or random"):
        LengthGroupedSampler(LENGTHS, batch_size=1, global_batch_size=1, order="sorted")  # type: ignore[arg-type]


def test_run_order_setting_reaches_the_sampler(tmp_path) -> None:
    from phi3v_train.train import _sampler

    config = load_config(flags={"data": str(tmp_path), "model": "m", "output": "o", "order": "file"})
    sampler = _sampler(config, SimpleNamespace(lengths=LENGTHS), [SimpleNamespace(kept=9)], global_batch=4)
    assert sampler.order(0) == list(range(9))


def test_eval_and_predict_prompt_a_run_the_way_it_trained(tmp_path) -> None:
    from phi3v_data.prompt import PromptFormat
    from phi3v_train.loading import recorded_prompt_format

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "checkpoint-4").mkdir()
    (run / "config.yaml").write_text("# Resolved configuration\nimage_tags: joined\nturns: separate\nnum_crops: 4\n")
    original = PromptFormat(image_tags="joined", turns="separate")
    assert [recorded_prompt_format(p) for p in (run, run / "final", run / "checkpoint-4")] == [original] * 3
    assert recorded_prompt_format(run / "final", turns="together") == PromptFormat(image_tags="joined")  # a flag wins
    assert recorded_prompt_format(tmp_path / "export") == PromptFormat()  # no run beside it: the defaults
    (run / "config.yaml").write_text("image_tags: [oops\n")
    assert recorded_prompt_format(run / "final") == PromptFormat()
