"""The synthetic UCF-101-style sample: official layout byte for byte, determinism, visibly distinct classes."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
from click.testing import CliRunner

from converters.video import VideoConverter, VideoOptions
from phi3v_data.cli import main
from phi3v_data.convert import run_converter
from phi3v_data.synthetic import write_video_sample


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ucf101_layout_and_crlf_lists(tmp_path: Path) -> None:
    summary = write_video_sample(tmp_path, classes=3, clips_per_class=4, seed=0)
    assert summary.classes == ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]
    assert summary.splits == {"train": 3, "test": 9}
    lists = tmp_path / "ucfTrainTestlist"
    assert (lists / "classInd.txt").read_bytes() == b"1 ApplyEyeMakeup\r\n2 Basketball\r\n3 HandstandPushups\r\n"
    # clips 1-3 form group g01 (split 1's test group), clip 4 is g02 c01
    assert (lists / "trainlist01.txt").read_bytes() == (
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi 1\r\n"
        b"Basketball/v_Basketball_g02_c01.avi 2\r\n"
        b"HandstandPushups/v_HandStandPushups_g02_c01.avi 3\r\n"
    )
    assert (lists / "testlist01.txt").read_bytes().split(b"\r\n")[6:] == [
        b"HandstandPushups/v_HandStandPushups_g01_c01.avi",
        b"HandstandPushups/v_HandStandPushups_g01_c02.avi",
        b"HandstandPushups/v_HandStandPushups_g01_c03.avi",
        b"",
    ]
    assert sorted(p.name for p in lists.iterdir()) == [
        "classInd.txt", "testlist01.txt", "testlist02.txt", "testlist03.txt",
        "trainlist01.txt", "trainlist02.txt", "trainlist03.txt",
    ]
    assert (sorted(p.name for p in (tmp_path / "UCF-101/HandstandPushups").iterdir())[0]
            == "v_HandStandPushups_g01_c01.avi")
    with av.open(str(tmp_path / "UCF-101/Basketball/v_Basketball_g01_c01.avi")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height, stream.frames) == ("mpeg4", 96, 72, 40)


def test_same_seed_same_bytes_other_seed_other_clips(tmp_path: Path) -> None:
    write_video_sample(tmp_path / "a", classes=2, clips_per_class=2, seed=3)
    write_video_sample(tmp_path / "b", classes=2, clips_per_class=2, seed=3)
    write_video_sample(tmp_path / "c", classes=2, clips_per_class=2, seed=4)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    clip = "UCF-101/Basketball/v_Basketball_g01_c02.avi"
    assert a.keys() == c.keys() and a[clip] != c[clip]


def test_classes_differ_in_dominant_colour(tmp_path: Path) -> None:
    write_video_sample(tmp_path, classes=4, clips_per_class=1, seed=0)
    dominant = {}
    for folder in sorted((tmp_path / "UCF-101").iterdir()):
        [clip] = folder.iterdir()
        with av.open(str(clip)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float)
        dominant[folder.name] = int(np.argmax(np.median(frame.reshape(-1, 3), axis=0)))
    # backgrounds: red, green, blue, yellow (red ≈ green > blue: channel 0 or 1 wins)
    assert dominant["ApplyEyeMakeup"] == 0 and dominant["Basketball"] == 1 and dominant["HandstandPushups"] == 2
    assert dominant["JumpingJack"] in (0, 1)


def test_presplit_layout_converts(tmp_path: Path) -> None:
    summary = write_video_sample(tmp_path / "src", classes=2, clips_per_class=12, layout="presplit")
    assert summary.splits == {"test": 6, "val": 6, "train": 12}  # groups g01 test, g02 val, g03-g04 train
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == [".phi3v-sample.json", "test", "train", "val"]
    result = run_converter(VideoConverter(VideoOptions(frames=2)), tmp_path / "src", tmp_path / "out", workers=1)
    assert result.counts == {"train": 12, "val": 6, "test": 6} and not result.failures


def test_cli_writes_a_sample_that_converts(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["sample", "video", str(tmp_path / "src"), "--classes", "2", "--clips-per-class", "12",
                                  "--seed", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["convert", "video", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                                  "--frames", "2", "-j", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    # 18 train clips in groups of 3: 10% is 2 clips, one group (3) the closest; a group per class made 33%
    assert manifest["splits"] == {"train": 15, "val": 3, "test": 6} and manifest["failures"] == 0
    assert [(c["split"], c["count"], c["total"]) for c in manifest["carved"]] == [("val", 3, 18)]
    assert runner.invoke(main, ["sample", "video", str(tmp_path / "x"), "--classes", "99"]).exit_code == 2


def test_a_folder_holding_a_real_dataset_is_refused_and_left_byte_for_byte(tmp_path: Path) -> None:
    real = tmp_path / "ucf"
    clip = real / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"RIFF real clip")
    (real / "ucfTrainTestlist").mkdir()
    (real / "ucfTrainTestlist" / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n")
    before = _tree(real)
    for layout in ("ucf101", "presplit"):
        result = CliRunner().invoke(main, ["sample", "video", str(real), "--layout", layout])
        assert result.exit_code == 2, result.output
        assert (f"{real} already holds files that no sample wrote (UCF-101, ucfTrainTestlist)"
                in " ".join(result.output.split()))
    assert _tree(real) == before


def test_an_earlier_sample_is_rewritten_and_an_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    write_video_sample(tmp_path / "s", classes=1, clips_per_class=1, seed=0)
    first = _tree(tmp_path / "s")
    write_video_sample(tmp_path / "s", classes=1, clips_per_class=1, seed=0)
    assert _tree(tmp_path / "s") == first and ".phi3v-sample.json" in first
