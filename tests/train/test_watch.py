"""Watching a run: --eval-every (val loss + the metrics `phi3v-train eval` computes), --keep-best/--keep-last,
--patience, and resume keeping the best so far.

One run generates for real and is compared with `phi3v-train eval` on its checkpoints; the others script the
validator's numbers, so which step is best (and when patience runs out) is known by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import phi3v_train.validation as validation
from phi3v_train.checkpointing import COMPLETE, best_step, prune
from phi3v_train.cli import main
from phi3v_train.config import ConfigError, load_config
from phi3v_train.evaluate import combine, evaluate
from phi3v_train.train import run
from train_fixtures import COLORS, run_flags, write_dataset


def write_binary_val(root: Path, *, count: int = 6) -> Path:
    """Hateful-Memes-style binary records (yes/no answers, reference.label) over the colour images of write_dataset."""
    records = []
    for index, color in enumerate(list(COLORS)[:count]):
        label = index % 2
        records.append({"id": f"val-{index}", "source": "colors", "task": "binary", "conversations": [{
            "images": [f"train/{color}.png"], "user": f"Is the image {'red' if label else 'blue'}? Answer yes or no.",
            "assistant": "yes" if label else "no", "reference": {"label": label}}]})
    (root / "colors_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _evals(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {row["step"]: row for row in _log(run_dir) if "eval_loss" in row}


def _cli_eval(model: Path, data: Path, out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["eval", "--model", str(model), "--data", str(data), "--split", "val",
                                       "--num-crops", "1", "--batch-size", "2", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())["tasks"]["binary"]


def test_eval_every_numbers_equal_phi3v_train_eval_of_the_checkpoints(tmp_path: Path, tiny_model: Path) -> None:
    data = write_binary_val(write_dataset(tmp_path / "data"), count=4)
    run_dir = tmp_path / "run"
    run(load_config(flags=run_flags(data, tiny_model, run_dir, strategy="lora", lr=1e-2, max_steps=4, eval_every=2,
                                    keep_best="auroc", keep_last=1)))
    evals = _evals(run_dir)
    assert sorted(evals) == [2, 4]
    for row in evals.values():
        assert row["eval_loss"] > 0 and row["eval_auroc"] is not None and {"eval_accuracy", "best_step"} <= set(row)
    best = evals[4]["best_step"]
    assert best in (2, 4) and best_step(run_dir) == best
    assert (run_dir / "best" / "adapter_config.json").is_file() and not (run_dir / "best" / "optimizer.pt").exists()
    # keep_last 1: the last checkpoint, and the best one
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == sorted({f"checkpoint-{best}", "checkpoint-4"})
    last = _cli_eval(run_dir / "checkpoint-4", data, tmp_path / "eval-4")
    assert (last["accuracy"], last["auroc"]) == (evals[4]["eval_accuracy"], evals[4]["eval_auroc"])
    of_best = _cli_eval(run_dir / "best", data, tmp_path / "eval-best")
    assert (of_best["accuracy"], of_best["auroc"]) == (evals[best]["eval_accuracy"], evals[best]["eval_auroc"])
    exported = CliRunner().invoke(main, ["export", "--adapter", str(run_dir / "best"),
                                         "--out", str(tmp_path / "merged")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()


class Scripted:
    """Stands in for Validator.__call__: the next scripted value of the metric at each evaluation."""

    def __init__(self, key: str, values: list[float]) -> None:
        self.key, self.values = key, iter(values)

    def __call__(self, validator: Any, model: Any) -> dict[str, float]:
        value = next(self.values)
        return {"eval_loss": value if self.key == "eval_loss" else 1.0, self.key: value}


def _scripted(monkeypatch: pytest.MonkeyPatch, key: str, values: list[float]) -> None:
    script = Scripted(key, values)
    monkeypatch.setattr(validation.Validator, "__call__", lambda self, model: script(self, model))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_binary_val(write_dataset(tmp_path / "data"))


def test_keep_best_val_loss_prunes_others_and_resume_keeps_the_best(
    tmp_path: Path, data: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    flags = run_flags(data, tiny_model, run_dir, batch_size=4, max_steps=6, eval_every=2, keep_best="val_loss",
                      keep_last=1, tensorboard=True)
    _scripted(monkeypatch, "eval_loss", [3.0, 1.0, 2.0])  # steps 2, 4, 6: the best is step 4 (lowest)
    run(load_config(flags=flags))
    assert {step: row["best_step"] for step, row in _evals(run_dir).items()} == {2: 2, 4: 4, 6: 4}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [(2, 3.0), (4, 1.0), (6, 2.0)]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # 2 pruned
    assert best_step(run_dir) == 4 and (run_dir / "best" / "model.safetensors").is_file()
    state = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert (state["best_global_step"], state["best_metric"]) == (4, 1.0)

    # Resumed and trained on: 1.5 at step 8 is worse than the kept 1.0; a run that forgot it would call 8 the best.
    _scripted(monkeypatch, "eval_loss", [1.5])
    run(load_config(flags={**flags, "max_steps": 8, "resume": "latest"}))
    assert {step: row["best_step"] for step, row in _evals(run_dir).items()} == {2: 2, 4: 4, 6: 4, 8: 4}
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert best_step(run_dir) == 4


def test_patience_stops_after_evaluations_without_improvement_counting_across_resume(
    tmp_path: Path, data: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    flags = run_flags(data, tiny_model, run_dir, batch_size=4, max_steps=3, eval_every=1, keep_best="accuracy",
                      patience=2)
    _scripted(monkeypatch, "eval_accuracy", [0.2, 0.5, 0.5])  # best, best, not better (1 of 2)
    assert run(load_config(flags=flags)).global_step == 3
    # Resumed: 0.4 is the second evaluation without improvement → stop after step 4 (a forgotten count: step 5)
    _scripted(monkeypatch, "eval_accuracy", [0.4, 0.9, 0.9])
    result = run(load_config(flags={**flags, "max_steps": 6, "resume": "latest"}))
    assert result.global_step == 4 and result.status == "finished"
    assert (run_dir / "final" / COMPLETE).read_text().startswith("step 4\n")
    assert {step: row["best_step"] for step, row in _evals(run_dir).items()} == {1: 1, 2: 2, 3: 2, 4: 2}
    assert best_step(run_dir) == 2


def test_prune_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / COMPLETE).write_text(f"step {step}\n")
    doomed = prune(tmp_path, keep=1, best_step=4)
    assert sorted(p.name for p in doomed) == ["checkpoint-2", "checkpoint-6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]


def test_settings_that_need_another(tmp_path: Path) -> None:
    base = {"data": "d", "model": "m", "output": str(tmp_path)}
    with pytest.raises(ConfigError) as caught:
        load_config(flags={**base, "keep_best": "anls", "patience": 3})
    assert caught.value.problems == ["--keep-best anls needs --eval-every N (the steps it is measured at)"]
    with pytest.raises(ConfigError) as caught:
        load_config(flags={**base, "eval_every": 5, "patience": 3})
    assert caught.value.problems == ["--patience 3 needs --keep-best METRIC (the metric that must improve)"]
    assert load_config(flags={**base, "report_to": "wandb, mlflow"}).report_to == ["wandb", "mlflow"]


def test_keep_best_a_metric_no_task_has_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from phi3v_train.train import RunError

    data = write_dataset(tmp_path / "data")
    write_dataset(data, split="val", count=2)  # classification: accuracy only
    with pytest.raises(RunError, match=r"--eval-every: --keep-best anls: no record of the 'val' split has a task "
                                        r"scored by it \(tasks there: classification"):
        run(load_config(flags=run_flags(data, tiny_model, tmp_path / "run", eval_every=2, keep_best="anls")))


def test_zero3_is_refused_before_anything_loads(tmp_path: Path) -> None:
    config = load_config(flags={"data": "d", "model": "m", "output": str(tmp_path), "eval_every": 2})
    zero3 = Path(validation.__file__).with_name("configs") / "zero3.json"
    with pytest.raises(ValueError, match="ZeRO-3"):
        validation.build_validator(config, None, None, deepspeed_json=str(zero3))


def test_slices_scored_together_equal_one_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    import phi3v_train.evaluate as evaluate_module
    from test_evaluate import SCRIPTED_RECORDS, ScriptedGenerator

    monkeypatch.setattr(evaluate_module, "Generator", ScriptedGenerator)
    whole = evaluate(None, None, SCRIPTED_RECORDS, images_root=".", num_crops=1, progress=False)
    parts = [evaluate(None, None, SCRIPTED_RECORDS[start:stop], images_root=".", num_crops=1, progress=False)
             for start, stop in ((0, 3), (3, 3), (3, len(SCRIPTED_RECORDS)))]
    joined = combine(parts)
    assert joined.rows == whole.rows and joined.metrics == whole.metrics
    flat = validation.flat_metrics(whole)
    tasks = whole.metrics["tasks"]
    assert flat["eval_anls"] == tasks["vqa"]["anls"] and flat["eval_auroc"] == tasks["binary"]["auroc"]
    scored = [(tasks[t]["accuracy"], tasks[t]["scored"]) for t in ("binary", "classification", "vqa")]
    assert flat["eval_accuracy"] == pytest.approx(sum(a * n for a, n in scored) / sum(n for _, n in scored))


def test_cli_flags_reach_the_settings(tmp_path: Path) -> None:
    from phi3v_train.cli.run import run as run_command

    import yaml

    result = CliRunner().invoke(run_command, ["--dry-run", "--data", "d", "--model", "m", "--out", str(tmp_path / "r"),
                                              "--eval-every", "50", "--keep-best", "anls", "--patience", "3",
                                              "--report-to", "tensorboard,mlflow"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["eval_every"], saved["keep_best"], saved["patience"], saved["report_to"]) == (
        50, "anls", 3, ["tensorboard", "mlflow"])


def test_validator_on_a_mixture_scores_each_dataset_and_the_loss_per_answer_token(
    tmp_path: Path, tiny_model: Path
) -> None:
    import torch

    from phi3v_train.collator import Collator
    from phi3v_train.model.processing_phi3v import TextEncoder
    from schemas.layout import images_dir
    from phi3v_train.model import Phi3VForCausalLM, Phi3VProcessor, bos_id

    colors = write_dataset(tmp_path / "colors")
    write_dataset(colors, split="val", count=3)
    memes = write_binary_val(write_dataset(tmp_path / "memes"), count=4)
    config = load_config(flags={"data": [str(colors), f"{memes}:0.5"], "model": str(tiny_model),
                                "output": str(tmp_path / "run"), "num_crops": 1, "batch_size": 2, "eval_every": 1,
                                "eval_limit": 2})
    processor = Phi3VProcessor.from_pretrained(tiny_model, num_crops=1)
    collator = Collator(image_processor=processor.image_processor, encode=TextEncoder(processor.tokenizer),
                        bos_id=bos_id(processor.tokenizer), pad_id=processor.tokenizer.pad_token_id,
                        images_root=[images_dir(colors), images_dir(memes)])
    validator = validation.build_validator(config, processor, collator, deepspeed_json=None)
    assert [len(split.records) for split in validator.splits] == [2, 2] and len(validator.samples) == 4
    model = Phi3VForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    metrics = validator(model)
    assert {"eval_colors/accuracy", "eval_memes/accuracy", "eval_memes/auroc"} <= set(metrics)
    assert metrics["eval_auroc"] == metrics["eval_memes/auroc"]  # only one dataset has a binary task
    # the loss over the split equals one batch of all four samples' mean over answer tokens
    batch = collator(list(validator.samples))
    batch.pop("source_ids")
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_cli_refuses_eval_every_without_the_split_before_loading(tmp_path: Path) -> None:
    from phi3v_train.cli.run import run as run_command

    data = write_dataset(tmp_path / "data")  # a train split only
    result = CliRunner().invoke(run_command, ["--data", str(data), "--model", "m", "--out", str(tmp_path / "r"),
                                              "--eval-every", "5"])
    assert result.exit_code == 2
    assert f"--data {data}: no 'val' split for --eval-every (no *_val.jsonl); splits there: train" in result.output


def test_resuming_before_a_newer_best_copies_back_the_best_the_state_knows(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from phi3v_train.checkpointing import CheckpointCallback, mark_complete

    for step in (2, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        for name in ("model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"):
            (tmp_path / f"checkpoint-{step}" / name).write_text(f"{name} {step}")
        mark_complete(tmp_path / f"checkpoint-{step}", step=step)
    (tmp_path / "best").mkdir()
    mark_complete(tmp_path / "best", step=6)  # from steps a resume at checkpoint-2 trains again
    state = SimpleNamespace(best_global_step=2, best_metric=0.75, is_world_process_zero=True)
    CheckpointCallback(tmp_path, keep=1, keep_best=True).on_train_begin(
        SimpleNamespace(metric_for_best_model="eval_accuracy"), state, None)
    assert best_step(tmp_path) == 2
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["COMPLETE", "model.safetensors"]
    assert (tmp_path / "best" / "model.safetensors").read_text() == "model.safetensors 2"
    assert "eval_accuracy 0.75" in (tmp_path / "best" / COMPLETE).read_text()
