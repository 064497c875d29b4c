"""schemas.layout: the one spelling of a dataset directory that every reader and writer uses."""

from pathlib import Path

from schemas import layout


def test_split_names_follow_the_shared_prefix(tmp_path: Path) -> None:
    for name in ("hateful_memes_train.jsonl", "hateful_memes_dev_unseen.jsonl", "hateful_memes_test_seen.jsonl"):
        (tmp_path / name).write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert layout.splits_in(tmp_path) == ["dev_unseen", "test_seen", "train"]
    assert [p.name for p in layout.split_files(tmp_path, "train")] == ["hateful_memes_train.jsonl"]
    assert layout.split_files(tmp_path, "val") == []


def test_a_lone_file_splits_at_its_last_underscore(tmp_path: Path) -> None:
    (tmp_path / "ucf101_val.jsonl").write_text("")
    assert layout.splits_in(tmp_path) == ["val"]
    assert layout.split_of(Path("x/hateful_memes_dev.jsonl")) == "dev"
    assert layout.split_of(Path("x/records.jsonl")) is None
    assert layout.split_of(Path("x/a_b.json")) is None


def test_paths(tmp_path: Path) -> None:
    assert layout.split_file_name("ucf101", "train") == "ucf101_train.jsonl"
    assert layout.images_dir(tmp_path) == tmp_path / "images"
    assert layout.images_dir(tmp_path / "ucf101_train.jsonl") == tmp_path / "images"
    assert layout.manifest_path(tmp_path) == tmp_path / "manifest.json"
    assert layout.failures_path(tmp_path) == tmp_path / "reports" / "failures.jsonl"


def test_a_data_file_of_any_name_has_its_images_beside_it() -> None:
    assert layout.images_beside(Path("d/x.json")) == Path("d/images")  # images_dir would take x.json for a folder
    assert layout.images_beside(Path("/dev/fd/63")) == Path("/dev/fd/images")
    assert layout.images_beside(Path("d/ucf101_val.jsonl")) == layout.images_dir(Path("d/ucf101_val.jsonl"))
