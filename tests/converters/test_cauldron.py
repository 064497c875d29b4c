"""the_cauldron converter on fixtures written by ``datasets`` itself in the real column layout: ``images`` (a list of
``{"bytes", "path"}`` structs) and ``texts`` (a list of ``{"user", "assistant", "source"}`` turns), as Hub parquet
shards, a ``save_to_disk`` DatasetDict, and a ``load_dataset`` cache (also reached by its Hub name, offline)."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from converters.cauldron import CauldronConverter, CauldronOptions
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConvertUsageError

datasets = pytest.importorskip("datasets")

QUIET = Console(file=io.StringIO())
FEATURES = datasets.Features(
    {
        "images": datasets.Sequence(datasets.Image()),
        "texts": [{"user": datasets.Value("string"), "assistant": datasets.Value("string"),
                   "source": datasets.Value("string")}],
    }
)
MEME = 'Is this meme hateful? The text on it reads: "look how many people love you"'
PAIR = 'Does this statement match the pair of images? "There are exactly two dogs."\nAnswer yes or no.'


def encoded(color: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buffer, fmt)
    return buffer.getvalue()


def cauldron(rows: list[tuple[list[bytes], list[tuple[str, str | None]]]], source: str) -> "datasets.Dataset":
    """A the_cauldron table: each row is (image bytes, [(user, assistant)])."""
    return datasets.Dataset.from_dict(
        {
            "images": [[{"bytes": data, "path": None} for data in images] for images, _ in rows],
            "texts": [[{"user": u, "assistant": a, "source": source} for u, a in turns] for _, turns in rows],
        },
        features=FEATURES,
    )


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(source: Path | str, out: Path, **options: object):
    return run_converter(CauldronConverter(CauldronOptions(**options)), Path(source), out, workers=1, console=QUIET)


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """A snapshot of the Hub repository: <subset>/train-0000k-of-0000n-<hash>.parquet, one folder per subset."""
    root = tmp_path / "the_cauldron"
    (root / "hateful_memes").mkdir(parents=True)
    memes = cauldron(
        [
            ([encoded("white")], [(MEME, "No.")]),
            ([encoded("black")], [("Is this meme hateful?", "Yes.")]),
            ([b"not an image"], [("Is this meme hateful?", "No.")]),
            ([encoded("gray")], []),
            ([encoded("gray")], [("Is it hateful?", "Yes."), ("Why?", None)]),
        ],
        "hateful_memes",
    )
    memes.select(range(2)).to_parquet(root / "hateful_memes" / "train-00000-of-00002-33e2982e1d27df29.parquet")
    memes.select(range(2, 5)).to_parquet(root / "hateful_memes" / "train-00001-of-00002-6b0d10537130f0e0.parquet")
    (root / "nlvr2").mkdir()
    cauldron([([encoded("red"), encoded("blue")], [(PAIR, "Yes.")])], "nlvr2").to_parquet(
        root / "nlvr2" / "train-00000-of-00001-4a7d4eddee81f7ac.parquet"
    )
    return root


def test_hub_parquet_subset_exact_records_and_failures(hub: Path, tmp_path: Path) -> None:
    result = run(hub, tmp_path / "out", subset="hateful_memes")
    records = jsonl(tmp_path / "out" / "cauldron_train.jsonl")
    assert records == [
        {"id": "train-0000000000", "source": "cauldron", "task": "binary",
         "conversations": [
             {"images": ["train/0000000.png"], "user": MEME, "assistant": "no", "reference": {"label": 0}}
         ]},
        {"id": "train-0000000001", "source": "cauldron", "task": "binary",
         "conversations": [{"images": ["train/0000001.png"], "user": "Is this meme hateful?", "assistant": "yes",
                            "reference": {"label": 1}}]},
    ]  # fmt: skip
    assert (tmp_path / "out" / "images" / "train" / "0000000.png").read_bytes() == encoded("white")  # bytes as stored
    reasons = sorted((f.file, f.reason) for f in result.failures)
    assert reasons == [
        ("hateful_memes/train-00001-of-00002-6b0d10537130f0e0.parquet",
         "row 0: embedded image is not in a recognised image format"),
        ("hateful_memes/train-00001-of-00002-6b0d10537130f0e0.parquet", "row 1: 'texts' holds no turn"),
        ("hateful_memes/train-00001-of-00002-6b0d10537130f0e0.parquet",
         "row 2: turn 2 has no assistant reply (the others have one)"),
    ]


def test_a_row_whose_images_are_null_is_a_failure_not_an_image_less_record(tmp_path: Path) -> None:
    root = tmp_path / "the_cauldron" / "hateful_memes"
    root.mkdir(parents=True)
    table = datasets.Dataset.from_dict(
        {"images": [[{"bytes": encoded("white"), "path": None}], None],
         "texts": [[{"user": "Is this meme hateful?", "assistant": "No.", "source": "hateful_memes"}]] * 2},
        features=FEATURES,
    )
    assert table[1]["images"] is None  # as datasets stores a missing list: a null cell
    table.to_parquet(root / "train-00000-of-00001-0123456789abcdef.parquet")
    result = run(root, tmp_path / "out")
    [record] = jsonl(tmp_path / "out" / "cauldron_train.jsonl")
    assert record["conversations"][0]["images"] == ["train/0000000.png"]
    assert [(f.file, f.reason) for f in result.failures] == [
        ("train-00000-of-00001-0123456789abcdef.parquet",
         "row 1: 'images' is null; the row's image is missing, so it is skipped"),
    ]


def test_several_subsets_need_subset_and_a_subset_folder_does_not(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertUsageError, match=r"several subsets \(hateful_memes, nlvr2\): choose one with --subset"):
        run(hub, tmp_path / "a")
    with pytest.raises(ConvertUsageError, match="has no subset 'vqav2'"):
        run(hub, tmp_path / "b", subset="vqav2")
    run(hub / "nlvr2", tmp_path / "c")  # the subset folder itself: its name tells the subset
    [record] = jsonl(tmp_path / "c" / "cauldron_train.jsonl")
    assert record["task"] == "binary"
    assert record["conversations"][0]["images"] == ["train/0000000_0.png", "train/0000000_1.png"]


def test_save_to_disk_dataset_dict_multi_image_multi_turn(tmp_path: Path) -> None:
    rows = [
        ([encoded("red"), encoded("blue")], [(PAIR, "No."), ("Is the left image red?\nAnswer yes or no.", "yes")]),
        ([encoded("red"), b"\x89PNG broken"], [(PAIR, "Yes.")]),
    ]
    held_out = cauldron([([encoded("red")], [(PAIR, "Yes.")])], "nlvr2")  # e.g. from train_test_split
    saved = datasets.DatasetDict({"train": cauldron(rows, "nlvr2"), "validation": held_out})
    saved.save_to_disk(str(tmp_path / "nlvr2_saved"))
    result = run(tmp_path / "nlvr2_saved", tmp_path / "out")
    assert jsonl(tmp_path / "out" / "cauldron_train.jsonl") == [
        {"id": "train-0000000000", "source": "cauldron", "task": "binary",
         "conversations": [
             {"images": ["train/0000000_0.png", "train/0000000_1.png"], "user": PAIR, "assistant": "no",
              "reference": {"label": 0}},
             {"images": [], "user": "Is the left image red?\nAnswer yes or no.", "assistant": "yes",
              "reference": {"label": 1}},
         ]},
    ]  # fmt: skip
    [val] = jsonl(tmp_path / "out" / "cauldron_val.jsonl")
    assert (val["id"], val["source_split"], val["conversations"][0]["images"]) == (
        "val-0000000000", "validation", ["val/0000000.png"]
    )
    [failure] = result.failures
    assert failure.file == "train/data-00000-of-00001.arrow"  # the table, as the plan's own failures name it
    assert failure.reason.startswith("row 1: image 2: embedded image")


def _docvqa_cache(cache: Path) -> Path:
    """A real load_dataset cache made by datasets, placed where loading HuggingFaceM4/the_cauldron 'docvqa' puts it."""
    rows = [([encoded("white", "JPEG")], [("What is the date?\nGive a very brief answer.", "1/8/93."),
                                          ("Is it signed?\nGive a very brief answer.", "Yes.")])]  # fmt: skip
    cauldron(rows, "docvqa").to_parquet(cache.parent / "docvqa.parquet")
    built = datasets.load_dataset(
        "parquet", data_files={"train": str(cache.parent / "docvqa.parquet")}, cache_dir=str(cache.parent / "build")
    )
    made = Path(built["train"].cache_files[0]["filename"]).parent
    target = cache / "HuggingFaceM4___the_cauldron" / "docvqa" / "0.0.0" / "8175eafce5bdbbc3879bf0333021562e80fbf4db"
    target.mkdir(parents=True)
    shutil.copy(made / "parquet-train.arrow", target / "the_cauldron-train.arrow")
    info = json.loads((made / "dataset_info.json").read_text())
    (target / "dataset_info.json").write_text(
        json.dumps({**info, "dataset_name": "the_cauldron", "config_name": "docvqa"})
    )
    return cache


DOCVQA_RECORD = {
    "id": "train-0000000000", "source": "cauldron", "task": "vqa",
    "conversations": [
        {"images": ["train/0000000.jpg"], "user": "What is the date?\nGive a very brief answer.",
         "assistant": "1/8/93."},
        {"images": [], "user": "Is it signed?\nGive a very brief answer.", "assistant": "Yes."},  # docvqa stays vqa
    ],
}  # fmt: skip


def test_load_dataset_cache_folder_and_forced_task(tmp_path: Path) -> None:
    cache = _docvqa_cache(tmp_path / "hf" / "datasets")
    run(cache / "HuggingFaceM4___the_cauldron", tmp_path / "out")
    assert jsonl(tmp_path / "out" / "cauldron_train.jsonl") == [DOCVQA_RECORD]
    result = run(cache / "HuggingFaceM4___the_cauldron", tmp_path / "out2", task="binary")
    assert [f.reason for f in result.failures] == ["row 0: turn 1 answers '1/8/93.', not yes or no (task binary)"]


def test_hub_name_offline_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    cache = _docvqa_cache(tmp_path / "hf" / "datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # the name is no local path
    run("HuggingFaceM4/the_cauldron", tmp_path / "out", subset="docvqa")
    assert jsonl(tmp_path / "out" / "cauldron_train.jsonl") == [DOCVQA_RECORD]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["params"]["source"] == "HuggingFaceM4/the_cauldron"
    with pytest.raises(ConvertUsageError, match="could not load HuggingFaceM4/the_cauldron subset vqav2"):
        run("HuggingFaceM4/the_cauldron", tmp_path / "o2", subset="vqav2")


def test_cli_workers_and_missing_pyarrow(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from phi3v_data.cli import main

    args = ["convert", "cauldron", str(hub / "hateful_memes"), "--out"]
    result = CliRunner().invoke(main, [*args, str(tmp_path / "j2"), "-j", "2"])
    assert result.exit_code == 0, result.output
    run(hub / "hateful_memes", tmp_path / "j1")
    train = "cauldron_train.jsonl"
    assert (tmp_path / "j2" / train).read_bytes() == (tmp_path / "j1" / train).read_bytes()
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails as on a machine without it
    result = CliRunner().invoke(main, [*args, str(tmp_path / "none")])
    assert result.exit_code == 2 and "pip install 'phi3v[hf]'" in result.output, result.output


def test_the_module_docstring_example_is_exact(tmp_path: Path) -> None:
    import converters.cauldron as module

    raw, expected = (" ".join(s.split()) for s in re.findall(r"::\n\n((?:    .*\n)+)", module.__doc__ or ""))
    row = json.loads(raw)
    row["images"][0]["bytes"] = encoded("white")
    (tmp_path / "hateful_memes").mkdir()
    datasets.Dataset.from_dict({k: [v] for k, v in row.items()}, features=FEATURES).to_parquet(
        tmp_path / "hateful_memes" / "train-00000-of-00001.parquet"
    )
    run(tmp_path / "hateful_memes", tmp_path / "out")
    assert jsonl(tmp_path / "out" / "cauldron_train.jsonl") == [json.loads(expected)]
