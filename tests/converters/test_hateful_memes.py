"""Hateful Memes converter on a miniature copy of the official release (with its quirks)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from converters.hateful_memes import HatefulMemesConverter, HatefulMemesOptions
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConvertUsageError

QUIET = Console(file=io.StringIO())


def png(path: Path, color: str = "white") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).save(path)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, lines: list[object]) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def run(source: Path, out: Path, **options: object):
    return run_converter(HatefulMemesConverter(HatefulMemesOptions(**options)), source, out, workers=1, console=QUIET)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    root = tmp_path / "hateful_memes"
    for name in ("01235", "42953", "08291", "16395"):
        png(root / "img" / f"{name}.png")
    png(tmp_path / "secret.png")
    write_lines(root / "train.jsonl", [
        {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that matters"},
        {"id": 1235, "img": "img/01235.png", "label": 1, "text": "having a bad day? you could be a"},
        '{"id": 5, "img": "img/00005.png", "label"',
        {"id": 6, "img": "../secret.png", "label": 0, "text": "escape"},
        {"id": 7, "img": "img/00007.png", "label": 0, "text": "nobody has this image"},
        {"id": 8, "img": "img/08291.png", "label": 2, "text": "a bad label"},
        {"id": 9, "img": "img/evil.png", "label": 0, "text": "a symlink out of the root"},
    ])
    (root / "img" / "evil.png").symlink_to(tmp_path / "secret.png")
    write_lines(root / "dev_seen.jsonl", [{"id": 8291, "img": "img/08291.png", "label": 1, "text": "white people is this a shooting range"}])  # noqa: E501
    write_lines(root / "test_unseen.jsonl", [{"id": 16395, "img": "img/16395.png", "text": "handjobs sold seperately"}])
    return root


def test_release_exact_records_leading_zero_images_and_unlabeled_test(release: Path, tmp_path: Path) -> None:
    result = run(release, tmp_path / "out")
    out = tmp_path / "out"
    train = jsonl(out / "hateful_memes_train.jsonl")
    assert train[1] == {
        "id": "train-1235",
        "source": "hateful-memes",
        "task": "binary",
        "conversations": [{
            "images": ["train/01235.png"],
            "user": 'The text on this meme reads: "having a bad day? you could be a"\n'
                    "Is this meme hateful? Answer yes or no.",
            "assistant": "yes",
            "reference": {"label": 1},
        }],
    }
    assert [(r["id"], r["conversations"][0]["assistant"]) for r in train] == [
        ("train-42953", "no"), ("train-1235", "yes")
    ]
    assert (out / "images" / "train" / "01235.png").is_file()
    assert jsonl(out / "hateful_memes_val.jsonl")[0]["conversations"][0]["images"] == ["val/08291.png"]
    assert jsonl(out / "hateful_memes_test.jsonl") == [{
        "id": "test-16395", "source": "hateful-memes", "source_split": "test_unseen", "task": "binary",
        "conversations": [{"images": ["test/16395.png"],
                           "user": 'The text on this meme reads: "handjobs sold seperately"\n'
                                   "Is this meme hateful? Answer yes or no.",
                           "assistant": None}],
    }]
    assert result.counts == {"train": 2, "val": 1, "test": 1}


def test_bad_lines_are_reported_with_file_and_line_and_the_rest_continues(release: Path, tmp_path: Path) -> None:
    result = run(release, tmp_path / "out")
    found = {(f.file, f.line, f.split): f.reason for f in result.failures}
    assert set(found) == {("train.jsonl", n, "train") for n in (3, 4, 5, 6, 7)}
    assert found[("train.jsonl", 3, "train")].startswith("invalid JSON")
    assert found[("train.jsonl", 4, "train")] == "refused: '../secret.png' climbs out with '..'"
    assert found[("train.jsonl", 5, "train")].startswith("image 'img/00007.png' not found under")
    assert found[("train.jsonl", 6, "train")].startswith("malformed line: label")
    assert found[("train.jsonl", 7, "train")].startswith(
        "refused: img/evil.png is a symlink to a file outside the dataset"
    )
    failures = jsonl(tmp_path / "out" / "reports" / "failures.jsonl")
    assert {(f["file"], f["line"]) for f in failures} == {("train.jsonl", n) for n in (3, 4, 5, 6, 7)}


def test_older_release_in_data_folder_flat_images_and_custom_prompt(tmp_path: Path) -> None:
    data = tmp_path / "release" / "data"
    png(data / "flat" / "01235.png")  # not at img/…: found by file name
    write_lines(data / "dev.jsonl", [{"id": 1235, "img": "img/01235.png", "label": 0, "text": "hi"}])
    write_lines(data / "test.jsonl", [{"id": 1235, "img": "img/01235.png", "text": "hi"}])
    run(tmp_path / "release", tmp_path / "out", prompt="Meme: {text}. Hateful?")
    dev = jsonl(tmp_path / "out" / "hateful_memes_val.jsonl")
    assert dev[0]["source_split"] == "dev"
    assert dev[0]["conversations"][0] == {"images": ["val/01235.png"], "user": "Meme: hi. Hateful?", "assistant": "no",
                                          "reference": {"label": 0}}
    test = jsonl(tmp_path / "out" / "hateful_memes_test.jsonl")[0]
    assert "source_split" not in test and test["conversations"][0]["assistant"] is None


def test_a_line_without_label_in_a_labeled_file_is_a_failure(tmp_path: Path) -> None:
    png(tmp_path / "m" / "img" / "00001.png")
    write_lines(tmp_path / "m" / "train.jsonl", [
        {"id": 1, "img": "img/00001.png", "label": 1, "text": "a"},
        {"id": 2, "img": "img/00001.png", "text": "b"},
    ])
    result = run(tmp_path / "m", tmp_path / "out")
    assert result.counts == {"train": 1}
    assert [(f.line, f.reason) for f in result.failures] == [
        (2, "field 'label' is missing (other lines of this file have labels)")
    ]


def test_unknown_layout_and_bad_prompt(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "memes.csv").write_text("id,img\n")
    with pytest.raises(ConvertUsageError, match="dev_seen.jsonl"):
        run(tmp_path / "src", tmp_path / "out")
    with pytest.raises(ValueError, match=r"\{text\}"):
        HatefulMemesOptions(prompt="Is it hateful?")
    with pytest.raises(ValueError, match="unknown placeholder"):
        HatefulMemesOptions(prompt="{text} {label}")


def test_the_module_docstring_example_is_exact(tmp_path: Path) -> None:
    import re

    import converters.hateful_memes as module

    raw, expected = (" ".join(s.split()) for s in re.findall(r"::\n\n((?:    .*\n)+)", module.__doc__ or ""))
    png(tmp_path / "src" / json.loads(raw)["img"])
    (tmp_path / "src" / "dev_seen.jsonl").write_text(raw + "\n")
    run(tmp_path / "src", tmp_path / "out")
    assert jsonl(tmp_path / "out" / "hateful_memes_val.jsonl") == [json.loads(expected)]


def test_phase_two_release_gives_train_val_test_and_keeps_the_other_splits(tmp_path: Path) -> None:
    """All five files of the phase-2 release: dev_seen → val, test_unseen → test, dev_unseen/test_seen kept."""
    root = tmp_path / "hateful_memes"
    png(root / "img" / "01235.png")
    line = {"id": 1235, "img": "img/01235.png", "label": 1, "text": "t"}
    for name in ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen"):
        write_lines(root / f"{name}.jsonl", [line])
    result = run(root, tmp_path / "out")
    assert result.counts == {"train": 1, "val": 1, "dev_unseen": 1, "test_seen": 1, "test": 1}
    sources = {s: jsonl(tmp_path / "out" / f"hateful_memes_{s}.jsonl")[0].get("source_split") for s in result.counts}
    assert sources == {"train": None, "val": "dev_seen", "dev_unseen": None, "test_seen": None, "test": "test_unseen"}
    assert jsonl(tmp_path / "out" / "hateful_memes_test_seen.jsonl")[0]["id"] == "test_seen-1235"
