"""The generic Hugging Face converter on exports written by ``datasets`` itself (to_parquet, save_to_disk)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import ValidationError
from rich.console import Console

from converters.hf import HFConverter, HFOptions
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConvertUsageError

datasets = pytest.importorskip("datasets")

QUIET = Console(file=io.StringIO())


def encoded(color: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 8), color).save(buffer, fmt)
    return buffer.getvalue()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(source: Path | str, out: Path, **options: object):
    return run_converter(HFConverter(HFOptions(**options)), Path(source), out, workers=1, console=QUIET)


DOCVQA = datasets.Features(
    {
        "questionId": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "image": datasets.Image(),
    }
)


@pytest.fixture
def docvqa(tmp_path: Path) -> Path:
    """lmms-lab/DocVQA's layout: <config>/<split>-0000k-of-0000n.parquet, test answers null."""
    root = tmp_path / "DocVQA" / "DocVQA"
    root.mkdir(parents=True)
    validation = {
        "questionId": ["1", "2", "3", "4"],
        "question": ["What is the date?", "Who signed?", "", "Total?"],
        "answers": [["1/8/93"], ["J. Smith", "j smith", "Smith"], ["x"], None],
        "image": [{"bytes": encoded("white"), "path": None}, {"bytes": encoded("gray", "JPEG"), "path": None},
                  {"bytes": encoded("black"), "path": None}, {"bytes": encoded("black"), "path": None}],
    }  # fmt: skip
    datasets.Dataset.from_dict(validation, features=DOCVQA).to_parquet(root / "validation-00000-of-00001.parquet")
    test = {"questionId": ["9"], "question": ["Title?"], "answers": [None],
            "image": [{"bytes": b"GIF89a broken", "path": None}]}
    datasets.Dataset.from_dict(test, features=DOCVQA).to_parquet(root / "test-00000-of-00001.parquet")
    return tmp_path / "DocVQA"


def test_parquet_export_exact_records_answers_and_failures(docvqa: Path, tmp_path: Path) -> None:
    result = run(
        docvqa, tmp_path / "out", answer_column="answers", id_column="questionId", prompt="{question}\nAnswer briefly."
    )
    assert jsonl(tmp_path / "out" / "hf_val.jsonl") == [
        {"id": "val-1", "source": "hf", "task": "vqa", "source_split": "validation",
         "conversations": [
             {"images": ["val/0000000.png"], "user": "What is the date?\nAnswer briefly.", "assistant": "1/8/93"}
         ]},
        {"id": "val-2", "source": "hf", "task": "vqa", "source_split": "validation",
         "conversations": [{"images": ["val/0000001.jpg"], "user": "Who signed?\nAnswer briefly.",
                            "assistant": "J. Smith",
                            "reference": {"answers": ["J. Smith", "j smith", "Smith"]}}]},
    ]  # fmt: skip
    assert not (tmp_path / "out" / "hf_test.jsonl").exists()  # its only row does not decode
    assert sorted((f.file, f.reason) for f in result.failures) == [
        ("DocVQA/validation-00000-of-00001.parquet", "row 2: column 'question' holds no question text"),
        ("DocVQA/validation-00000-of-00001.parquet", "row 3: no answer in 'answers' (other rows of val have one)"),
        ("test/DocVQA/test-00000-of-00001.parquet#0", "embedded image is not in a recognised image format"),
    ]


def test_missing_columns_are_a_usage_error_naming_what_exists(docvqa: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertUsageError, match=r"no column answer \(it has: questionId, question, answers, image\)"):
        run(docvqa, tmp_path / "out")
    with pytest.raises(ValidationError, match=r"must contain \{question\}"):
        HFOptions(prompt="Answer briefly.")


def test_save_to_disk_split_column_binary_and_multi_image(tmp_path: Path) -> None:
    rows = {
        "img": [[{"bytes": encoded("blue"), "path": None}, {"bytes": encoded("red"), "path": "01235.png"}],
                [{"bytes": encoded("blue"), "path": None}], [{"bytes": encoded("blue"), "path": None}]],
        "text": ["its their character not their color that matters", "maybe", "unlabeled"],
        "label": [1, 7, None],
        "set": ["dev_seen", "train", "test_unseen"],
    }  # fmt: skip
    features = datasets.Features({"img": datasets.Sequence(datasets.Image()), "text": datasets.Value("string"),
                                  "label": datasets.Value("int64"), "set": datasets.Value("string")})  # fmt: skip
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "memes"))
    options = {"image_column": "img", "question_column": "text", "answer_column": "label", "split_column": "set"}
    result = run(
        tmp_path / "memes", tmp_path / "out", **options, task="binary",
        prompt='The meme reads "{question}". Is it hateful?',
    )
    assert jsonl(tmp_path / "out" / "hf_dev_seen.jsonl") == [
        {"id": "dev_seen-0000000000", "source": "hf", "task": "binary",
         "conversations": [{"images": ["dev_seen/0000000_0.png", "dev_seen/0000000_1.png"],
                            "user": 'The meme reads "its their character not their color that matters". Is it hateful?',
                            "assistant": "yes", "reference": {"label": 1}}]},
    ]  # fmt: skip
    assert jsonl(tmp_path / "out" / "hf_test_unseen.jsonl")[0]["conversations"][0]["assistant"] is None
    assert [f.reason for f in result.failures] == [
        "row 1: column 'label' holds '7', not yes/no, true/false or 0/1 (task binary)"
    ]


def test_image_paths_resolve_inside_the_dataset_folder_only(tmp_path: Path) -> None:
    """Exports written without embedding (pyarrow, pandas) store {"bytes": null, "path"}: read inside the root only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "export"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(encoded("red"))
    (tmp_path / "outside.png").write_bytes(encoded("red"))
    paths = ["img/a.png", "../outside.png", str(tmp_path / "outside.png"), "img/missing.png"]
    table = pa.table({"image": [{"bytes": None, "path": p} for p in paths], "question": ["q"] * 4, "answer": ["a"] * 4})
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    result = run(folder, tmp_path / "out")
    [record] = jsonl(tmp_path / "out" / "hf_train.jsonl")
    assert record["conversations"][0]["images"] == ["train/0000000.png"]
    assert (tmp_path / "out" / "images" / "train" / "0000000.png").read_bytes() == encoded("red")
    assert [f.reason.split(" under ")[0] for f in result.failures] == [
        "refused: escapes the dataset root (image path '../outside.png')",
        f"refused: escapes the dataset root (image path '{tmp_path / 'outside.png'}')",
        "image path 'img/missing.png' cannot be read",
    ]


def test_cli_converts_and_refuses_a_prompt_without_question(docvqa: Path, tmp_path: Path) -> None:
    from phi3v_data.cli import main

    args = ["convert", "hf", str(docvqa), "--answer-column", "answers", "-j", "1", "--out"]
    ok = CliRunner().invoke(main, [*args, str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert [r["id"] for r in jsonl(tmp_path / "out" / "hf_val.jsonl")] == ["val-0000000000", "val-0000000001"]
    bad = CliRunner().invoke(main, [*args, str(tmp_path / "o2"), "--prompt", "no placeholder"])
    assert bad.exit_code == 2 and "{question}" in bad.output


def test_the_module_docstring_example_is_exact(tmp_path: Path) -> None:
    import converters.hf as module

    raw, expected = (" ".join(s.split()) for s in re.findall(r"::\n\n((?:    .*\n)+)", module.__doc__ or ""))
    row = json.loads(raw)
    row["image"]["bytes"] = encoded("white")
    (tmp_path / "src").mkdir()
    datasets.Dataset.from_dict({k: [v] for k, v in row.items()}, features=DOCVQA).to_parquet(
        tmp_path / "src" / "validation-00000-of-00006.parquet"
    )
    run(
        tmp_path / "src", tmp_path / "out", answer_column="answers", id_column="questionId",
        prompt="{question}\nAnswer briefly.",
    )
    assert jsonl(tmp_path / "out" / "hf_val.jsonl") == [json.loads(expected)]
