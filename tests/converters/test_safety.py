"""Nothing lost, nothing read from outside (issue #11): hostile and careless input against every converter.

Each test builds its hostile fixture on disk and pins what the README's "Every converter" section promises.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from converters.docvqa import DocVQAConverter
from converters.folder import FolderConverter, FolderOptions
from converters.hateful_memes import HatefulMemesConverter
from converters.llava import LlavaConverter, LlavaOptions
from converters.nlvr2 import NLVR2Converter
from converters.video import VideoConverter
from phi3v_data.cli import main
from phi3v_data.convert import OutputLock, OutputLockedError, run_converter
from phi3v_data.converter import Converter, ConvertUsageError, ImageWriter, Item

QUIET = Console(file=io.StringIO())
DEEP = "[" * 50_000 + "]" * 50_000  # json.loads raises RecursionError on it


def png(path: Path, color: str = "white") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format="PNG")
    return path


def lines(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run(converter: Converter, source: Path, out: Path, **kwargs: object):
    return run_converter(converter, source, out, workers=1, console=QUIET, **kwargs)


def reasons(result) -> dict[tuple[str, int | None], str]:
    return {(f.file, f.line): f.reason for f in result.failures}


def records(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def pets(root: Path) -> Path:
    for cls in ("cat", "dog"):
        for k in range(2):
            png(root / cls / f"{k}.png")
    return root


# -- --overwrite deletes only what a run recorded; --out never overlaps an input ----------------------------------


def test_overwrite_deletes_only_the_recorded_outputs_and_stale_splits(tmp_path: Path) -> None:
    src, out = pets(tmp_path / "pets"), tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("keep me")
    run(FolderConverter(FolderOptions(val_ratio=0.5)), src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["outputs"]) >= {"images", "folder_train.jsonl", "folder_val.jsonl", "manifest.json"}
    assert "notes" not in manifest["outputs"]

    run(FolderConverter(FolderOptions(val_ratio=0.0)), src, out, overwrite=True)
    assert not (out / "folder_val.jsonl").exists()  # the earlier run's split is gone, not left stale
    assert sorted(p.name for p in (out / "images").iterdir()) == ["train"]
    assert len(records(out, "folder_train.jsonl")) == 4
    assert (out / "notes" / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in src.rglob("*.png")) == ["0.png", "0.png", "1.png", "1.png"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_images_folder_no_run_recorded_is_never_deleted_nor_written(tmp_path: Path, overwrite: bool) -> None:
    src, out = pets(tmp_path / "pets"), tmp_path / "out"
    photo = png(out / "images" / "holiday.png", "red")
    with pytest.raises(ConvertUsageError, match="no earlier conversion recorded"):
        run(FolderConverter(), src, out, overwrite=overwrite)
    assert photo.is_file() and [p.name for p in (out / "images").iterdir()] == ["holiday.png"]


def test_a_manifest_listing_paths_outside_out_deletes_nothing_there(tmp_path: Path) -> None:
    src, out = pets(tmp_path / "pets"), tmp_path / "out"
    run(FolderConverter(), src, out)
    victim = png(tmp_path / "victim.png")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["outputs"] += ["../victim.png", str(victim), "../pets"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    run(FolderConverter(FolderOptions(seed=1)), src, out, overwrite=True)
    assert victim.is_file() and len(list(src.rglob("*.png"))) == 4


CONVERTERS = ["video", "docvqa", "hateful-memes", "nlvr2", "folder", "llava", "sharegpt"]


@pytest.mark.parametrize("name", CONVERTERS)
def test_out_equal_to_inside_or_containing_the_source_is_refused(tmp_path: Path, name: str) -> None:
    src = pets(tmp_path / "data" / "src")
    source = lines(src / "rows.json", []) if name in ("llava", "sharegpt") else src
    for out, words in ((source, "is the source"), (tmp_path / "data", "contains the source")):
        result = CliRunner().invoke(main, ["convert", name, str(source), "--out", str(out), "--overwrite"])
        assert result.exit_code == 2, result.output
        assert words in result.output
    if source.is_dir():
        result = CliRunner().invoke(main, ["convert", name, str(source), "--out", str(source / "out")])
        assert result.exit_code == 2 and "is inside the source" in result.output
    assert len(list(src.rglob("*.png"))) == 4 and not (tmp_path / "data" / "manifest.json").exists()


def test_out_containing_the_image_folder_is_refused(tmp_path: Path) -> None:
    rows = lines(tmp_path / "rows.jsonl", [])
    png(tmp_path / "out" / "coco" / "a.png")
    with pytest.raises(ConvertUsageError, match="contains --image-folder") as info:
        run(LlavaConverter(LlavaOptions(image_folder=tmp_path / "out" / "coco")), rows, tmp_path / "out")
    assert info.value.exit_code == 2


# -- one writer per output directory; workers die with the main process --------------------------------------------


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    src, out = pets(tmp_path / "pets"), tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys
            fd = os.open({str(out / '.phi3v-convert.lock')!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, str(os.getpid()).encode())
            print("locked", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"PID {holder.pid}"):
            run(FolderConverter(), src, out)
    finally:
        holder.communicate("")
    assert not (out / "images").exists()
    result = run(FolderConverter(), src, out)  # the holder ended: its lock file is simply taken over
    assert sum(result.counts.values()) == 4
    assert (out / ".phi3v-convert.lock").read_text().strip() == str(os.getpid())


def test_the_lock_is_released_after_the_run_and_excludes_while_held(tmp_path: Path) -> None:
    with OutputLock(tmp_path / "out"):
        with pytest.raises(OutputLockedError, match=f"PID {os.getpid()}"):
            with OutputLock(tmp_path / "out"):
                pass
    with OutputLock(tmp_path / "out"):  # free again
        pass


class SleepyConverter(Converter):
    """Each item records its worker's pid in a file, then takes long enough to be killed mid-item."""

    name = "sleepy"
    output_name = "sleepy"

    def plan(self, source: Path) -> Iterator[Item]:
        for k in range(4):
            yield Item(str(k), "train", str(source))

    def convert(self, item: Item, out: ImageWriter) -> list[dict]:
        Path(item.payload, f"worker-{os.getpid()}").touch()
        time.sleep(30)
        out.save(Image.new("RGB", (4, 4)), f"train/{item.key}.png")
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_stop_when_the_main_process_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from rich.console import Console
        from test_safety import SleepyConverter
        from phi3v_data.convert import run_converter
        run_converter(SleepyConverter(), Path({str(pids)!r}), Path({str(tmp_path / 'out')!r}), workers=2,
                      console=Console(stderr=True, quiet=True))
    """)
    main_process = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2 and main_process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.name.split("-")[1]) for p in pids.iterdir()]
        assert len(workers) == 2, main_process.poll()
    finally:
        main_process.send_signal(signal.SIGKILL)
        main_process.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    assert not list((tmp_path / "out" / "images").rglob("*.png"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# -- output path collisions are reported, never silent ------------------------------------------------------------


def test_folder_val_and_valid_mapping_to_one_image_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    png(src / "train" / "cat" / "0.png")
    png(src / "val" / "cat" / "1.png", "red")
    png(src / "valid" / "cat" / "1.png", "blue")
    result = run(FolderConverter(), src, tmp_path / "out")
    assert reasons(result) == {
        ("valid/cat/1.png", None): "valid/cat/1.png and val/cat/1.png would both be written to images/val/cat/1.png; "
        "rename one",
    }
    assert [r["conversations"][0]["images"] for r in records(tmp_path / "out", "folder_val.jsonl")] == [
        ["val/cat/1.png"]
    ]
    with Image.open(tmp_path / "out" / "images" / "val" / "cat" / "1.png") as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)  # val/'s picture, not overwritten by valid/'s


def test_folder_paths_differing_only_by_case_are_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    png(src / "val" / "Cat" / "1.png", "red")
    png(src / "val" / "cat" / "1.png", "blue")  # its own file here; the same file as the first on macOS or Windows
    png(src / "val" / "cat" / "2.png", "green")
    result = run(FolderConverter(), src, tmp_path / "out")
    assert reasons(result) == {
        ("val/cat/1.png", None): "val/cat/1.png would be written to images/val/cat/1.png and val/Cat/1.png to "
        "images/val/Cat/1.png: paths that differ only by case are one file on case-insensitive file systems "
        "(macOS, Windows); rename one",
    }
    images = sorted(r["conversations"][0]["images"][0] for r in records(tmp_path / "out", "folder_val.jsonl"))
    assert images == ["val/Cat/1.png", "val/cat/2.png"]
    with Image.open(tmp_path / "out" / "images" / "val" / "Cat" / "1.png") as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)


def test_hateful_memes_two_images_of_one_name_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "memes"
    png(root / "img" / "a.png", "red")
    png(root / "img2" / "a.png", "blue")
    lines(root / "train.jsonl", [{"id": 1, "img": "img/a.png", "label": 0, "text": "x"},
                                 {"id": 2, "img": "img2/a.png", "label": 1, "text": "y"},
                                 {"id": 3, "img": "img/a.png", "label": 1, "text": "z"}])
    result = run(HatefulMemesConverter(), root, tmp_path / "out")
    assert reasons(result) == {
        ("train.jsonl", 2): "img2/a.png and img/a.png would both be written to images/train/a.png; rename one"
    }
    assert [r["id"] for r in records(tmp_path / "out", "hateful_memes_train.jsonl")] == ["train-1", "train-3"]


def test_llava_image_named_like_the_split_stays_inside_the_split_folder(tmp_path: Path) -> None:
    png(tmp_path / "src" / "train", "red")  # a file called `train`
    png(tmp_path / "src" / "b.png")
    rows = lines(tmp_path / "src" / "rows.jsonl", [
        {"id": "1", "image": "train",
         "conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "a"}]},
        {"id": "2", "image": "b.png",
         "conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "b"}]},
    ])
    result = run(LlavaConverter(), rows, tmp_path / "out")
    assert result.failures == []
    images = [r["conversations"][0]["images"] for r in records(tmp_path / "out", "llava_train.jsonl")]
    assert images == [["train/train"], ["train/b.png"]]
    assert (tmp_path / "out" / "images" / "train").is_dir()


def test_llava_file_where_a_folder_must_go_is_reported(tmp_path: Path) -> None:
    png(tmp_path / "src" / "train" / "a")  # lands at images/train/a (already under the split)
    png(tmp_path / "src" / "a" / "b.png")  # would need images/train/a/ to be a folder
    turn = [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}]
    rows = lines(tmp_path / "src" / "rows.jsonl", [{"id": "1", "image": "train/a", "conversations": turn},
                                                   {"id": "2", "image": "a/b.png", "conversations": turn}])
    result = run(LlavaConverter(), rows, tmp_path / "out")
    assert [r["id"] for r in records(tmp_path / "out", "llava_train.jsonl")] == ["1"]
    assert reasons(result) == {("rows.jsonl", 2): f"{tmp_path / 'src' / 'a' / 'b.png'} needs a folder images/train/a, "
                                                  f"where the image {tmp_path / 'src' / 'train' / 'a'} is written"}


# -- one symlink rule everywhere -----------------------------------------------------------------------------------


def test_hateful_memes_with_img_on_another_disk_converts(tmp_path: Path) -> None:
    mount = tmp_path / "mnt" / "big" / "img"
    png(mount / "01235.png")
    data = tmp_path / "hateful_memes" / "data"
    data.mkdir(parents=True)
    (data / "img").symlink_to(mount)
    secret = png(tmp_path / "secret.png", "red")
    (mount / "00002.png").symlink_to(secret)  # a file link that leads out of the dataset
    lines(data / "train.jsonl", [{"id": 1235, "img": "img/01235.png", "label": 1, "text": "a"},
                                 {"id": 2, "img": "img/00002.png", "label": 0, "text": "b"}])
    result = run(HatefulMemesConverter(), tmp_path / "hateful_memes", tmp_path / "out")
    assert result.counts == {"train": 1}
    assert reasons(result) == {
        ("train.jsonl", 2): f"refused: img/00002.png is a symlink to a file outside the dataset ({secret}); not read",
    }


def test_symlinked_source_root_and_image_folders_work_for_docvqa_and_nlvr2(tmp_path: Path) -> None:
    real = tmp_path / "real_docvqa"
    png(tmp_path / "disk" / "documents" / "p1.png")
    real.mkdir()
    (real / "documents").symlink_to(tmp_path / "disk" / "documents")
    (real / "val_v1.0.json").write_text(json.dumps({"dataset_split": "val", "data": [
        {"questionId": 1, "question": "Q?", "image": "documents/p1.png", "answers": ["a"]}]}))
    (tmp_path / "docvqa").symlink_to(real)
    result = run(DocVQAConverter(), tmp_path / "docvqa", tmp_path / "out_d")
    assert result.failures == [] and sum(result.counts.values()) == 1

    root = tmp_path / "nlvr2"
    for k in (0, 1):
        png(tmp_path / "disk2" / "43" / f"train-1-0-img{k}.png")
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "43").symlink_to(tmp_path / "disk2" / "43")
    lines(root / "train.json", [{"identifier": "train-1-0-0", "sentence": "S.", "label": "True", "directory": "43"}])
    result = run(NLVR2Converter(), root, tmp_path / "out_n")
    assert result.failures == [] and sum(result.counts.values()) == 1


def test_folder_caption_and_image_links_out_of_the_source_are_reported_not_read(tmp_path: Path) -> None:
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    png(src / "a.png")
    (src / "a.txt").write_text("a cat")
    png(src / "b.png")
    (elsewhere).mkdir()
    (elsewhere / "secret.txt").write_text("the password is hunter2")
    (src / "b.txt").symlink_to(elsewhere / "secret.txt")
    png(elsewhere / "c.png")
    (src / "c.png").symlink_to(elsewhere / "c.png")
    (src / "c.txt").write_text("linked")
    result = run(FolderConverter(FolderOptions(val_ratio=0)), src, tmp_path / "out")
    assert reasons(result) == {
        ("b.png", None):
            f"refused: b.txt is a symlink to a file outside the dataset ({elsewhere / 'secret.txt'}); not read",
        ("c.png", None): f"refused: c.png is a symlink to a file outside the dataset ({elsewhere / 'c.png'}); not read",
    }
    text = (tmp_path / "out" / "folder_train.jsonl").read_text()
    assert "hunter2" not in text and json.loads(text)["conversations"][0]["assistant"] == "a cat"


def test_video_linked_from_outside_is_reported_and_class_folder_links_are_followed(tmp_path: Path) -> None:
    src = tmp_path / "ucf"
    (tmp_path / "disk" / "Jump").mkdir(parents=True)
    (tmp_path / "disk" / "Jump" / "v_Jump_g01_c01.avi").write_bytes(b"not decoded in this test")
    (src / "Run").mkdir(parents=True)
    (src / "Jump").symlink_to(tmp_path / "disk" / "Jump")  # a class folder on another disk: followed
    (tmp_path / "secret.avi").write_bytes(b"x")
    (src / "Run" / "v_Run_g01_c01.avi").symlink_to(tmp_path / "secret.avi")
    converter = VideoConverter()
    entries = list(converter.plan(src))
    items = [e.key for e in entries if isinstance(e, Item)]
    failures = [(e.file, e.reason) for e in entries if not isinstance(e, Item) and hasattr(e, "reason")]
    assert items == ["Jump/v_Jump_g01_c01.avi"]
    assert failures == [("Run/v_Run_g01_c01.avi", f"refused: Run/v_Run_g01_c01.avi is a symlink to a file outside the "
                                                   f"dataset ({tmp_path / 'secret.avi'}); not read")]


def test_validate_follows_the_same_rule(tmp_path: Path) -> None:
    png(tmp_path / "disk" / "a.png")
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "train").symlink_to(tmp_path / "disk")
    secret = png(tmp_path / "secret.png")
    (tmp_path / "disk" / "b.png").symlink_to(secret)
    rec = {"task": "chat", "conversations": [{"images": ["train/a.png"], "user": "u", "assistant": "a"}]}
    lines(tmp_path / "data" / "d.jsonl", [
        {"id": "ok", **rec},
        {"id": "leak", **rec, "conversations": [{"images": ["train/b.png"], "user": "u", "assistant": "a"}]},
    ])
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "data" / "d.jsonl"), "--json"])
    findings = json.loads(result.output)["findings"]
    assert [(f["id"], f["code"], f["message"]) for f in findings] == [
        ("leak", "image_path_unsafe", f"train/b.png is a symlink to a file outside the dataset ({secret}); not read"),
    ]


# -- one bad annotation line never aborts a conversion -------------------------------------------------------------


def test_nul_bytes_and_lone_surrogates_in_jsonl_annotations(tmp_path: Path) -> None:
    root = tmp_path / "memes"
    png(root / "img" / "1.png")
    lines(root / "train.jsonl", [
        {"id": 1, "img": "img/1.png", "label": 0, "text": "fine"},
        {"id": 2, "img": "img/\u0000.png", "label": 0, "text": "nul"},
        '{"id": 3, "img": "img/1.png", "label": 1, "text": "\\udcff"}',
    ])
    result = run(HatefulMemesConverter(), root, tmp_path / "out_m")
    assert result.counts == {"train": 1}
    found = reasons(result)
    assert found[("train.jsonl", 2)] == "refused: 'img/\\x00.png' contains a NUL byte"
    assert found[("train.jsonl", 3)].startswith("invalid JSON text: a \\uD800-\\uDFFF escape")

    png(tmp_path / "ll" / "1.png")
    turn = [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "a"}]
    rows = lines(tmp_path / "ll" / "rows.jsonl", [
        {"id": "1", "image": "1.png", "conversations": turn},
        {"id": "2", "image": "\u0000", "conversations": turn},
        '{"id": "3", "image": "1.png", "conversations": '
        '[{"from": "human", "value": "<image>\\ud800"}, {"from": "gpt", "value": "a"}]}',
    ])
    result = run(LlavaConverter(), rows, tmp_path / "out_l")
    assert result.counts == {"train": 1}
    assert sorted(line for _, line in reasons(result)) == [2, 3]
    assert "NUL byte" in reasons(result)[("rows.jsonl", 2)]


def test_nul_byte_in_nlvr2_directory_and_docvqa_image(tmp_path: Path) -> None:
    root = tmp_path / "nlvr2"
    for k in (0, 1):
        png(root / "images" / "train" / "1" / f"train-1-0-img{k}.png")
    lines(root / "train.json", [{"identifier": "train-1-0-0", "sentence": "S.", "label": "True", "directory": "1"},
                                {"identifier": "train-2-0-0", "sentence": "S.", "label": "True",
                                 "directory": "\u0000"}])
    result = run(NLVR2Converter(), root, tmp_path / "out_n")
    assert sum(result.counts.values()) == 1 and "contains a NUL byte" in reasons(result)[("train.json", 2)]

    doc = tmp_path / "docvqa"
    png(doc / "documents" / "p.png")
    (doc / "train_v1.0.json").write_text(json.dumps({"dataset_split": "train", "data": [
        {"questionId": 1, "question": "Q?", "image": "documents/p.png", "answers": ["a"]},
        {"questionId": 2, "question": "Q?", "image": "documents/\u0000.png", "answers": ["a"]}]}))
    result = run(DocVQAConverter(), doc, tmp_path / "out_d")
    assert result.counts == {"train": 1}
    assert [f.reason for f in result.failures] == ["data[1]: refused: 'documents/\\x00.png' contains a NUL byte"]


def test_deep_nesting_and_huge_numbers_in_json_files_fail_one_entry(tmp_path: Path) -> None:
    png(tmp_path / "ll" / "1.png")
    good = json.dumps({"id": "1", "image": "1.png", "conversations": [{"from": "human", "value": "<image>?"},
                                                                     {"from": "gpt", "value": "a"}]})
    second, huge = good.replace('"1"', '"2"', 1), '{"id": ' + "9" * 5000 + "}"
    (tmp_path / "ll" / "rows.json").write_text(f"[\n{good},\n{DEEP},\n{huge},\n{second}\n]")
    result = run(LlavaConverter(), tmp_path / "ll" / "rows.json", tmp_path / "out_l")
    assert [r["id"] for r in records(tmp_path / "out_l", "llava_train.jsonl")] == ["1", "2"]
    assert {(f.file, f.line): f.reason.split(":")[0] for f in result.failures} == {
        ("rows.json[1]", 3): "invalid JSON", ("rows.json[2]", 4): "invalid JSON"}
    assert "nested too deeply" in reasons(result)[("rows.json[1]", 3)]

    doc = tmp_path / "docvqa"
    png(doc / "documents" / "p.png")
    entry = json.dumps({"questionId": 1, "question": "Q?", "image": "documents/p.png", "answers": ["a"]})
    (doc / "train_v1.0.json").write_text(f'{{"dataset_split": "train",\n "data": [{entry},\n{DEEP}]}}')
    result = run(DocVQAConverter(), doc, tmp_path / "out_d")
    assert result.counts == {"train": 1}
    assert [(f.reason, f.line) for f in result.failures] == [("data[1]: invalid JSON: nested too deeply", 3)]


def test_a_5000_digit_number_in_a_folder_manifest_fails_its_line(tmp_path: Path) -> None:
    png(tmp_path / "qa" / "a.png")
    lines(tmp_path / "qa" / "manifest.jsonl", [
        {"image": "a.png", "question": "Q?", "answer": "yes", "split": "train"},
        '{"image": "a.png", "question": "Q?", "answer": ' + "7" * 5000 + ', "split": "train"}',
    ])
    result = run(FolderConverter(), tmp_path / "qa", tmp_path / "out")
    assert result.counts == {"train": 1}
    assert reasons(result)[("manifest.jsonl", 2)].startswith("invalid JSON: Exceeds the limit (4300 digits)")


# -- validate --json and videos that are not videos -----------------------------------------------------------------


def test_validate_json_is_valid_utf8_whatever_the_input(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    name = os.fsdecode(b"d\xff.jsonl")  # a file name that is not UTF-8: '\udcff' in Python's str
    (tmp_path / name).write_bytes(
        b'{"id": "\\udcff", "conversations": [{"images": [], "user": "u", "assistant": "\\ud800"}]}\n\xff\xfe\n')
    result = CliRunner().invoke(main, ["validate", str(tmp_path / name), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout_bytes.decode("utf-8"))  # strict UTF-8: no lone surrogate got through
    assert [(f["line"], f["code"], f["file"]) for f in report["findings"]] == [
        (1, "invalid_json", str(tmp_path / name)), (2, "not_utf8", str(tmp_path / name))]
    assert report["findings"][0]["message"].startswith("invalid JSON text: a \\uD800-\\uDFFF escape")


def test_a_png_renamed_mkv_is_a_failure_not_a_video(tmp_path: Path) -> None:
    pytest.importorskip("av")
    png(tmp_path / "ucf" / "train" / "Jump" / "clip.mkv")
    result = run(VideoConverter(), tmp_path / "ucf", tmp_path / "out")
    assert [(f.file, f.reason) for f in result.failures] == [
        ("train/Jump/clip.mkv", "the file is a still image (png_pipe), not a video")]
    assert not list((tmp_path / "out" / "images").rglob("*.jpg"))


# -- a FIFO (or socket) in a source folder is reported and skipped, never waited on ---------------------------------


def test_a_fifo_named_like_an_image_or_caption_or_video_is_a_failure_not_a_hang(tmp_path: Path) -> None:
    """Run in a child process with a timeout: before the fix, opening the FIFO waited forever for a writer."""
    src = pets(tmp_path / "pets")
    os.mkfifo(src / "cat" / "stuck.png")
    os.mkfifo(src / "dog" / "stuck.jpg")
    videos = tmp_path / "videos" / "Cat"
    videos.mkdir(parents=True)
    os.mkfifo(videos / "stuck.avi")
    for args, expected in (
        (["folder", str(src), "--out", str(tmp_path / "out"), "--val-ratio", "0"],
         {"cat/stuck.png", "dog/stuck.jpg"}),
        (["video", str(tmp_path / "videos"), "--out", str(tmp_path / "vout"), "--val-ratio", "0"], {"Cat/stuck.avi"}),
    ):
        done = subprocess.run([sys.executable, "-c", "from phi3v_data.cli import main; main()", "convert", *args,
                               "-j", "1"],
                              capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        out = Path(args[args.index("--out") + 1])
        failures = [json.loads(line) for line in (out / "reports" / "failures.jsonl").read_text().splitlines()]
        assert {f["file"] for f in failures} == expected, done.stderr
        assert all("is a FIFO (named pipe), not a regular file; not read" in f["reason"] for f in failures)
    assert len(records(tmp_path / "out", "folder_train.jsonl")) == 4
