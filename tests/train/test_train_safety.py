"""Training under hostile or careless input: nothing lost, and a run never dies on data that passed its checks.

Each test builds its hostile fixture itself: a truncated PNG, a 10000x1 image, a lone surrogate, a YAML alias bomb,
an export pointed at its own run directory, a finished run resumed, a run killed during its final save.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load, load_file

from phi3v_train.checkpointing import COMPLETE, final_step, list_checkpoints
from phi3v_train.cli.export import export
from phi3v_train.cli.run import run as run_command
from phi3v_train.collator import SKIPPED_KEY, Collator
from phi3v_train.model.processing_phi3v import TextEncoder
from phi3v_train.config import ConfigError, load_config
from phi3v_train.dataset import load_split
from phi3v_train.model import Phi3VProcessor, bos_id
from phi3v_train.train import RunError, run
from train_fixtures import run_flags, write_dataset


def _record(rid: str, image: str, text: str = "What color is the image?") -> dict:
    return {"id": rid, "source": "colors", "task": "classification",
            "conversations": [{"images": [image], "user": text, "assistant": "red"}]}


def _truncated_png(path: Path) -> None:
    """A PNG whose header (and size) reads fine but whose pixel data stops halfway."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _hostile(root: Path, kind: str) -> Path:
    """The 8 colour records + one hostile record on line 9."""
    images = root / "images" / "train"
    images.mkdir(parents=True)
    if kind == "truncated":
        _truncated_png(images / "bad.png")
        extra = _record("bad", "train/bad.png")
    elif kind == "wide":
        Image.new("RGB", (10000, 1), (200, 10, 10)).save(images / "bad.png")
        extra = _record("bad", "train/bad.png")
    else:  # a lone surrogate: valid JSON escape, not encodable text
        Image.new("RGB", (20, 20), (200, 10, 10)).save(images / "bad.png")
        extra = _record("bad", "train/bad.png", text="What \udcff color?")
    return write_dataset(root, extra=[extra])  # json.dumps writes the surrogate as the escape \udcff


# --- 3. data that would have killed the run mid-way -------------------------------------------------------------


@pytest.mark.parametrize(("kind", "why"), [
    ("truncated", "colors_train.jsonl:9 conversations[0].images[0]: does not decode: image file is truncated"),
    ("wide", "colors_train.jsonl:9: train/bad.png: 10000x1 is too elongated for --num-crops 1"),
    ("surrogate", "colors_train.jsonl:9: invalid JSON text"),
])
def test_preflight_refuses_what_the_loader_would_choke_on_by_line(
    tmp_path: Path, tiny_model: Path, kind: str, why: str,
) -> None:
    data = _hostile(tmp_path / "data", kind)
    with pytest.raises(RunError) as caught:
        run(load_config(flags=run_flags(data, tiny_model, tmp_path / "run")))
    assert why in str(caught.value)
    assert not list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "final").exists()


@pytest.fixture(scope="module")
def processor(tiny_model: Path) -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(tiny_model, num_crops=1)


def test_collator_stands_in_for_an_image_that_no_longer_decodes(tmp_path: Path, processor: Phi3VProcessor) -> None:
    data = write_dataset(tmp_path / "data", count=2)
    dataset, _ = load_split(data, "train", encode=TextEncoder(processor.tokenizer), bos_id=bos_id(processor.tokenizer),
                            num_crops=1, max_length=100_000)
    collate = Collator(image_processor=processor.image_processor, encode=TextEncoder(processor.tokenizer),
                       bos_id=bos_id(processor.tokenizer), pad_id=processor.tokenizer.pad_token_id,
                       images_root=data / "images")
    good = collate(dataset.samples)
    assert SKIPPED_KEY not in good
    _truncated_png(data / "images" / dataset.samples[1].record.images[0])  # replaced after measuring: same file name
    batch = collate(dataset.samples)
    assert int(batch[SKIPPED_KEY]) == 1
    assert batch["input_ids"].shape == good["input_ids"].shape  # same measured length, so the sampler still holds
    assert (torch.equal(batch["input_ids"], good["input_ids"])
            and batch["pixel_values"].shape == good["pixel_values"].shape)
    assert torch.equal(batch["labels"][0], good["labels"][0])
    assert (batch["labels"][1] == -100).all()  # the stand-in teaches nothing


def test_run_without_preflight_skips_and_counts_bad_samples_and_finishes(tmp_path: Path, tiny_model: Path) -> None:
    data = _hostile(tmp_path / "data", "truncated")
    (data / "images" / "train" / "wide.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (10000, 1)).save(data / "images" / "train" / "wide.png")
    with (data / "colors_train.jsonl").open("a") as handle:  # line 10: too elongated, line 11: a lone surrogate
        handle.write(json.dumps(_record("wide", "train/wide.png")) + "\n")
        handle.write(json.dumps(_record("odd", "train/green.png", text="a \udcff b")) + "\n")
    # 9 trainable samples (the truncated one among them), batch 1: one epoch is 9 steps, each sample drawn once.
    flags = run_flags(data, tiny_model, tmp_path / "run", preflight=False, batch_size=1, max_steps=None, epochs=1)
    result = run(load_config(flags=flags))
    assert (result.status, result.global_step, result.skipped_samples) == ("finished", 9, 1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 10))
    assert sum(row["skipped_samples"] for row in rows) == 1
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)  # the stand-in's step: loss 0, not 0/0
    assert (tmp_path / "run" / "final" / COMPLETE).is_file()


# --- 2. resuming a finished run, or one killed during its final save ----------------------------------------------


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_is_a_no_op_and_a_killed_final_save_is_finished(
    tmp_path: Path, tiny_model: Path,
) -> None:
    data = write_dataset(tmp_path / "data", count=4)
    run_dir = tmp_path / "run"
    flags = run_flags(data, tiny_model, run_dir, strategy="lora", max_steps=3, batch_size=1)
    first = run(load_config(flags=flags))
    assert (first.status, first.global_step, final_step(run_dir)) == ("finished", 3, 3)
    final_files, log = _files(run_dir / "final"), (run_dir / "log.jsonl").read_text()

    again = CliRunner().invoke(run_command, ["--config", str(run_dir / "config.yaml"), "--resume", "latest"])
    assert again.exit_code == 0, again.output
    assert "nothing to do: the run already finished at step 3" in again.output
    assert _files(run_dir / "final") == final_files and (run_dir / "log.jsonl").read_text() == log
    assert [c.step for c in list_checkpoints(run_dir)] == [3]

    # Killed during the final save: the staging directory half written, final/ gone (rmtree done, rename not yet).
    shutil.rmtree(run_dir / "final")
    (run_dir / ".final.tmp").mkdir()
    (run_dir / ".final.tmp" / "adapter_config.json").write_text("{")
    resumed = run(load_config(run_dir / "config.yaml", flags={"resume": "latest"}))
    assert (resumed.status, resumed.global_step, resumed.already_finished) == ("finished", 3, False)
    assert final_step(run_dir) == 3 and not (run_dir / ".final.tmp").exists()
    assert (run_dir / "log.jsonl").read_text() == log  # no step trained
    assert [c.step for c in list_checkpoints(run_dir)] == [3]
    assert sorted(_files(run_dir / "final")) == sorted(final_files)
    before, after = (load(final_files["adapter_model.safetensors"]),
                     load_file(run_dir / "final" / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # final/ left from an earlier, shorter finish is not mistaken for this run's end.
    (run_dir / "final" / COMPLETE).write_text("step 2\n")
    assert run(load_config(run_dir / "config.yaml", flags={"resume": "latest"})).already_finished is False
    assert final_step(run_dir) == 3


# --- 1. export never replaces what it reads ------------------------------------------------------------------------


def test_export_refuses_an_out_that_is_or_holds_an_input(tmp_path: Path) -> None:
    run_dir, base = tmp_path / "run", tmp_path / "base"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "checkpoint-12").mkdir()
    base.mkdir()
    (base / "config.json").write_text("{}")
    (run_dir / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cases = [
        (["--adapter", str(run_dir / "final"), "--out", str(run_dir), "--overwrite"],
         f"--out {run_dir} contains the --adapter directory {run_dir / 'final'}"),
        (["--adapter", str(run_dir / "final"), "--out", str(run_dir / "final"), "--overwrite"],
         f"--out {run_dir / 'final'} is the --adapter directory"),
        (["--adapter", str(run_dir), "--out", str(run_dir), "--overwrite"],
         f"--out {run_dir} is the --adapter directory"),
        (["--adapter", str(run_dir / "final"), "--out", str(base), "--overwrite"],
         f"--out {base} is the base model directory {base}"),
        (["--adapter", str(run_dir / "final"), "--out", str(tmp_path), "--overwrite"],
         f"--out {tmp_path} contains the"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(export, args)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_export_refuses_an_out_inside_what_it_reads_and_allows_one_inside_the_run_dir(tmp_path: Path) -> None:
    from phi3v_train.cli.export import _refuse_overlap

    run_dir, base = tmp_path / "run", tmp_path / "base"
    (run_dir / "final").mkdir(parents=True)
    base.mkdir()
    (base / "config.json").write_text("{}")
    (run_dir / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    for args, message in (
        (["--adapter", str(run_dir / "final"), "--out", str(run_dir / "final" / "merged")],
         f"--out {run_dir / 'final' / 'merged'} is inside the adapter directory {run_dir / 'final'}"),
        (["--adapter", str(run_dir), "--out", str(base / "merged")], "is inside the base model directory"),
    ):
        result = CliRunner().invoke(export, args)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
    _refuse_overlap(run_dir / "merged", adapter=run_dir, base=None)  # RUN/merged beside RUN/final: fine
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["adapter_config.json", "base", "config.json", "final", "run"]


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_never_write_over_or_into_the_data_or_the_model(tmp_path: Path, command: str) -> None:
    from phi3v_train.cli import main as train_main

    data = write_dataset(tmp_path / "data" / "colors", split="val")
    model = _model_dir(tmp_path / "run" / "final")
    split = data / "colors_val.jsonl"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    predict = command == "predict"
    cases = [
        ((split, f"--out {split} is the split file {split}") if predict
         else (data, f"--out {data} contains the split file")),
        (data / "preds.jsonl" if predict else data / "eval", "is inside --data"),
        (data / "images" / "p.jsonl", "is inside --data"),
        (model / "p.jsonl" if predict else model / "eval", f"is inside the checkpoint {model}"),
    ]
    if not predict:  # a file --out contains nothing (and click refuses a directory for predict)
        cases.append((tmp_path / "run", "contains the checkpoint"))
    for out, message in cases:
        argv = [command, "--model", str(tmp_path / "run"), "--data", str(data), "--split", "val", "--out", str(out)]
        result = CliRunner().invoke(train_main, argv)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_run_dir_given_as_model_may_hold_the_eval_output_but_not_be_it(tmp_path: Path) -> None:
    from phi3v_data.io import OutputOverlapError, check_output_apart
    from phi3v_train.cli.inputs import model_inputs

    run_dir = tmp_path / "run"
    final = _model_dir(run_dir / "final")
    inputs, may_hold = model_inputs(run_dir, None)
    assert (inputs, may_hold) == ([("the checkpoint", final)], [("--model", run_dir)])
    check_output_apart(run_dir / "eval", inputs, may_hold=may_hold)  # what `run --eval-after` writes itself
    with pytest.raises(OutputOverlapError, match=f"--out {run_dir} is --model {run_dir}"):
        check_output_apart(run_dir, [], may_hold=may_hold)
    assert model_inputs("microsoft/Phi-3.5-vision-instruct", None) == ([], [])  # a Hub id is no local input


# --- 4. YAML configs -------------------------------------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly_and_errors_never_echo_the_file(tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")  # 9^9 ≈ 387 million strings once expanded
    with pytest.raises(ConfigError) as caught:
        load_config(bomb)
    assert str(caught.value) == (f"--config {bomb}: refused: its aliases expand to more than 100,000 values "
                                 "(an alias bomb?)")

    loop = tmp_path / "loop.yaml"
    loop.write_text("data: &d [1, *d]\n")
    with pytest.raises(ConfigError, match="refers to a node that contains it"):
        load_config(loop)

    shared = tmp_path / "shared.yaml"  # an honest anchor still works
    shared.write_text("data: d\nmodel: m\noutput: o\nseed: &s 3\nlog_every: *s\n")
    assert (load_config(shared).seed, load_config(shared).log_every) == (3, 3)

    long = tmp_path / "long.yaml"  # a wrong value is quoted, clipped, not echoed whole
    long.write_text(f"data: d\nmodel: m\noutput: o\nseed: {'x' * 50_000}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(long)
    assert len(str(caught.value)) < 400 and "(50,002 characters)" in str(caught.value)
