"""NLVR2 converter on a miniature copy of the official release: nested train images, flat dev/test1 images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from converters.nlvr2 import NLVR2Converter, NLVR2Options
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConvertUsageError

QUIET = Console(file=io.StringIO())
PROMPT = (
    'The first image is the left one, the second the right one. Is this statement about the pair true? "{}"\n'
    "Answer yes or no."
)


def png(path: Path, color: str = "white") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (18, 14), color).save(path)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, lines: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def run(source: Path, out: Path, **options: object):
    return run_converter(NLVR2Converter(NLVR2Options(**options)), source, out, workers=1, console=QUIET)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    root = tmp_path / "nlvr2"
    for k in (0, 1):
        png(root / "images" / "train" / "12" / f"train-10171-0-img{k}.png", "red")
        png(root / "dev" / f"dev-850-0-img{k}.png", "blue")
        png(root / "test1" / f"test1-0-1-img{k}.png", "green")
    png(root / "dev" / "dev-851-2-img0.png")  # its img1 is missing
    url = {"left_url": "http://example.invalid/l.jpg", "right_url": "http://example.invalid/r.jpg", "writer": "103"}
    write_lines(root / "data" / "train.json", [
        {"identifier": "train-10171-0-0", "sentence": "An image shows one leather pencil case.", "label": "True",
         "directory": "12", **url},
        {"identifier": "train-10171-0-1", "sentence": "There are three pencil cases.", "label": "False",
         "directory": 12, **url},
        {"identifier": "train-10171-1-0", "sentence": "Escape.", "label": "True", "directory": "../../..", **url},
    ])
    write_lines(root / "data" / "dev.json", [
        {"identifier": "dev-850-0-0", "sentence": "One image shows exactly two brown acorns.", "label": "False", **url},
        {"identifier": "dev-851-2-0", "sentence": "Half an image pair.", "label": "True", **url},
        {"identifier": "dev-850-0-1", "sentence": "There are acorns.", "label": "True", **url},
        {"identifier": "dev-850", "sentence": "bad identifier", "label": "True"},
        '{"identifier": "dev-850-0-2", "sentence": "bad label", "label": "Maybe"}',
        "{not json",
    ])
    write_lines(root / "data" / "test1.json", [{"identifier": "test1-0-1-3", "sentence": "Dogs.", **url}])
    return root


def test_release_exact_records_pairs_and_unlabeled_split(release: Path, tmp_path: Path) -> None:
    result = run(release, tmp_path / "out")
    out = tmp_path / "out"
    dev = jsonl(out / "nlvr2_val.jsonl")
    assert dev[0] == {
        "id": "dev-850-0-0",
        "source": "nlvr2",
        "source_split": "dev",
        "task": "binary",
        "conversations": [{
            "images": ["val/dev-850-0-img0.png", "val/dev-850-0-img1.png"],
            "user": PROMPT.format("One image shows exactly two brown acorns."),
            "assistant": "no",
            "reference": {"label": 0},
        }],
    }
    # sentences about one pair are kept together, in order of the pair's first appearance
    assert [(r["id"], r["conversations"][0]["assistant"]) for r in dev] == [
        ("dev-850-0-0", "no"), ("dev-850-0-1", "yes")
    ]
    train = jsonl(out / "nlvr2_train.jsonl")
    assert [r["id"] for r in train] == ["train-10171-0-0", "train-10171-0-1"]
    assert train[1]["conversations"][0]["images"] == ["train/train-10171-0-img0.png", "train/train-10171-0-img1.png"]
    assert (out / "images" / "train" / "train-10171-0-img1.png").is_file()
    assert jsonl(out / "nlvr2_test.jsonl") == [{
        "id": "test1-0-1-3", "source": "nlvr2", "source_split": "test1", "task": "binary",
        "conversations": [{"images": ["test/test1-0-1-img0.png", "test/test1-0-1-img1.png"],
                           "user": PROMPT.format("Dogs."),
                           "assistant": None}],
    }]
    assert result.counts == {"train": 2, "val": 2, "test": 1}


def test_missing_image_escape_and_malformed_lines_are_failures(release: Path, tmp_path: Path) -> None:
    result = run(release, tmp_path / "out")
    found = {(f.file, f.line): f.reason for f in result.failures}
    assert set(found) == {
        ("data/train.json", 3), ("data/dev.json", 2), ("data/dev.json", 4), ("data/dev.json", 5), ("data/dev.json", 6)
    }
    assert found[("data/train.json", 3)] == "refused: 'train/../../../train-10171-1-img0.png' climbs out with '..'"
    assert found[("data/dev.json", 2)].startswith("image dev-851-2-img1.png not found under")
    assert found[("data/dev.json", 4)].startswith("malformed line: identifier")
    assert found[("data/dev.json", 5)] == "malformed line: label: expected 'True' or 'False', got 'Maybe'"
    assert found[("data/dev.json", 6)].startswith("invalid JSON")


def test_flat_images_folder_per_split_and_custom_prompt(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for k in (0, 1):
        png(root / "images" / "dev" / f"dev-1-0-img{k}.png")
    write_lines(root / "dev.json", [{"identifier": "dev-1-0-0", "sentence": "Two dogs.", "label": True}])
    run(root, tmp_path / "out", prompt="Claim: {sentence}")
    assert jsonl(tmp_path / "out" / "nlvr2_val.jsonl")[0]["conversations"][0] == {
        "images": ["val/dev-1-0-img0.png", "val/dev-1-0-img1.png"], "user": "Claim: Two dogs.", "assistant": "yes",
        "reference": {"label": 1},
    }


def test_unknown_layout_and_bad_prompt(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "balanced_dev.json").write_text("")
    with pytest.raises(ConvertUsageError, match="test1.json"):
        run(tmp_path / "src", tmp_path / "out")
    with pytest.raises(ValueError, match=r"\{sentence\}"):
        NLVR2Options(prompt="True or false?")


def test_the_module_docstring_example_is_exact(tmp_path: Path) -> None:
    import re

    import converters.nlvr2 as module

    raw, expected = (" ".join(s.split()) for s in re.findall(r"::\n\n((?:    .*\n)+)", module.__doc__ or ""))
    for k in (0, 1):
        png(tmp_path / "src" / "dev" / f"dev-850-0-img{k}.png")
    write_lines(tmp_path / "src" / "dev.json", [raw.replace("…", "x")])
    run(tmp_path / "src", tmp_path / "out")
    assert jsonl(tmp_path / "out" / "nlvr2_val.jsonl") == [json.loads(expected)]


def test_json_in_a_clone_of_the_nlvr_repo_and_images_elsewhere(tmp_path: Path) -> None:
    """lil-lab/nlvr keeps the annotations at nlvr/nlvr2/data/*.json; the images are a separate download."""
    clone = tmp_path / "nlvr" / "nlvr2"
    (clone / "data" / "balanced").mkdir(parents=True)  # the clone's other json files are not splits
    (clone / "data" / "balanced" / "balanced_dev.json").write_text("")
    write_lines(
        clone / "data" / "train.json",
        [{"identifier": "train-7-1-0", "sentence": "Dogs.", "label": "True", "directory": "3"}],
    )
    write_lines(clone / "data" / "dev.json", [{"identifier": "dev-2-0-1", "sentence": "Cats.", "label": "False"}])
    images = tmp_path / "downloads" / "nlvr2_images"
    for k in (0, 1):
        png(images / "train" / "3" / f"train-7-1-img{k}.png", "red")
        png(images / "dev" / f"dev-2-0-img{k}.png", "blue")
    png(images / "train" / "4" / "train-7-1-img0.png", "green")  # a same-named file elsewhere: the directory decides
    without = run(clone, tmp_path / "no-images")
    assert without.counts == {} and len(without.failures) == 2
    assert without.failures[0].reason.endswith("(images kept elsewhere? pass --images DIR)")
    result = run(clone, tmp_path / "out", images=images)
    assert result.counts == {"train": 1, "val": 1} and not result.failures
    assert (tmp_path / "out" / "images" / "train" / "train-7-1-img0.png").read_bytes() == (
        images / "train" / "3" / "train-7-1-img0.png"
    ).read_bytes()
    assert jsonl(tmp_path / "out" / "nlvr2_val.jsonl")[0]["conversations"][0]["images"] == [
        "val/dev-2-0-img0.png", "val/dev-2-0-img1.png"]
    with pytest.raises(ValueError, match="not a folder"):
        NLVR2Options(images=tmp_path / "nope")
