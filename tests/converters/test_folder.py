"""The folder converter: class folders (split by ratio or pre-split), caption pairs, CSV/JSONL manifests."""

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from converters.folder import FolderConverter, FolderOptions, ratio_split
from phi3v_data.cli import main
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConvertUsageError

PROMPT = "Classify the image into one of the following classes: cat, dog."


def _png(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3, 2), colour).save(path)
    return path


def _jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 3), "green").save(path, quality=90)
    return path


def _read(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"folder_{split}.jsonl").read_text().splitlines()]


def _classified(split: str, index: int, image: str, label: str, prompt: str = PROMPT) -> dict:
    return {"id": f"{split}-{index:010d}", "source": "folder", "task": "classification",
            "conversations": [{"images": [image], "user": prompt, "assistant": label}]}


def test_ratio_split_is_deterministic_and_counts_round(tmp_path: Path) -> None:
    keys = [str(i) for i in range(10)]
    chosen, carved = ratio_split({"": keys}, seed=3, val_ratio=0.2, test_ratio=0.1)
    assert chosen == {**dict.fromkeys(keys, "train"), "2": "val", "8": "val", "0": "test"}
    assert [c.describe() for c in carved] == [
        "val: 2 of 10 train items (20.0%, asked 20%)", "test: 1 of 10 train items (10.0%, asked 10%)"
    ]
    # input order is irrelevant
    assert ratio_split({"": list(reversed(keys))}, seed=3, val_ratio=0.2, test_ratio=0.1)[0] == chosen
    assert ratio_split({"": keys}, seed=4, val_ratio=0.2, test_ratio=0.1)[0] == {
        **dict.fromkeys(keys, "train"), "3": "val", "6": "val", "2": "test"
    }


def test_a_small_source_still_gets_a_val_split_and_the_table_says_so(tmp_path: Path) -> None:
    """4 classes of 2 images at --val-ratio 0.1: round(0.8) = 1 image, where per class rounding gave none."""
    root = tmp_path / "pets"
    for cls in ("cat", "dog", "eel", "fox"):
        for i in (1, 2):
            _png(root / cls / f"{i}.png")
    result = CliRunner().invoke(main, ["convert", "folder", str(root), "--out", str(tmp_path / "out"), "-j", "1",
                                       "--val-ratio", "0.1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert [len(_read(tmp_path / "out", s)) for s in ("train", "val")] == [7, 1]
    assert "carved val: 1 of 8 train items (12.5%, asked 10%)" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["carved"] == [
        {"split": "val", "count": 1, "total": 8, "requested": 0.1, "source": "train", "note": None}
    ]


def test_class_folders_split_per_class_by_ratio(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for name in "abcd":
        _png(root / "cat" / f"{name}.png")
    _jpg(root / "dog" / "e.jpg")
    _jpg(root / "dog" / "puppies" / "f.jpg")  # nested folders belong to their class, as in ImageFolder
    _png(root / "cat" / ".hidden.png")
    (root / "cat" / "notes.md").write_text("not an image")
    (root / "dog" / "g.svg").write_text("<svg/>")  # unsupported extension: ignored
    _png(root / "loose.png")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")

    result = run_converter(FolderConverter(FolderOptions(val_ratio=0.5)), root, tmp_path / "out", workers=1)

    # val gets round(7 × 0.5) = 4: cat (5 images, share 2.5) gives 3 — broken.png among them, so 2 arrive — dog 1
    assert _read(tmp_path / "out", "train") == [
        _classified("train", 0, "train/cat/b.png", "cat"),
        _classified("train", 1, "train/cat/c.png", "cat"),
        _classified("train", 2, "train/dog/e.jpg", "dog"),
    ]
    assert _read(tmp_path / "out", "val") == [
        _classified("val", 0, "val/cat/a.png", "cat"),
        _classified("val", 1, "val/cat/d.png", "cat"),
        _classified("val", 2, "val/dog/puppies/f.jpg", "dog"),
    ]
    assert [(f.file, f.reason) for f in result.failures] == [
        ("loose.png", "image is not inside a class folder"),
        ("cat/broken.png", f"{root / 'cat' / 'broken.png'}: not a recognised image format"),
    ]
    copied = tmp_path / "out" / "images" / "val" / "dog" / "puppies" / "f.jpg"
    assert copied.read_bytes() == (root / "dog" / "puppies" / "f.jpg").read_bytes()


def test_class_folders_split_is_the_same_on_every_run(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for i in range(6):
        _png(root / ("cat" if i % 2 else "dog") / f"{i}.png")
    for out in ("one", "two"):
        run_converter(FolderConverter(FolderOptions(val_ratio=0.3, seed=5)), root, tmp_path / out, workers=1)
    for split in ("train", "val"):
        name = f"folder_{split}.jsonl"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert len(_read(tmp_path / "one", "val")) == 2  # round(6 × 0.3), one per class


def test_pre_split_folders_are_kept_and_the_prompt_is_a_template(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _png(root / "train" / "cat" / "x.png")
    _png(root / "train" / "dog" / "y.png")
    _png(root / "validation" / "cat" / "z.png")
    _png(root / "test" / "bird" / "w.png")
    options = FolderOptions(mode="classes", prompt="Which animal ({classes})?", val_ratio=0.5)
    run_converter(FolderConverter(options), root, tmp_path / "out", workers=1)

    prompt = "Which animal (bird, cat, dog)?"
    assert _read(tmp_path / "out", "train") == [
        _classified("train", 0, "train/cat/x.png", "cat", prompt),
        _classified("train", 1, "train/dog/y.png", "dog", prompt),
    ]
    assert _read(tmp_path / "out", "val") == [_classified("val", 0, "val/cat/z.png", "cat", prompt)]
    assert _read(tmp_path / "out", "test") == [_classified("test", 0, "test/bird/w.png", "bird", prompt)]


def test_pre_split_without_val_carves_val_from_train(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for name in ("x1", "x2", "x3"):
        _png(root / "train" / "cat" / f"{name}.png")
    _png(root / "test" / "cat" / "t.png")
    run_converter(FolderConverter(FolderOptions(val_ratio=0.34, test_ratio=0.5)), root, tmp_path / "out", workers=1)

    prompt = "Classify the image into one of the following classes: cat."
    assert [r["conversations"][0]["images"] for r in _read(tmp_path / "out", "train")] == [
        ["train/cat/x2.png"], ["train/cat/x3.png"]
    ]
    assert _read(tmp_path / "out", "val") == [_classified("val", 0, "val/cat/x1.png", "cat", prompt)]
    assert _read(tmp_path / "out", "test") == [_classified("test", 0, "test/cat/t.png", "cat", prompt)]


def test_caption_pairs(tmp_path: Path) -> None:
    root = tmp_path / "caps"
    _png(root / "a.png")
    (root / "a.txt").write_text("  A red square.\n")
    _jpg(root / "sub" / "b.jpg")
    (root / "sub" / "b.txt").write_text("A green block.")
    _png(root / "c.png")
    _png(root / "d.png")
    (root / "d.txt").write_text("\n")
    result = run_converter(FolderConverter(FolderOptions(val_ratio=0.0)), root, tmp_path / "out", workers=1)

    caption = lambda i, image, text: {"id": f"train-{i:010d}", "source": "folder", "task": "caption",  # noqa: E731
                                      "conversations": [
                                          {"images": [image], "user": "Describe the image.", "assistant": text}
                                      ]}
    assert _read(tmp_path / "out", "train") == [
        caption(0, "train/a.png", "A red square."), caption(1, "train/sub/b.jpg", "A green block.")
    ]
    assert [asdict(f) for f in result.failures] == [
        {"file": "c.png", "reason": "no caption: expected c.txt beside it", "split": "train", "line": None},
        {"file": "d.png", "reason": "d.txt: the caption file is empty", "split": "train", "line": None},
    ]


def test_csv_manifest(tmp_path: Path) -> None:
    root = tmp_path / "qa"
    _png(root / "photos" / "a.png")
    _jpg(root / "photos" / "b.jpg")
    _png(tmp_path / "outside.png")
    (root / "manifest.csv").write_text(
        "image,question,answer,split,id\n"
        "photos/a.png|photos/b.jpg,Which is larger?,the left one,val,q1\n"
        "./photos/b.jpg,\"Colour, please?\",green,,\n"
        "photos/a.png,What is it?,,test,q3\n"
        "../outside.png,Escape?,no,train,\n"
        "photos/a.png,,no question,train,\n"
        "photos/missing.png,Where?,nowhere,train,\n"
    )
    result = run_converter(FolderConverter(FolderOptions(val_ratio=0.0)), root, tmp_path / "out", workers=1)

    def vqa(id_: str, images: list[str], user: str, answer: str | None) -> dict:
        turn = {"images": images, "user": user, "assistant": answer}
        return {"id": id_, "source": "folder", "task": "vqa", "conversations": [turn]}

    out = tmp_path / "out"
    assert _read(out, "val") == [
        vqa("q1", ["val/photos/a.png", "val/photos/b.jpg"], "Which is larger?", "the left one")
    ]
    assert _read(out, "train") == [vqa("train-0000000000", ["train/photos/b.jpg"], "Colour, please?", "green")]
    assert _read(out, "test") == [vqa("q3", ["test/photos/a.png"], "What is it?", None)]
    assert [(f.file, f.line, f.reason) for f in result.failures] == [
        ("manifest.csv", 5, "image refused: '../outside.png' climbs out with '..'"),
        ("manifest.csv", 6, "malformed row: question: String should have at least 1 character (got \"\")"),
        ("manifest.csv:7", None, f"{root / 'photos' / 'missing.png'}: file does not exist"),
    ]


def test_jsonl_manifest_with_image_lists_and_a_prompt_template(tmp_path: Path) -> None:
    root = tmp_path / "qa"
    _png(root / "a.png")
    _png(root / "b.png", "blue")
    rows = [
        {"image": ["a.png", "b.png"], "question": "How many are red?", "answer": 1, "id": 10},
        {"image": "a.png", "question": "Colour?", "answer": "red"},
        {"image": [], "question": "No image?", "answer": "x"},
    ]
    (root / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    options = FolderOptions(prompt="Answer briefly. {question}", task="chat", val_ratio=0.5)
    result = run_converter(FolderConverter(options), root / "qa.jsonl", tmp_path / "out", workers=1)

    chat = lambda id_, images, user, answer: {"id": id_, "source": "folder", "task": "chat",  # noqa: E731
                                              "conversations": [{"images": images, "user": user, "assistant": answer}]}
    # the two rows without a split: seed 0 sends line 2 to val, line 1 to train
    assert _read(tmp_path / "out", "train") == [
        chat("10", ["train/a.png", "train/b.png"], "Answer briefly. How many are red?", "1")
    ]
    assert _read(tmp_path / "out", "val") == [chat("val-0000000000", ["val/a.png"], "Answer briefly. Colour?", "red")]
    assert [(f.line, f.reason) for f in result.failures] == [
        (3, "malformed row: image: List should have at least 1 item after validation, not 0")
    ]


@pytest.mark.parametrize(
    ("files", "options", "message"),
    [
        ({"m.csv": "image,question\na.png,Q\n"}, {}, "the header line has no column answer (it has image, question)"),
        ({"a.csv": "", "b.jsonl": ""}, {"mode": "manifest"},
         "holds 2 .csv/.jsonl files: give the manifest file itself"),
        ({"cat/a.png": None}, {"prompt": "Pick one of {labels}."},
         "--prompt uses {labels}, which classes mode does not fill (it fills: {classes})"),
        ({"a.png": None, "a.txt": "cap"}, {"prompt": "Describe {"},
         "--prompt 'Describe {': Single '{' encountered in format string"),
    ],
)
def test_usage_errors_stop_before_any_work(tmp_path: Path, files: dict, options: dict, message: str) -> None:
    (tmp_path / "src").mkdir()
    for name, text in files.items():
        if text is None:
            _png(tmp_path / "src" / name)
        else:
            (tmp_path / "src" / name).write_text(text)
    with pytest.raises(ConvertUsageError, match=re.escape(message)):
        run_converter(FolderConverter(FolderOptions(**options)), tmp_path / "src", tmp_path / "out", workers=1)


def test_cli_flags_reach_the_converter(tmp_path: Path) -> None:
    _png(tmp_path / "src" / "cat" / "a.png")
    _png(tmp_path / "src" / "dog" / "b.png")
    args = ["convert", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "-j", "1", "--mode", "classes",
            "--prompt", "Cat or dog? ({classes})", "--val-ratio", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [r["conversations"][0]["user"] for r in _read(tmp_path / "out", "train")] == ["Cat or dog? (cat, dog)"] * 2

    bad = CliRunner().invoke(
        main,
        ["convert", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "o2"), "--val-ratio", "0.6",
         "--test-ratio", "0.5"],
    )
    assert bad.exit_code == 2
    assert "val_ratio + test_ratio must stay below 1" in bad.output


def test_latin1_names_are_failures_and_every_record_written_validates(tmp_path: Path) -> None:
    """A class folder and a file named in Latin-1 (bytes Python keeps as lone surrogates) are each reported; the
    class list of the other records' prompt leaves the Latin-1 class out, so every written record is valid."""
    import os

    src = tmp_path / "src"
    _png(src / "cat" / "a.png")
    _png(src / "dog" / "b.png")
    latin_class = Path(os.fsdecode(bytes(src) + b"/caf\xe9"))  # "café" in Latin-1
    _png(latin_class / "c.png")
    _png(Path(os.fsdecode(bytes(src) + b"/dog/d\xe9j\xe0.png")))  # "déjà.png" in Latin-1
    result = CliRunner().invoke(main, ["convert", "folder", str(src), "--out", str(tmp_path / "out"), "-j", "1",
                                       "--val-ratio", "0"])
    assert result.exit_code == 0, result.output
    failures = [json.loads(line) for line in (tmp_path / "out" / "reports" / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["file"] for f in failures) == ["caf\\xe9/c.png", "dog/d\\xe9j\\xe0.png"]
    assert all(f["reason"].startswith("the name is not valid UTF-8") for f in failures)
    assert _read(tmp_path / "out", "train") == [_classified("train", 0, "train/cat/a.png", "cat"),
                                                _classified("train", 1, "train/dog/b.png", "dog")]
    checked = CliRunner().invoke(main, ["validate", str(tmp_path / "out" / "folder_train.jsonl"), "-q"])
    assert checked.exit_code == 0, checked.output
    said = " ".join(result.output.split())
    assert "2 failure(s)" in said and "failed caf\\xe9/c.png: the name is not valid UTF-8" in said
