"""The one output rule (phi3v_data.io.check_output_apart / check_output_name) in every phi3v-data command that writes:
an output never is, contains or lies inside an input, and a --name never leaves its folder. Each case builds the
mistake, asserts exit 2 with the one-line message, and that every input is byte for byte as before."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data.cli import main
from phi3v_data.io import OutputOverlapError, check_output_apart, check_output_name


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dataset(root: Path) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "images" / "val" / "a.png")
    record = {"id": "a", "conversations": [{"images": ["val/a.png"], "user": "Colour?", "assistant": "red"}]}
    path = root / "x_val.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def _said(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines


# -- the rule itself ---------------------------------------------------------------------------------------------


def test_equal_containing_and_inside_are_refused_beside_is_allowed(tmp_path: Path) -> None:
    data = tmp_path / "data" / "x"
    split = _dataset(data)
    cases = {
        split: f"--out {split} is --data {split}; writing there would replace it: choose another path",
        tmp_path / "data":
            f"--out {tmp_path / 'data'} contains --data {split}; writing there could replace or delete it",
        data / "preds.jsonl": f"--out {data / 'preds.jsonl'} is inside --data {data}; the output would mix into",
    }
    for out, message in cases.items():
        inputs = [("--data", split if out == split or out == tmp_path / "data" else data)]
        with pytest.raises(OutputOverlapError) as caught:
            check_output_apart(out, inputs)
        assert str(caught.value).startswith(message)
    check_output_apart(tmp_path / "preds.jsonl", [("--data", data)])  # beside: fine
    check_output_apart(data / "eval", [], may_hold=[("--model", data)])  # a run dir may hold RUN/eval
    with pytest.raises(OutputOverlapError, match="is --model"):
        check_output_apart(data, [], may_hold=[("--model", data)])


def test_a_symlink_or_hard_link_to_an_input_is_the_input(tmp_path: Path) -> None:
    split = _dataset(tmp_path / "x")
    (tmp_path / "link.jsonl").symlink_to(split)
    os.link(split, tmp_path / "hard.jsonl")
    for out in (tmp_path / "link.jsonl", tmp_path / "hard.jsonl"):
        with pytest.raises(OutputOverlapError, match=f"--report {out} is the input"):
            check_output_apart(out, [("the input", split)], flag="--report")


@pytest.mark.parametrize("name", ["../escaped", "a/b", "a\\b", "/abs", "", ".hidden", "x\x00y"])
def test_a_name_that_is_a_path_is_refused(name: str) -> None:
    with pytest.raises(OutputOverlapError, match="--name .*: a name, not a path"):
        check_output_name("--name", name)


def test_plain_names_pass() -> None:
    for name in ("docvqa", "my data", "ucf-101_v2", "données"):
        check_output_name("--name", name)


# -- every phi3v-data command that writes ------------------------------------------------------------------------


def test_validate_report_and_out_never_replace_the_dataset(tmp_path: Path) -> None:
    split = _dataset(tmp_path / "x")
    before = _tree(tmp_path)
    runs = {
        ("--report", str(split)): f"--report {split} is the input {split}",
        ("--out", str(split)): f"--out {split} is the input {split}",
        ("--report", str(tmp_path / "x" / "images" / "r.json")): "is inside the images folder",
        ("--report", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "c.jsonl")):
            f"--report {tmp_path / 'c.jsonl'} is --out",
    }
    for args, message in runs.items():
        result = CliRunner().invoke(main, ["validate", str(split), *args])
        assert result.exit_code == 2, result.output
        assert message in _said(result.output)
    assert _tree(tmp_path) == before
    result = CliRunner().invoke(main, ["validate", str(split), "--report", str(tmp_path / "x" / "report.json")])
    assert result.exit_code == 0, result.output  # beside the dataset file: fine


def test_preview_never_writes_over_the_dataset_or_into_its_images(tmp_path: Path) -> None:
    split = _dataset(tmp_path / "x")
    before = _tree(tmp_path)
    for out, message in ((split, f"--out {split} is the dataset"), (tmp_path / "x" / "images", "is the images folder"),
                         (tmp_path / "x" / "images" / "p.html", "is inside the images folder")):
        result = CliRunner().invoke(main, ["preview", str(split), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert message in _said(result.output)
    assert _tree(tmp_path) == before


def test_convert_name_never_leaves_out(tmp_path: Path) -> None:
    src = tmp_path / "pets"
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (0, 0, 200)).save(src / cls / "0.png")
    result = CliRunner().invoke(main, ["convert", "folder", str(src), "--out", str(tmp_path / "out"),
                                       "--name", "../escaped"])
    assert result.exit_code == 2, result.output
    assert "--name '../escaped': a name, not a path ('../escaped' climbs out with '..')" in _said(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets"]  # no escaped_train.jsonl, not even an empty --out
