"""Evaluation: scoring and history with a scripted generator, then real batched generation on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import phi3v_train.evaluate as evaluate_module
from phi3v_train.cli import main
from phi3v_train.evaluate import evaluate, find_split, load_records
from phi3v_train.generate import Generator
from phi3v_train.loading import load_for_inference
from phi3v_train.model import create_tiny_checkpoint
from schemas import Record


def _record(rid: str, task: str, *turns: tuple[str | None, dict | None], images: list[str] | None = None) -> Record:
    conversations = [
        {"images": images or [] if index == 0 else [], "user": f"question {index}", "assistant": answer,
         "reference": reference}
        for index, (answer, reference) in enumerate(turns)
    ]
    return Record.model_validate({"id": rid, "task": task, "conversations": conversations})


# ---- orchestration and scoring, with generation scripted -------------------------------------------------------

SCRIPT = {  # (id, turn) -> (answer, P(yes))
    ("b1", 0): ("Yes.", 0.9),
    ("b2", 0): ("yes", 0.6),
    ("b3", 0): ("no", 0.2),
    ("b4", 0): ("no", 0.6),
    ("v1", 0): ("Hello", 0.1),
    ("v2", 0): ("  paris ", 0.1),
    ("c1", 0): ("kitten", 0.1),
    ("c1", 1): ("dog", 0.1),
    ("u1", 0): ("alpha", 0.1),
    ("u1", 1): ("beta", 0.1),
    ("k1", 0): ("a red square", 0.1),
}


class ScriptedGenerator:
    """Stands in for :class:`Generator`: answers from SCRIPT and remembers the history each prompt carried."""

    histories: dict[tuple[str, int], list[str | None]] = {}
    batch_sizes: list[int] = []

    def __init__(self, model: Any, processor: Any, **_: Any) -> None:
        pass

    def prepare(self, record: Record, *, turn: int) -> SimpleNamespace:
        if record.id == "broken":
            raise ValueError("image missing.png: file does not exist")
        self.histories[(record.id, turn)] = [t.assistant for t in record.conversations[:turn]]
        return SimpleNamespace(key=(record.id, turn), input_ids=[0] * (turn + 1))

    def load_images(self, prepared: SimpleNamespace) -> list[Image.Image]:
        return []

    def generate(self, batch: list[SimpleNamespace], images: list[list[Image.Image]]) -> list[tuple[str, float]]:
        self.batch_sizes.append(len(batch))
        return [SCRIPT[item.key] for item in batch]


SCRIPTED_RECORDS = [
    _record("b1", "binary", ("yes", {"label": 1})),
    _record("b2", "binary", ("no", {"label": 0})),
    _record("b3", "binary", ("no", None)),
    _record("b4", "binary", ("yes", None)),
    _record("v1", "vqa", ("helo", {"answers": ["hello world", "helo"]})),
    _record("v2", "vqa", ("Paris", {"answers": ["Paris"]})),
    _record("c1", "classification", ("cat", None), ("dog", None)),
    _record("u1", "classification", (None, None), (None, None)),
    _record("k1", "caption", ("a red box", None)),
    _record("broken", "vqa", ("x", None)),
]


def test_scripted_evaluation_scores_by_task(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(evaluate_module, "Generator", ScriptedGenerator)
    result = evaluate(None, None, SCRIPTED_RECORDS, images_root=tmp_path, num_crops=4, batch_size=4,
                      output_dir=tmp_path, progress=False)
    # binary AUROC: positives {0.9, 0.6} vs negatives {0.6, 0.2} -> (1 + 1 + 0.5 + 1) / 4
    assert result.metrics["tasks"] == {
        "binary": {"turns": 4, "scored": 4, "accuracy": 0.5, "auroc": 0.875},
        "caption": {"turns": 1, "scored": 0},
        "classification": {"turns": 4, "scored": 2, "accuracy": 0.5},
        "vqa": {"turns": 2, "scored": 2, "accuracy": 0.5, "anls": pytest.approx(0.9)},
    }
    assert (result.metrics["records"], result.metrics["turns"], result.metrics["failed"]) == (10, 12, 1)
    assert json.loads((tmp_path / "metrics.json").read_text())["tasks"]["binary"]["auroc"] == 0.875
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert rows == result.rows
    assert [(row["id"], row["turn"]) for row in rows] == [
        ("b1", 0), ("b2", 0), ("b3", 0), ("b4", 0), ("v1", 0), ("v2", 0), ("c1", 0), ("c1", 1), ("u1", 0), ("u1", 1),
        ("k1", 0), ("broken", 0),
    ]  # record order, then turn: the broken record fails its only turn
    by_key = {(row["id"], row["turn"]): row for row in rows}
    assert by_key[("b1", 0)] == {"id": "b1", "turn": 0, "task": "binary", "prediction": "Yes.", "references": ["yes"],
                                  "correct": True, "label": 1, "p_yes": 0.9}
    assert by_key[("v1", 0)] == {"id": "v1", "turn": 0, "task": "vqa", "prediction": "Hello",
                                  "references": ["helo", "hello world"], "correct": False, "anls": pytest.approx(0.8)}
    assert by_key[("u1", 1)] == {"id": "u1", "turn": 1, "task": "classification", "prediction": "beta",
                                 "references": []}
    assert by_key[("k1", 0)] == {"id": "k1", "turn": 0, "task": "caption", "prediction": "a red square",
                                  "references": ["a red box"]}
    assert by_key[("broken", 0)] == {"id": "broken", "turn": 0, "task": "vqa",
                                     "error": "image missing.png: file does not exist"}


def test_multi_turn_history_is_reference_or_own_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(evaluate_module, "Generator", ScriptedGenerator)
    ScriptedGenerator.histories.clear()
    evaluate(None, None, SCRIPTED_RECORDS, images_root=tmp_path, num_crops=4, progress=False)
    assert ScriptedGenerator.histories[("c1", 1)] == ["cat"]  # labeled: the reference, not the prediction "kitten"
    assert ScriptedGenerator.histories[("u1", 1)] == ["alpha"]  # unlabeled: the model's own first answer


def test_evaluate_datasets_writes_one_dataset_in_place_and_a_mixture_by_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The one function eval and a run's --eval-after share: one dataset in OUTPUT/, a mixture in OUTPUT/<name>/
    (also when only one of its datasets has the split), with OUTPUT/metrics.json by dataset."""
    from phi3v_train.evaluate import evaluate_datasets, results_table

    monkeypatch.setattr(evaluate_module, "Generator", ScriptedGenerator)
    binary, vqa = SCRIPTED_RECORDS[:4], SCRIPTED_RECORDS[4:6]
    single = evaluate_datasets(None, None, {"memes": (binary, tmp_path)}, output_dir=tmp_path / "one",
                               meta={"when": "after"}, dataset_meta={"memes": {"skipped_lines": 2}}, num_crops=4,
                               progress=False)
    written = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert (list(single), written["when"], written["skipped_lines"], written["tasks"]["binary"]["auroc"]) == (
        ["memes"], "after", 2, 0.875)
    assert "dataset" not in written and sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "metrics.json", "predictions.jsonl"]
    assert [c.header for c in results_table(single).columns][0] == "task"

    lone = evaluate_datasets(None, None, {"memes": (binary, tmp_path)}, output_dir=tmp_path / "lone", mixture=True,
                             meta={"when": "after"}, num_crops=4, progress=False)
    assert json.loads((tmp_path / "lone" / "memes" / "metrics.json").read_text())["dataset"] == "memes"
    assert list(json.loads((tmp_path / "lone" / "metrics.json").read_text())["datasets"]) == ["memes"]
    assert [c.header for c in results_table(lone, mixture=True).columns][:2] == ["dataset", "task"]

    mixed = evaluate_datasets(None, None, {"memes": (binary, tmp_path), "docvqa": (vqa, tmp_path)},
                              output_dir=tmp_path / "mix", meta={"when": "after"}, num_crops=4, progress=False)
    by_dataset = json.loads((tmp_path / "mix" / "metrics.json").read_text())
    assert (by_dataset["when"], list(by_dataset["datasets"])) == ("after", ["memes", "docvqa"])
    assert by_dataset["datasets"]["docvqa"]["tasks"]["vqa"]["accuracy"] == 0.5
    assert len(results_table(mixed).rows) == 2  # one row per dataset and task
    assert mixed["memes"].metrics["tasks"] == single["memes"].metrics["tasks"]


def test_batches_never_exceed_batch_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(evaluate_module, "Generator", ScriptedGenerator)
    ScriptedGenerator.batch_sizes.clear()
    evaluate(None, None, SCRIPTED_RECORDS, images_root=tmp_path, num_crops=4, batch_size=3, progress=False)
    assert ScriptedGenerator.batch_sizes == [3, 3, 3, 2]  # round 0: 9 answerable turns, round 1: c1 and u1


# ---- real generation on the tiny model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny", num_crops=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "images" / "val").mkdir(parents=True)
    Image.new("RGB", (500, 300), (220, 20, 20)).save(root / "images" / "val" / "red.png")
    Image.new("RGB", (120, 400), (20, 20, 220)).save(root / "images" / "val" / "blue.png")
    records = [
        _record("r1", "binary", ("yes", {"label": 1}), images=["val/red.png"]),
        _record("r2", "binary", ("no", {"label": 0}), images=["val/blue.png"]),
        _record("r3", "vqa", ("red", {"answers": ["red", "crimson"]}), images=["val/red.png"]),
        _record("r4", "classification", ("cat", None), ("dog", None), images=["val/blue.png", "val/red.png"]),
        _record("r5", "classification", (None, None), (None, None), images=["val/red.png"]),
        _record("r6", "chat", ("hello", None)),
    ]
    lines = [record.model_dump_json(exclude_none=True) for record in records]
    (root / "tiny_val.jsonl").write_text(
        "\n".join(lines[:2] + ['{"id": "bad", "conversations": []}'] + lines[2:]) + "\n")
    return root


@pytest.fixture(scope="module")
def loaded(tiny: Path) -> tuple[Any, Any]:
    return load_for_inference(tiny)


def _records(dataset: Path) -> list[Record]:
    files, _ = find_split(dataset, "val")
    return load_records(files)


def test_batched_generation_equals_one_by_one(dataset: Path, loaded: tuple[Any, Any]) -> None:
    model, processor = loaded
    records = _records(dataset)
    batched = evaluate(model, processor, records, images_root=dataset / "images", num_crops=2, batch_size=8,
                       max_new_tokens=6, progress=False)
    single = evaluate(model, processor, records, images_root=dataset / "images", num_crops=2, batch_size=1,
                      max_new_tokens=6, progress=False)
    assert [row["prediction"] for row in batched.rows] == [row["prediction"] for row in single.rows]
    for many, one in zip(batched.rows, single.rows):
        assert many.keys() == one.keys()
        if "p_yes" in many:
            assert many["p_yes"] == pytest.approx(one["p_yes"], abs=1e-5)
    assert [(row["id"], row["turn"]) for row in batched.rows] == [
        ("r1", 0), ("r2", 0), ("r3", 0), ("r4", 0), ("r4", 1), ("r5", 0), ("r5", 1), ("r6", 0)
    ]
    assert batched.metrics["failed"] == 0
    assert set(batched.metrics["tasks"]) == {"binary", "vqa", "classification", "chat"}
    assert batched.metrics["tasks"]["classification"]["scored"] == 2  # r4's two turns; r5 is unlabeled


def test_p_yes_is_the_first_answer_position_of_a_forward_pass(dataset: Path, loaded: tuple[Any, Any]) -> None:
    model, processor = loaded
    record = _records(dataset)[0]
    result = evaluate(model, processor, [record], images_root=dataset / "images", num_crops=2, max_new_tokens=1,
                      progress=False)
    generator = Generator(model, processor, images_root=dataset / "images", num_crops=2, max_new_tokens=1)
    prepared = generator.prepare(record, turn=0)
    assert prepared.image_tokens == [processor.image_processor.calc_num_image_tokens_from_image_size(500, 300)]
    inputs = generator._inputs([prepared], generator.load_images(prepared))
    with torch.no_grad():
        last = model(**inputs).logits[0, -1]
    yes, no = processor.tokenizer("yes no", add_special_tokens=False)["input_ids"]
    expected = torch.softmax(last[[yes, no]], dim=-1)[0].item()
    assert result.rows[0]["p_yes"] == pytest.approx(expected, abs=1e-6)
    assert result.rows[0]["prediction"] == generator._decode([int(last.argmax())])


def test_unusable_turns_become_error_rows(dataset: Path, loaded: tuple[Any, Any], tmp_path: Path) -> None:
    model, processor = loaded
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (tmp_path / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    records = [
        _record("gone", "vqa", ("x", None), images=["missing.png"]),
        _record("escape", "vqa", ("x", None), images=["link.png"]),
    ]
    result = evaluate(model, processor, records, images_root=tmp_path / "images", num_crops=2, progress=False)
    assert [row["error"] for row in result.rows] == [
        "image missing.png: file does not exist",
        f"link.png is a symlink to a file outside the dataset ({tmp_path / 'outside.png'}); not read",
    ]
    too_long = evaluate(model, processor, _records(dataset)[:1], images_root=dataset / "images", num_crops=2,
                        max_new_tokens=131072, progress=False)
    assert "new ones exceeds the model's 131072 positions" in too_long.rows[0]["error"]
    assert too_long.metrics["failed"] == 1 and too_long.metrics["tasks"] == {}


def test_cli_eval_writes_outputs_and_reports_bad_lines(tiny: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny), "--data", str(dataset), "--split", "val",
                                       "--batch-size", "4", "--max-new-tokens", "4", "--output", str(out), "-q"])
    assert result.exit_code == 1, result.output  # the bad line is a problem worth a non-zero exit
    assert "tiny_val.jsonl:3: conversations: List should have at least 1 item" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["records"], metrics["turns"], metrics["skipped_lines"]) == (6, 8, 1)
    assert metrics["settings"] == {"num_crops": 2, "batch_size": 4, "max_new_tokens": 4, "image_tags": "lines",
                                   "turns": "together"}
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8


def test_cli_eval_on_an_adapter_run_with_limit(tiny: Path, dataset: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from phi3v_train.model import Phi3VForCausalLM, Phi3VProcessor

    adapter = peft.get_peft_model(Phi3VForCausalLM.from_pretrained(str(tiny)),
                                  peft.LoraConfig(r=2, target_modules=["qkv_proj"]))
    adapter.save_pretrained(str(tmp_path / "run" / "final"))
    Phi3VProcessor.from_pretrained(str(tiny)).save_pretrained(tmp_path / "run" / "final")
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["eval", "--model", str(tmp_path / "run"),
                                       "--data", str(dataset / "tiny_val.jsonl"), "--limit", "2",
                                       "--max-new-tokens", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "binary" in result.output  # the table
    assert [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()] == ["r1", "r2"]


def test_cli_eval_unknown_split_is_a_usage_error(tiny: Path, dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny), "--data", str(dataset), "--split", "test",
                                       "--output", str(tmp_path / "eval")])
    assert result.exit_code == 2
    assert "no *_test.jsonl file (found: tiny_val.jsonl)" in result.output


def test_cli_eval_takes_a_runs_weighted_data_and_ignores_the_weight(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()  # no model: the command stops right after reading --data
    common = ["eval", "--model", str(tmp_path / "empty"), "--output", str(tmp_path / "eval")]
    args = [*common, "--data", f"{dataset}:0.7"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert f"note: --data {dataset}:0.7: eval scores each dataset on its own; weight 0.7 ignored" in result.output
    assert "neither config.json (a full checkpoint)" in result.output  # got past --data to the model
    twice = CliRunner().invoke(main, [*args, "--data", str(dataset)])
    assert twice.exit_code == 2 and "the same dataset was given twice" in twice.output
    missing = CliRunner().invoke(main, [*common, "--data", f"{tmp_path / 'nowhere'}:0.7"])
    assert missing.exit_code == 2 and f"'{tmp_path / 'nowhere'}' does not exist" in missing.output
    zero = CliRunner().invoke(main, [*common, "--data", f"{tmp_path / 'nowhere'}:0"])
    assert zero.exit_code == 2 and "the weight after ':' must be > 0 (got 0)" in zero.output


def test_cli_eval_on_a_directory_that_is_no_model(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["eval", "--model", str(tmp_path / "empty"), "--data", str(dataset),
                                       "--output", str(tmp_path / "eval")])
    assert result.exit_code == 1
    assert "neither config.json (a full checkpoint) nor adapter_config.json (a LoRA adapter)" in result.output
