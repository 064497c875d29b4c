"""DocVQA converter on miniature copies of the official download and of Hugging Face parquet/arrow exports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from converters.docvqa import DocVQAConverter, DocVQAOptions, choose_answer
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConvertUsageError

QUIET = Console(file=io.StringIO())


def png(path: Path, color: str = "white", size: tuple[int, int] = (24, 32)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.read_bytes()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(source: Path, out: Path, **options: object):
    return run_converter(DocVQAConverter(DocVQAOptions(**options)), source, out, workers=1, console=QUIET)


@pytest.fixture
def official(tmp_path: Path) -> Path:
    """The official layout: annotations in spdocvqa_qas/, every page flat in spdocvqa_images/."""
    root = tmp_path / "DocVQA"
    png(root / "spdocvqa_images" / "txpn0095_1.png", "white")
    png(root / "spdocvqa_images" / "abcd0001_2.png", "gray")
    png(root / "spdocvqa_images" / "test0001_1.png", "black")
    png(tmp_path / "outside.png")
    train = [
        {"questionId": 52212, "question": "Who issued the report?", "image": "documents/txpn0095_1.png", "docId": 1968,
         "ucsf_document_id": "txpn0095", "ucsf_document_page_no": "1", "answers": ["itc", "ITC Limited", "itc limited"],
         "data_split": "train", "question_types": ["layout"]},
        {"questionId": 52213, "question": "How many tables?", "image": "documents/abcd0001_2.png",
         "answers": ["5", "five", "Five"]},
        {"questionId": 52214, "question": "What is the date?", "image": "documents/txpn0095_1.png",
         "answers": ["1/8/93"]},
        {"questionId": 52215, "image": "documents/txpn0095_1.png", "answers": ["x"]},  # no question
        {"questionId": 52216, "question": "Escape?", "image": "../outside.png", "answers": ["no"]},
        {"questionId": 52217, "question": "Lost?", "image": "documents/missing_1.png", "answers": ["no"]},
        {"questionId": 52218, "question": "Unanswered?", "image": "documents/abcd0001_2.png"},
    ]
    qas = root / "spdocvqa_qas"
    qas.mkdir(parents=True)
    (qas / "train_v1.0_withQT.json").write_text(
        json.dumps({"dataset_name": "docvqa", "dataset_split": "train", "data": train})
    )
    test = [{"questionId": 7, "question": "What is the title?", "image": "documents/test0001_1.png", "docId": 3}]
    (qas / "test_v1.0.json").write_text(json.dumps({"dataset_name": "docvqa", "dataset_split": "test", "data": test}))
    return root


def test_answer_choice_is_majority_after_normalising_ties_to_first() -> None:
    assert choose_answer(["itc", "ITC Limited", "itc  limited"], "majority") == "ITC Limited"
    assert choose_answer(["a", "b", "B ", "A"], "majority") == "a"
    assert choose_answer(["itc", "ITC Limited", "itc limited"], "first") == "itc"


def test_official_layout_exact_records_failures_and_unlabeled_test(official: Path, tmp_path: Path) -> None:
    result = run(official, tmp_path / "out")
    train = jsonl(tmp_path / "out" / "docvqa_train.jsonl")
    assert train[0] == {
        "id": "train-q52212",
        "source": "docvqa",
        "task": "vqa",
        "conversations": [
            {
                "images": ["train/txpn0095_1.png"],
                "user": "Who issued the report?\nAnswer briefly.",
                "assistant": "ITC Limited",
                "reference": {"answers": ["itc", "ITC Limited", "itc limited"]},
            }
        ],
    }
    # questions about one page come together, pages in order of first appearance
    assert [r["id"] for r in train] == ["train-q52212", "train-q52214", "train-q52213"]
    assert [r["conversations"][0]["assistant"] for r in train] == ["ITC Limited", "1/8/93", "five"]
    assert (tmp_path / "out" / "images" / "train" / "abcd0001_2.png").read_bytes() == (
        official / "spdocvqa_images" / "abcd0001_2.png"
    ).read_bytes()
    test = jsonl(tmp_path / "out" / "docvqa_test.jsonl")
    assert test == [
        {"id": "test-q7", "source": "docvqa", "task": "vqa",
         "conversations": [{"images": ["test/test0001_1.png"], "user": "What is the title?\nAnswer briefly.",
                            "assistant": None}]}
    ]
    reasons = sorted(f.reason for f in result.failures)
    assert len(reasons) == 4 and all(f.file == "spdocvqa_qas/train_v1.0_withQT.json" for f in result.failures)
    assert reasons[0].startswith("data[3]: malformed entry: question")
    assert reasons[1] == "data[4]: refused: '../outside.png' climbs out with '..'"
    assert reasons[2].startswith("data[5]: image 'documents/missing_1.png' not found under")
    assert reasons[3] == "data[6]: question 52218 has no answers (others do)"
    assert result.counts == {"train": 3, "test": 1}


def test_a_truncated_page_is_a_failure_naming_its_question_not_a_record(official: Path, tmp_path: Path) -> None:
    """The header of a half-written PNG reads fine; the copy decodes the whole page, so it is reported and skipped."""
    page = official / "spdocvqa_images" / "abcd0001_2.png"
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buffer, "PNG")
    page.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    result = run(official, tmp_path / "out")
    train = jsonl(tmp_path / "out" / "docvqa_train.jsonl")
    assert [r["id"] for r in train] == ["train-q52212", "train-q52214"]  # q52213 went with its page
    assert not (tmp_path / "out" / "images" / "train" / "abcd0001_2.png").exists()
    [failure] = [f for f in result.failures if "abcd0001_2" in f.reason]
    assert failure.file == "spdocvqa_qas/train_v1.0_withQT.json" and failure.split == "train"
    assert failure.reason.startswith(
        f"data[1]: page abcd0001_2.png skipped with its 1 question(s): {page}: does not decode"
    )
    assert "truncated" in failure.reason and result.counts == {"train": 2, "test": 1}
    reported = [json.loads(line) for line in (tmp_path / "out" / "reports" / "failures.jsonl").read_text().splitlines()]
    assert any(r["file"] == failure.file and r["reason"] == failure.reason for r in reported)
    from phi3v_data.cli import main

    deep = CliRunner().invoke(main, ["validate", str(tmp_path / "out" / "docvqa_train.jsonl"), "--deep", "-q"])
    assert deep.exit_code == 0, deep.output  # the converter's own output passes the thorough check


def test_group_pages_makes_one_multi_turn_record_per_page(official: Path, tmp_path: Path) -> None:
    run(official, tmp_path / "out", group_pages=True, instruction="")
    train = jsonl(tmp_path / "out" / "docvqa_train.jsonl")
    assert train[0] == {
        "id": "train-txpn0095_1",
        "source": "docvqa",
        "task": "vqa",
        "conversations": [
            {"images": ["train/txpn0095_1.png"], "user": "Who issued the report?", "assistant": "ITC Limited",
             "reference": {"answers": ["itc", "ITC Limited", "itc limited"]}},
            {"images": [], "user": "What is the date?", "assistant": "1/8/93", "reference": {"answers": ["1/8/93"]}},
        ],
    }
    assert [r["id"] for r in train] == ["train-txpn0095_1", "train-abcd0001_2"]


def test_single_json_file_finds_images_beside_the_qas_folder(official: Path, tmp_path: Path) -> None:
    result = run(official / "spdocvqa_qas" / "test_v1.0.json", tmp_path / "out")
    assert result.counts == {"test": 1} and not result.failures
    assert (tmp_path / "out" / "images" / "test" / "test0001_1.png").is_file()


def test_unknown_layout_and_bad_options_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    with pytest.raises(ConvertUsageError, match="train_v1.0_withQT.json"):
        run(tmp_path / "src", tmp_path / "out")
    with pytest.raises(ValueError, match="answer"):
        DocVQAOptions(answer="random")
    with pytest.raises(ValueError, match="not a folder"):
        DocVQAOptions(images=tmp_path / "nope")


def _nielsr_parquet(folder: Path, pages: list[bytes]) -> None:
    """Two shards of a train split in the columns of nielsr/docvqa_1200_examples; page 0 appears in both."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "id": ["train_0", "train_1", "train_2"],
        "image": [
            {"bytes": pages[0], "path": None}, {"bytes": pages[1], "path": None}, {"bytes": pages[0], "path": None}
        ],
        "query": [{"en": "What is the total?", "de": "?"}, {"en": "Whose letter?", "de": "?"},
                  {"en": "Which year?", "de": "?"}],
        "answers": [["$10", "10"], ["Bob"], ["1999"]],
    }
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(rows)
    pq.write_table(table.slice(0, 2), folder / "train-00000-of-00002.parquet", row_group_size=1)  # two row groups
    pq.write_table(table.slice(2), folder / "train-00001-of-00002.parquet")


def test_parquet_export_with_embedded_images(tmp_path: Path) -> None:
    pages = [png(tmp_path / "p0.png", "red"), png(tmp_path / "p1.png", "blue", (20, 20))]
    _nielsr_parquet(tmp_path / "hf" / "data", pages)
    result = run(tmp_path / "hf", tmp_path / "out")
    train = jsonl(tmp_path / "out" / "docvqa_train.jsonl")
    digest0 = __import__("hashlib").sha1(pages[0]).hexdigest()[:16]
    assert train[0] == {
        "id": "train-qtrain_0",
        "source": "docvqa",
        "task": "vqa",
        "conversations": [{"images": [f"train/{digest0}.png"], "user": "What is the total?\nAnswer briefly.",
                           "assistant": "$10", "reference": {"answers": ["$10", "10"]}}],
    }
    assert [r["id"] for r in train] == ["train-qtrain_0", "train-qtrain_2", "train-qtrain_1"]
    assert (tmp_path / "out" / "images" / train[0]["conversations"][0]["images"][0]).read_bytes() == pages[0]
    assert (tmp_path / "out" / "images" / train[2]["conversations"][0]["images"][0]).read_bytes() == pages[1]
    assert result.counts == {"train": 3} and not result.failures
    assert len(list((tmp_path / "out" / "images" / "train").iterdir())) == 2  # the page shared by both shards: once


def test_save_to_disk_arrow_export_unlabeled_test_and_bad_rows(tmp_path: Path) -> None:
    import datasets

    page = png(tmp_path / "p.png", "green")
    test = datasets.Dataset.from_dict(
        {"questionId": [11, 12, 13], "question": ["Q one?", "", "Q three?"], "answers": [None, None, None],
         "image": [{"bytes": page, "path": "ffbf0023_4.png"}, {"bytes": page, "path": None},
                   {"bytes": b"garbage", "path": "bad.png"}]},
        features=datasets.Features({"questionId": datasets.Value("int64"), "question": datasets.Value("string"),
                                    "answers": datasets.Sequence(datasets.Value("string")), "image": datasets.Image()}),
    )
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "saved"))
    result = run(tmp_path / "saved", tmp_path / "out")
    assert jsonl(tmp_path / "out" / "docvqa_test.jsonl") == [
        {"id": "test-q11", "source": "docvqa", "task": "vqa",
         "conversations": [{"images": ["test/ffbf0023_4.png"], "user": "Q one?\nAnswer briefly.", "assistant": None}]}
    ]
    assert [(f.file, f.reason) for f in result.failures] == [
        ("test/data-00000-of-00001.arrow",
         "row 1: no question text (expected a 'question' column or 'query' with 'en')"),
        ("test/bad.png", "data-00000-of-00001.arrow row 2: embedded image is not in a recognised image format"),
    ]


def test_cli_converts_the_official_layout(official: Path, tmp_path: Path) -> None:
    from phi3v_data.cli import main

    out = tmp_path / "cli-out"
    result = CliRunner().invoke(
        main, ["convert", "docvqa", str(official), "--out", str(out), "--workers", "1", "--group-pages"]
    )
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in jsonl(out / "docvqa_train.jsonl")] == ["train-txpn0095_1", "train-abcd0001_2"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 2, "test": 1} and manifest["failures"] == 4
    strict = CliRunner().invoke(
        main, ["convert", "docvqa", str(official), "--out", str(tmp_path / "o2"), "-j", "1", "--strict"]
    )
    assert strict.exit_code == 1


def test_the_module_docstring_example_is_exact(tmp_path: Path) -> None:
    import re

    import converters.docvqa as module

    raw, expected = (" ".join(s.split()) for s in re.findall(r"::\n\n((?:    .*\n)+)", module.__doc__ or ""))
    png(tmp_path / "src" / "spdocvqa_images" / "pybv0228_81.png")
    (tmp_path / "src" / "val_v1.0_withQT.json").write_text(
        json.dumps({"dataset_split": "val", "data": [json.loads(raw)]})
    )
    run(tmp_path / "src", tmp_path / "out")
    assert jsonl(tmp_path / "out" / "docvqa_val.jsonl") == [json.loads(expected)]


@pytest.mark.parametrize(
    ("rel", "split"),
    [
        ("data/train-00000-of-00002.parquet", "train"),
        ("hateful_memes/train-00000-of-00001-2ce340398c113b79.parquet", "train"),  # the_cauldron on the Hub
        ("DocVQA/validation-00003-of-00006.parquet", "validation"),  # lmms-lab/DocVQA
        ("test.parquet", "test"),
        ("default/train/0000.parquet", "train"),  # refs/convert/parquet
        ("default/validation/0001.parquet", "validation"),
        ("default/partial-train/0000.parquet", "train"),
        ("parquet-train.arrow", "train"),  # load_dataset cache of a parquet repo
        ("doc-vqa-validation-00000-of-00005.arrow", "validation"),  # builder names may hold '-'; splits never do
        ("saved/test/data-00000-of-00001.arrow", "test"),  # save_to_disk of a DatasetDict
    ],
)
def test_table_split_reads_the_split_where_datasets_puts_it(rel: str, split: str) -> None:
    from converters._hf_reader import table_split

    assert table_split(Path("/x") / rel) == split


def _lmms_rows(pages: list[bytes], split: str, count: int) -> dict[str, list]:
    """Rows in the columns of lmms-lab/DocVQA (questionId, question, answers, image as {bytes, path})."""
    return {
        "questionId": [f"{split}{i}" for i in range(count)],
        "question": [f"Q{i} of {split}?" for i in range(count)],
        "answers": [None if split == "test" else [f"a{i}"] for i in range(count)],
        "image": [{"bytes": pages[i % len(pages)], "path": f"{split}_{i}.png"} for i in range(count)],
    }


def test_parquet_converter_layout_gives_train_val_test(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pages = [png(tmp_path / "p0.png", "red"), png(tmp_path / "p1.png", "blue")]
    for split, count in (("train", 3), ("validation", 2), ("test", 1)):
        folder = tmp_path / "DocVQA" / "DocVQA" / split  # <config>/<split>/0000.parquet
        folder.mkdir(parents=True)
        pq.write_table(pa.table(_lmms_rows(pages, split, count)), folder / "0000.parquet")
    result = run(tmp_path / "DocVQA", tmp_path / "out")
    assert result.counts == {"test": 1, "train": 3, "val": 2} and not result.failures
    val = jsonl(tmp_path / "out" / "docvqa_val.jsonl")
    assert val[0] == {
        "id": "val-qvalidation0", "source": "docvqa", "source_split": "validation", "task": "vqa",
        "conversations": [{"images": ["val/validation_0.png"], "user": "Q0 of validation?\nAnswer briefly.",
                           "assistant": "a0", "reference": {"answers": ["a0"]}}],
    }
    assert jsonl(tmp_path / "out" / "docvqa_test.jsonl")[0]["conversations"][0]["assistant"] is None
    assert "source_split" not in jsonl(tmp_path / "out" / "docvqa_train.jsonl")[0]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["source_splits"] == {"val": "validation"}


def test_load_dataset_cache_files_give_their_split(tmp_path: Path) -> None:
    """The arrow files `datasets.load_dataset` leaves in its cache are named `parquet-<split>.arrow`."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pages = [png(tmp_path / "p0.png", "red")]
    files = {}
    for split, count in (("train", 2), ("validation", 1)):
        files[split] = str(tmp_path / "hub" / f"{split}-00000-of-00001.parquet")
        (tmp_path / "hub").mkdir(exist_ok=True)
        pq.write_table(pa.table(_lmms_rows(pages, split, count)), files[split])
    datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    arrows = sorted(p.name for p in (tmp_path / "cache").rglob("*.arrow"))
    assert arrows == ["parquet-train.arrow", "parquet-validation.arrow"]
    folder = next((tmp_path / "cache").rglob("parquet-train.arrow")).parent
    result = run(folder, tmp_path / "out")
    assert result.counts == {"train": 2, "val": 1} and not result.failures
