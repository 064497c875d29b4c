"""Record → LLaVA / ShareGPT rows, and the `phi3v-data export` command."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi3v_data.cli import main
from phi3v_data.export import ExportError, ExportUsageError, export_dataset, relative_to_folder, to_llava, to_sharegpt
from schemas import Record


def _record(*turns: dict, id: str = "r1") -> Record:
    return Record.model_validate({"id": id, "source": "folder", "task": "vqa", "conversations": list(turns)})


def test_untagged_images_go_first_and_task_and_reference_are_left_out() -> None:
    record = _record(
        {"images": ["train/a.png", "train/b.png"], "user": "Which is larger?", "assistant": "a",
         "reference": {"answers": ["a", "A"]}},
        {"images": ["train/c.png"], "user": "And this?", "assistant": "c"},
    )
    assert to_llava(record, multi=True) == {
        "id": "r1",
        "image": ["train/a.png", "train/b.png", "train/c.png"],
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhich is larger?"},
            {"from": "gpt", "value": "a"},
            {"from": "human", "value": "<image>\nAnd this?"},
            {"from": "gpt", "value": "c"},
        ],
    }


def test_tags_become_image_tags_and_images_follow_their_order() -> None:
    record = _record({"images": ["a.png", "b.png"], "user": "Is <|image_2|> left of <|image_1|>?", "assistant": "yes"})
    assert to_sharegpt(record, image_path=lambda p: "imgs/" + p) == {
        "id": "r1",
        "messages": [{"role": "user", "content": "Is <image> left of <image>?"},
                     {"role": "assistant", "content": "yes"}],
        "images": ["imgs/b.png", "imgs/a.png"],
    }


def test_text_only_and_unlabeled_rows() -> None:
    assert to_llava(_record({"user": "Hi", "assistant": "Hello"})) == {
        "id": "r1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    }
    assert to_sharegpt(_record({"images": ["a.png"], "user": "What?"})) == {
        "id": "r1", "messages": [{"role": "user", "content": "<image>\nWhat?"}], "images": ["a.png"]
    }


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([{"images": ["a.png", "b.png"], "user": "only <|image_1|>", "assistant": "x"}],
         "image tags [1] do not place each of the record's 2 image(s) exactly once"),
        ([{"images": ["a.png"], "user": "<|image_1|> <|image_1|>", "assistant": "x"}],
         "image tags [1, 1] do not place each of the record's 1 image(s) exactly once"),
        ([{"user": "what is <image>?", "assistant": "x"}],
         "text holds a literal <image>, which the target format would read as an image"),
        ([{"user": "a"}, {"user": "b"}],
         "an unlabeled multi-turn record has no form in this format (turns must alternate)"),
    ],
)
def test_records_the_formats_cannot_express(turns: list[dict], reason: str) -> None:
    with pytest.raises(ExportError) as caught:
        to_llava(_record(*turns))
    assert str(caught.value) == reason


def test_relative_to_folder_refuses_images_outside_it(tmp_path: Path) -> None:
    rebase = relative_to_folder(tmp_path / "ds" / "images", tmp_path / "ds" / "images" / "train")
    assert rebase("train/cat/1.png") == "cat/1.png"
    with pytest.raises(ExportError, match="image val/1.png is not inside the image folder"):
        rebase("val/1.png")
    assert relative_to_folder(tmp_path / "ds" / "images", tmp_path)("train/1.png") == "ds/images/train/1.png"


def _dataset(tmp_path: Path) -> Path:
    lines = [
        json.dumps({"id": "a", "task": "caption",
                    "conversations": [{"images": ["train/x.png"], "user": "Describe.", "assistant": "Red."}]}),
        "{broken",
        json.dumps({"id": "b",
                    "conversations": [{"images": ["val/y.png"], "user": "<|image_1|> hue?", "assistant": "Blue."}]}),
        json.dumps({"id": "c", "conversations": []}),
    ]
    path = tmp_path / "ds" / "ds_train.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path


def test_export_cli_writes_rows_and_lists_skipped_records(tmp_path: Path) -> None:
    dataset, out = _dataset(tmp_path), tmp_path / "out.json"
    result = CliRunner().invoke(main, ["export", str(dataset), "--to", "llava", "--out", str(out),
                                       "--image-folder", str(tmp_path / "ds")])

    assert result.exit_code == 1, result.output
    assert json.loads(out.read_text()) == [
        {"id": "a", "image": "images/train/x.png",
         "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Red."}]},
        {"id": "b", "image": "images/val/y.png",
         "conversations": [{"from": "human", "value": "<image> hue?"}, {"from": "gpt", "value": "Blue."}]},
    ]
    assert (f"skipped {dataset}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)\n"
            in result.output)
    assert (f"skipped {dataset}:4 (id c): conversations: List should have at least 1 item after validation, not 0\n"
            in result.output)


def test_export_cli_jsonl_sharegpt_clean_run_exits_zero(tmp_path: Path) -> None:
    dataset = tmp_path / "d.jsonl"
    record = {"id": "a", "conversations": [{"images": ["train/x.png"], "user": "Q", "assistant": "A"}]}
    dataset.write_text(json.dumps(record) + "\n")
    result = CliRunner().invoke(main, ["export", str(dataset), "--to", "sharegpt", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.jsonl").read_text() == (
        '{"id": "a", "messages": [{"role": "user", "content": "<image>\\nQ"}, {"role": "assistant", "content": "A"}], '
        '"images": ["train/x.png"]}\n'
    )


def test_export_refuses_unknown_output_types_and_overwriting_the_dataset(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    result = CliRunner().invoke(main, ["export", str(dataset), "--to", "llava", "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2
    assert "name a .json (one JSON array) or .jsonl (one row per line) file" in result.output
    before = dataset.read_bytes()
    (dataset.parent / "images").mkdir()
    with pytest.raises(ExportUsageError, match=re.escape(f"--out {dataset} is the dataset {dataset}; writing there")):
        export_dataset(dataset, dataset, to="llava")
    with pytest.raises(ExportUsageError, match="is inside the images folder"):
        export_dataset(dataset, dataset.parent / "images" / "rows.json", to="llava")
    assert dataset.read_bytes() == before and not (dataset.parent / "images" / "rows.json").exists()
    assert not (tmp_path / "o.csv").exists()


def test_llava_layout_writes_one_path_and_refuses_several_images() -> None:
    """LLaVA-1.5's LazySupervisedDataset opens `image` as one path; LLaVA-NeXT's takes a list."""
    one = _record({"images": ["train/a.png"], "user": "What?", "assistant": "a"})
    assert to_llava(one)["image"] == "train/a.png"
    assert to_llava(one, multi=True)["image"] == ["train/a.png"]
    two = _record({"images": ["train/a.png", "train/b.png"], "user": "Same?", "assistant": "no"})
    with pytest.raises(ExportError) as caught:
        to_llava(two)
    assert str(caught.value) == (
        "has 2 images; LLaVA-1.5's trainer opens `image` as one path: "
        "export with --to llava-multi (LLaVA-NeXT) or --to sharegpt (LLaMA-Factory)"
    )
    assert to_sharegpt(two)["images"] == ["train/a.png", "train/b.png"]


def test_export_cli_llava_reports_multi_image_records_and_llava_multi_keeps_them(tmp_path: Path) -> None:
    dataset = tmp_path / "d" / "x_train.jsonl"
    dataset.parent.mkdir()
    rows = [_record({"images": ["train/a.png"], "user": "Q?", "assistant": "a"}, id="one"),
            _record({"images": ["train/a.png", "train/b.png"], "user": "Q?", "assistant": "b"}, id="pair")]
    dataset.write_text("".join(r.model_dump_json(exclude_none=True) + "\n" for r in rows))
    single = CliRunner().invoke(main, ["export", str(dataset), "--to", "llava", "--out", str(tmp_path / "l.json")])
    assert "pair" in single.output and "llava-multi" in single.output
    assert [r["id"] for r in json.loads((tmp_path / "l.json").read_text())] == ["one"]
    multi = CliRunner().invoke(main, ["export", str(dataset), "--to", "llava-multi", "--out", str(tmp_path / "m.json")])
    assert multi.exit_code == 0, multi.output
    assert ([r["image"] for r in json.loads((tmp_path / "m.json").read_text())]
            == [["train/a.png"], ["train/a.png", "train/b.png"]])
