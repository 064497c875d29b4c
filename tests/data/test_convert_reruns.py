"""What a user meets around a conversion: reruns after a fix, where reports go, carving, runs that produce nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from converters.hateful_memes import HatefulMemesConverter
from converters.nlvr2 import NLVR2Converter
from phi3v_data.cli import main
from phi3v_data.convert import run_converter
from schemas.layout import FAILURES_REPORT
from phi3v_data.cli.convert import summary_table
from phi3v_data.splits import Carved, canonical_split, carve_groups, output_names

QUIET = Console(file=io.StringIO())


def png(path: Path, color: str = "white") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).save(path)


def memes(root: Path) -> Path:
    """A Hateful Memes release whose second train image is missing, and whose third does not decode."""
    png(root / "img" / "00001.png")
    (root / "img" / "00003.png").write_bytes(b"not a png")
    rows = [{"id": n, "img": f"img/0000{n}.png", "label": n % 2, "text": f"meme {n}"} for n in (1, 2, 3)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class Counting(HatefulMemesConverter):
    calls: list[str] = []

    def convert(self, item, out):  # noqa: ANN001, ANN201
        Counting.calls.append(item.key)
        return super().convert(item, out)


def test_a_rerun_after_the_fix_converts_the_failed_items_and_reuses_the_rest(tmp_path: Path) -> None:
    src = memes(tmp_path / "hm")
    first = run_converter(Counting(), src, tmp_path / "out", workers=1, console=QUIET)
    assert first.counts == {"train": 1} and [f.line for f in first.failures] == [2, None]
    assert (tmp_path / "out" / ".partial" / "journal.jsonl").is_file()  # kept while failures remain

    png(src / "img" / "00002.png", "black")  # the user adds the missing image …
    png(src / "img" / "00003.png", "gray")  # … and replaces the broken one
    Counting.calls.clear()
    second = run_converter(Counting(), src, tmp_path / "out", workers=1, console=QUIET)
    assert not second.up_to_date and second.reused == 1
    assert Counting.calls == ["train/2", "train/3"]  # only what failed
    assert second.counts == {"train": 3} and not second.failures
    assert (tmp_path / "out" / FAILURES_REPORT).read_text() == ""
    assert not (tmp_path / "out" / ".partial").exists()

    fresh = run_converter(Counting(), src, tmp_path / "fresh", workers=1, console=QUIET)
    train = "hateful_memes_train.jsonl"
    assert (tmp_path / "out" / train).read_bytes() == (tmp_path / "fresh" / train).read_bytes()
    assert fresh.counts == second.counts
    assert run_converter(Counting(), src, tmp_path / "out", workers=1, console=QUIET).up_to_date


def test_the_failures_report_is_outside_the_data_glob(tmp_path: Path) -> None:
    src = memes(tmp_path / "hm")
    result = CliRunner().invoke(main, ["convert", "hateful-memes", str(src), "--out", str(tmp_path / "out"), "-j", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jsonl")) == ["hateful_memes_train.jsonl"]
    report = [json.loads(line) for line in (tmp_path / "out" / "reports" / "failures.jsonl").read_text().splitlines()]
    assert [r["line"] for r in report] == [2, None]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["failures_file"] == "reports/failures.jsonl"
    validate = CliRunner().invoke(main, ["validate", *map(str, (tmp_path / "out").glob("*.jsonl"))])
    assert validate.exit_code == 0, validate.output


def test_a_conversion_that_writes_no_record_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "hm"
    (root / "img").mkdir(parents=True)
    (root / "train.jsonl").write_text(json.dumps({"id": 1, "img": "img/00001.png", "label": 0, "text": "t"}) + "\n")
    result = CliRunner().invoke(
        main, ["convert", "hateful-memes", str(root), "--out", str(tmp_path / "out"), "-j", "1"]
    )
    assert result.exit_code == 1
    assert "no records were written: all 1 input(s) failed" in result.output
    assert "image 'img/00001.png' not found" in result.output


def test_missing_video_extra_is_one_message_naming_the_extra_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from converters import _video_decode

    monkeypatch.setattr(_video_decode, "av", None)
    (tmp_path / "ucf" / "Jump").mkdir(parents=True)
    (tmp_path / "ucf" / "Jump" / "v_Jump_g01_c01.avi").write_bytes(b"x")
    result = CliRunner().invoke(main, ["convert", "video", str(tmp_path / "ucf"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "pip install 'phi3v[video]'" in result.output  # the brackets survive (no rich markup)
    assert result.output.count("\n") <= 2 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_failure_reasons_print_with_their_brackets(tmp_path: Path) -> None:
    src = memes(tmp_path / "hm")
    (src / "train.jsonl").write_text(json.dumps({"id": 1, "img": "img/[x].png", "label": 0, "text": "t"}) + "\n"
                                     + json.dumps({"id": 2, "img": "img/00001.png", "label": 0, "text": "t"}) + "\n")
    result = CliRunner().invoke(main, ["convert", "hateful-memes", str(src), "--out", str(tmp_path / "out"), "-j", "1"])
    assert "image 'img/[x].png' not found" in result.output


# -- split names and carving ---------------------------------------------------------------------------------------


def test_canonical_names_keep_the_first_claim() -> None:
    assert canonical_split("validation") == "val" and canonical_split("test_seen") == "test_seen"
    assert output_names(["train", "validation", "test"]) == {"train": "train", "validation": "val", "test": "test"}
    assert output_names(["dev", "val"]) == {"dev": "dev", "val": "val"}  # a release's own val keeps the name
    assert HatefulMemesConverter.name and NLVR2Converter.name  # both converters import the shared rules


def test_carving_single_item_groups_hits_the_requested_count_across_classes() -> None:
    # 10 classes of 4 items: per class round(0.4) = 0, but 10% of 40 is 4
    groups = {(f"c{c}", f"c{c}-{i}"): [f"c{c}-{i}"] for c in range(10) for i in range(4)}
    moved, info = carve_groups(groups, 0.1, seed=0, split="val")
    assert len(moved) == 4 and len({key.split("-")[0] for key in moved}) == 4  # four different classes
    assert info == Carved("val", 4, 40, 0.1)
    assert carve_groups(groups, 0.1, seed=0, split="val")[0] == moved  # deterministic
    assert carve_groups(groups, 0.1, seed=1, split="val")[0] != moved


def test_carving_a_small_source_takes_one_and_says_so() -> None:
    groups = {("", f"r{i}"): [f"r{i}"] for i in range(4)}
    moved, info = carve_groups(groups, 0.1, seed=0, split="val")
    assert len(moved) == 1
    assert info.describe() == (
        "val: 1 of 4 train items (25.0%, asked 10%) — 10% of 4 rounds to 0; 1 taken so that val is not empty"
    )


def test_carving_whole_groups_comes_as_close_as_they_allow() -> None:
    # three classes of two groups of 3 clips (18 clips), 10% → 2 clips: one group of 3 is the closest
    groups = {(c, g): [f"{c}{g}{k}" for k in range(3)] for c in "abc" for g in "xy"}
    moved, info = carve_groups(groups, 0.1, seed=0, split="val")
    assert (len(moved), info.count, info.total) == (3, 3, 18)
    assert info.note == "whole groups: the closest to 2 they allow"
    # 25% of 18 = 4.5 → 5: one group (3) is closer than two (6)? |3-5| = 2 > |6-5| = 1: two groups
    assert carve_groups(groups, 0.25, seed=0, split="val")[1].count == 6
    lone = {("a", "x"): ["1", "2"], ("b", "y"): ["3"]}  # every class has a single group
    assert carve_groups(lone, 0.5, seed=0, split="val")[1].describe().endswith("which stays in train")


def test_summary_table_names_release_splits_and_what_was_carved(tmp_path: Path) -> None:
    from phi3v_data.convert import RunResult

    result = RunResult(out=tmp_path, counts={"train": 9, "val": 1}, carved=[Carved("val", 1, 10, 0.1)],
                       source_splits={"val": "dev_seen"})
    console = Console(file=io.StringIO(), width=120)
    console.print(summary_table(result))
    text = console.file.getvalue()
    assert "val (dev_seen)" in text and "carved val: 1 of 10 train items (10.0%, asked 10%)" in text
