"""The video converter on miniature copies of UCF-101's layouts, with tiny clips whose colour encodes the frame
index."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from converters import _video_decode
from converters._video_decode import Probe, read_frames, sample_indices
from converters.video import VideoConverter, VideoOptions
from phi3v_data.cli import main
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConversionError, ImageWriter, Item

W, H = 64, 48
PROMPT3 = "Classify the video into one of the following classes: ApplyEyeMakeup, HandstandPushups, YoYo."


def _frame(index: int, texture: np.ndarray) -> np.ndarray:
    """Frame ``index`` (< 900): grey levels 8 + 8 * digit in the top quadrants (base 30); below, a drifting texture."""
    img = np.roll(texture, index * 2, axis=1).copy()
    img[: H // 2, : W // 2] = 8 + 8 * (index % 30)
    img[: H // 2, W // 2 :] = 8 + 8 * (index // 30)
    return img


def write_clip(path: Path, n: int = 24, *, gop: int = 6, fmt: str | None = None, b_frames: int = 0) -> Path:
    """MPEG-4 clip of ``n`` frames (a keyframe every ``gop`` frames) in AVI, or in ``fmt`` (e.g. matroska)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texture = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = b_frames  # B-frames: decode order differs from display order
        stream.bit_rate = 2_000_000
        for i in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_frame(i, texture), format="rgb24")))
        container.mux(stream.encode())
    return path


def write_mjpg(path: Path, n: int = 20) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H))
    texture = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    for i in range(n):
        writer.write(np.ascontiguousarray(_frame(i, texture)[..., ::-1]))
    writer.release()
    return path


def frame_index(image: Image.Image | Path) -> int:
    """Read back the frame index that ``_frame`` painted."""
    img = np.asarray(Image.open(image) if isinstance(image, Path) else image, dtype=float)
    low, high = (round((img[4 : H // 2 - 4, x + 4 : x + W // 2 - 4].mean() - 8) / 8) for x in (0, W // 2))
    return low + 30 * high


# -- frame sampling ------------------------------------------------------------------------------------------------


def test_sample_indices_are_segment_centres() -> None:
    assert sample_indices(24, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(175, 8) == [10, 32, 54, 76, 98, 120, 142, 164]
    assert sample_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]  # shorter than N: frames repeat
    assert sample_indices(5, 1) == [2]


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
@pytest.mark.parametrize(
    ("kind", "n"),
    [("avi-gop6", 24), ("avi-one-keyframe", 24), ("mkv-no-frame-count", 24), ("mjpg", 20)],
)
def test_read_frames_picks_the_segment_centres(tmp_path: Path, backend: str, kind: str, n: int) -> None:
    if kind == "mjpg":
        path = write_mjpg(tmp_path / "clip.avi", n)
    elif kind == "mkv-no-frame-count":
        path = write_clip(tmp_path / "clip.mkv", n, fmt="matroska")
        with av.open(str(path)) as c:
            assert c.streams.video[0].frames == 0  # the header really gives no count
    else:
        path = write_clip(tmp_path / "clip.avi", n, gop=6 if kind == "avi-gop6" else 250)
    frames = read_frames(path, 8, backend=backend)  # type: ignore[arg-type]
    assert [frame_index(f) for f in frames] == sample_indices(n, 8)
    assert all(f.size == (W, H) and f.mode == "RGB" for f in frames)


@pytest.fixture(params=["kept-packets", "seeking"])
def packet_cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both PyAV paths: packets kept from the demux pass (small clips), and seeking in the file (too big to keep)."""
    if request.param == "seeking":
        monkeypatch.setattr(_video_decode, "PACKET_CACHE_BYTES", 0)
    return request.param


@pytest.mark.parametrize("kind", ["avi-gop6", "avi-one-keyframe", "mkv-no-frame-count", "avi-b-frames", "mp4-b-frames"])
def test_both_pyav_paths_pick_the_segment_centres(tmp_path: Path, packet_cache: str, kind: str) -> None:
    if kind == "mkv-no-frame-count":
        path = write_clip(tmp_path / "clip.mkv", 30, fmt="matroska")
    elif kind.endswith("b-frames"):
        path = write_clip(tmp_path / f"clip.{kind[:3]}", 30, b_frames=2)
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.has_b_frames
    else:
        path = write_clip(tmp_path / "clip.avi", 30, gop=6 if kind == "avi-gop6" else 250)
    with av.open(str(path)) as container:
        info = _video_decode.probe(container, container.streams.video[0])
    assert (info.packets is None) == (packet_cache == "seeking")
    assert [frame_index(f) for f in read_frames(path, 8, backend="pyav")] == sample_indices(30, 8)


def test_pyav_decodes_from_keyframes_not_the_whole_clip(
    tmp_path: Path, packet_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyframes every 6 frames: each wanted frame costs the frames from its keyframe to it, never the whole clip."""
    path = write_clip(tmp_path / "clip.avi", 48, gop=6)
    starts: list[int] = []
    decoded = 0
    real_decode_from = _video_decode.decode_from

    def counting(container, stream, info, keyframe):  # noqa: ANN001, ANN202
        nonlocal decoded
        starts.append(keyframe)
        for frame in real_decode_from(container, stream, info, keyframe):
            decoded += 1
            yield frame

    monkeypatch.setattr(_video_decode, "decode_from", counting)
    frames = read_frames(path, 2, backend="pyav")
    assert [frame_index(f) for f in frames] == [12, 36]  # centres of [0, 24) and [24, 48)
    assert (starts, decoded) == ([12, 36], 2)  # both targets sit on keyframes: one frame decoded each
    starts.clear()
    decoded = 0
    frames = read_frames(path, 3, backend="pyav")  # centres 8, 24, 40: keyframes 6, 24, 36
    assert [frame_index(f) for f in frames] == [8, 24, 40]
    assert (starts, decoded) == ([6, 24, 36], 3 + 1 + 5)
    starts.clear()
    decoded = 0
    frames = read_frames(path, 16, backend="pyav")  # centres 1, 4, 7, …, 46: two per keyframe interval
    assert [frame_index(f) for f in frames] == sample_indices(48, 16)
    assert starts == [0, 6, 12, 18, 24, 30, 36, 42] and decoded == 8 * 5  # keyframe 6k up to 6k + 4


def test_lying_frame_count_uses_the_last_decodable_frame(
    tmp_path: Path, packet_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count of 34 for a 24-frame clip: targets past the end get the last frame there is."""
    path = write_clip(tmp_path / "clip.avi", 24, gop=6)
    real_probe = _video_decode.probe

    def lying_probe(container, stream) -> Probe:  # noqa: ANN001
        info = real_probe(container, stream)
        return Probe(
            count=34, pts=[*info.pts, *range(100, 110)], keyframes=[*info.keyframes, 30],
            packets=info.packets, key_packets=info.key_packets,
        )

    monkeypatch.setattr(_video_decode, "probe", lying_probe)
    frames = read_frames(path, 8, backend="pyav")
    assert sample_indices(34, 8) == [2, 6, 10, 14, 19, 23, 27, 31]
    assert [frame_index(f) for f in frames] == [2, 6, 10, 14, 19, 23, 23, 23]


@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_bad_videos_raise_conversion_errors(tmp_path: Path, backend: str) -> None:
    noise = tmp_path / "noise.avi"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    whole = write_clip(tmp_path / "whole.avi", 24, gop=6).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: int(len(whole) * 0.7)])
    empty = write_mjpg(tmp_path / "empty.avi", 0)  # a valid AVI header with a video stream, no frames
    with pytest.raises(ConversionError, match="cannot decode"):
        read_frames(noise, 8, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match="truncated or damaged"):
        read_frames(cut, 8, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match="holds no frames"):
        read_frames(empty, 8, backend=backend)  # type: ignore[arg-type]


def test_auto_falls_back_to_decord_when_pyav_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_clip(tmp_path / "clip.avi", 24, gop=6)

    def broken(*_args: object) -> None:
        raise av.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(_video_decode, "_pyav_frames", broken)
    assert [frame_index(f) for f in read_frames(path, 4, backend="auto")] == [3, 9, 15, 21]
    with pytest.raises(ConversionError, match="cannot decode: pyav: .*Invalid data"):
        read_frames(path, 4, backend="pyav")
    monkeypatch.setitem(sys.modules, "decord", None)  # as if decord were not installed
    with pytest.raises(ConversionError, match="decord: decord is not installed"):
        read_frames(path, 4, backend="decord")


# -- JPEG encoding ---------------------------------------------------------------------------------------------------


COLOURS = [(200, 30, 90), (20, 180, 240), (250, 250, 250), (16, 16, 16), (128, 128, 128), (255, 200, 0)]


def _patch_frame(colorspace: int | None = None, full_range: bool = False) -> av.VideoFrame:
    """A 4:2:0 video frame of six flat 16x16-aligned colour patches (what the decoder hands over)."""
    rgb = np.zeros((32, 96, 3), np.uint8)
    for i, colour in enumerate(COLOURS):
        rgb[:, 16 * i : 16 * (i + 1)] = colour
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    if colorspace is not None:
        frame.colorspace = colorspace
    if full_range:
        frame = frame.reformat(format="yuvj420p")
    return frame


def _patch_colours(data: bytes) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)
    return np.array([img[8:24, 16 * i + 4 : 16 * i + 12].mean(axis=(0, 1)) for i in range(len(COLOURS))])


@pytest.mark.parametrize("encoder", ["simplejpeg", "pillow"])
@pytest.mark.parametrize("source", ["yuv420p", "yuvj420p", "bt709"])
def test_to_jpeg_keeps_the_colours_of_the_rgb_path(encoder: str, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every route to JPEG (YUV planes into libjpeg-turbo, or RGB through simplejpeg or Pillow) gives the colours
    the RGB conversion gives: a wrong range (limited vs full) would shift them by 10-20 levels."""
    yuv_calls = []
    if encoder == "pillow":
        monkeypatch.setattr(_video_decode, "simplejpeg", None)
    else:
        real = _video_decode.simplejpeg.encode_jpeg_yuv_planes
        monkeypatch.setattr(
            _video_decode.simplejpeg, "encode_jpeg_yuv_planes", lambda *a, **k: yuv_calls.append(1) or real(*a, **k)
        )
    frame = _patch_frame(colorspace=1 if source == "bt709" else None, full_range=source == "yuvj420p")
    data = _video_decode.to_jpeg(frame, quality=95)
    expected = np.asarray(_video_decode.to_image(frame), dtype=int)[16, 8::16]
    assert np.abs(_patch_colours(data) - expected).max() <= 3
    if source == "bt709":  # the same bytes read as BT.709 are other colours: copying the planes would be wrong here
        assert np.abs(expected - np.array(COLOURS)).max() > 10
    else:  # and that is the picture that was encoded
        assert np.abs(expected - np.array(COLOURS)).max() <= 3
    assert len(yuv_calls) == (encoder == "simplejpeg" and source != "bt709")  # BT.709 is converted through RGB


def test_to_jpeg_shrinks_to_max_side_and_follows_quality() -> None:
    frame = _patch_frame()
    small = _video_decode.to_jpeg(frame, quality=95, max_side=48)
    assert Image.open(io.BytesIO(small)).size == (48, 16)
    assert np.abs(_patch_colours(_video_decode.to_jpeg(frame, quality=95, max_side=96)) - np.array(COLOURS)).max() <= 3
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    textured = av.VideoFrame.from_ndarray(noise, format="rgb24")
    textured = textured.reformat(format="yuv420p")
    assert len(_video_decode.to_jpeg(textured, quality=30)) < len(_video_decode.to_jpeg(textured, quality=95)) / 2


def test_convert_reports_a_missing_file_and_shrinks_to_max_side(tmp_path: Path) -> None:
    converter = VideoConverter(VideoOptions(frames=2, max_side=32))
    writer = ImageWriter(tmp_path / "images")
    with pytest.raises(ConversionError, match="no such video file"):
        converter.convert(Item("a.avi", "train", _clip(tmp_path / "gone.avi")), writer)
    clip = write_clip(tmp_path / "Cls" / "v_Cls_g01_c01.avi", 24)
    [record] = converter.convert(Item("k", "train", _clip(clip)), writer)
    assert record["conversations"][0]["images"] == ["train/Cls/v_Cls_g01_c01.0.jpg", "train/Cls/v_Cls_g01_c01.1.jpg"]
    assert Image.open(tmp_path / "images/train/Cls/v_Cls_g01_c01.0.jpg").size == (32, 24)


def _clip(path: Path):  # noqa: ANN202
    from converters.video import Clip

    return Clip(str(path), "Cls", "Classify.")


# -- layouts -------------------------------------------------------------------------------------------------------


def make_ucf(root: Path) -> Path:
    """UCF-101/ with 3 classes (HandstandPushups holding v_HandStandPushups_*), groups g01 (test) g02 g03 (train)."""
    files = {"ApplyEyeMakeup": "ApplyEyeMakeup", "HandstandPushups": "HandStandPushups", "YoYo": "YoYo"}
    for folder, stem in files.items():
        for g in (1, 2, 3):
            for c in (1, 2):
                write_clip(root / "UCF-101" / folder / f"v_{stem}_g{g:02d}_c{c:02d}.avi", 12, gop=4)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    train = [
        f"{folder}/v_{stem}_g{g:02d}_c{c:02d}.avi {n}"
        for n, (folder, stem) in enumerate(files.items(), 1)
        for g in (2, 3)
        for c in (1, 2)
    ]
    train[-1] = "yoyo/v_yoyo_g03_c02.avi 3"  # wrong case: resolved case-insensitively
    train += ["YoYo/v_YoYo_g09_c01.avi 3", "../outside.avi 1", "YoYo/v_YoYo_g02_c01.avi"]
    test = [f"{folder}/v_{stem}_g01_c{c:02d}.avi" for folder, stem in files.items() for c in (1, 2)]
    (lists / "trainlist01.txt").write_bytes("".join(line + "\r\n" for line in train).encode())
    (lists / "testlist01.txt").write_bytes("".join(line + "\r\n" for line in test).encode())
    return root


def _records(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"ucf101_{split}.jsonl").read_text().splitlines()]


def _group_of(record: dict) -> tuple[str, str]:
    stem = record["conversations"][0]["images"][0].split("/")[-1].rsplit(".", 2)[0]
    return record["conversations"][0]["assistant"], stem.split("_")[2] if stem.startswith("v_") else stem


def test_official_layout_records_failures_and_quirks(tmp_path: Path) -> None:
    source = make_ucf(tmp_path / "src")
    result = run_converter(VideoConverter(VideoOptions(frames=4, val_ratio=0.25)), source, tmp_path / "out", workers=1)
    # 12 train clips in groups of 2: 25% is 3 clips, and one group (2) is the closest whole groups come
    assert result.counts == {"train": 10, "val": 2, "test": 6}
    assert json.loads((tmp_path / "out/manifest.json").read_text())["carved"] == [
        {"split": "val", "count": 2, "total": 12, "requested": 0.25, "source": "train",
         "note": "whole groups: the closest to 3 they allow"}
    ]
    test = _records(tmp_path / "out", "test")
    stems = [
        f"{c}/v_{s}_g01_c0{k}"
        for c, s in (("ApplyEyeMakeup",) * 2, ("HandstandPushups", "HandStandPushups"), ("YoYo",) * 2)
        for k in (1, 2)
    ]
    assert test == [
        {
            "id": f"test-{i:010d}",
            "source": "ucf101",
            "task": "classification",
            "conversations": [
                {"images": [f"test/{stem}.{k}.jpg" for k in range(4)], "user": PROMPT3, "assistant": stem.split("/")[0]}
            ],
        }
        for i, stem in enumerate(stems)
    ]
    images = tmp_path / "out/images/test/HandstandPushups"
    assert [frame_index(images / f"v_HandStandPushups_g01_c01.{k}.jpg") for k in range(4)] == [1, 4, 7, 10]
    failures = [json.loads(line) for line in (tmp_path / "out/reports/failures.jsonl").read_text().splitlines()]
    assert [(f["file"], f["line"]) for f in failures] == [
        ("ucfTrainTestlist/trainlist01.txt", 13),
        ("ucfTrainTestlist/trainlist01.txt", 14),
        ("YoYo/v_YoYo_g02_c01.avi", None),
    ]
    assert "v_YoYo_g09_c01.avi: no such video" in failures[0]["reason"]
    assert failures[1]["reason"].startswith("refused:")
    assert failures[2]["reason"] == "duplicate item (listed twice in the source)"
    train_val = _records(tmp_path / "out", "train") + _records(tmp_path / "out", "val")
    assert sorted(r["conversations"][0]["images"][0].split("/", 1)[1] for r in train_val) == sorted(
        f"{c}/v_{s}_g0{g}_c0{k}.0.jpg"
        for c, s in (("ApplyEyeMakeup",) * 2, ("HandstandPushups", "HandStandPushups"), ("YoYo",) * 2)
        for g in (2, 3)
        for k in (1, 2)
    )
    train_groups = {_group_of(r) for r in _records(tmp_path / "out", "train")}
    val_groups = {_group_of(r) for r in _records(tmp_path / "out", "val")}
    assert (len(train_groups), len(val_groups)) == (5, 1) and not train_groups & val_groups


def test_presplit_layout_carves_val_and_sorts_classes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls in ("Zebra", "Ant"):
        for g in (1, 2, 3, 4):
            write_clip(src / "train" / cls / f"v_{cls}_g{g:02d}_c01.avi", 8, gop=4)
        write_clip(src / "test" / cls / f"v_{cls}_g05_c01.avi", 8, gop=4)
    run_converter(VideoConverter(VideoOptions(frames=2, val_ratio=0.25)), src, tmp_path / "out", workers=1)
    test = _records(tmp_path / "out", "test")
    assert [r["conversations"][0]["images"] for r in test] == [
        ["test/Ant/v_Ant_g05_c01.0.jpg", "test/Ant/v_Ant_g05_c01.1.jpg"],
        ["test/Zebra/v_Zebra_g05_c01.0.jpg", "test/Zebra/v_Zebra_g05_c01.1.jpg"],
    ]
    assert test[0]["conversations"][0]["user"] == "Classify the video into one of the following classes: Ant, Zebra."
    assert [len(_records(tmp_path / "out", s)) for s in ("train", "val")] == [6, 2]


def test_class_folders_split_by_group_deterministically(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls in ("cats", "dogs"):
        for g in range(1, 11):
            for c in (1, 2):
                write_clip(src / cls / f"v_{cls}_g{g:02d}_c{c:02d}.avi", 4, gop=4)
    write_clip(src / "birds" / "my holiday.mkv", 4, fmt="matroska")  # a lone group: never carved out of train
    (src / "birds" / "notes.txt").write_text("not a video")

    def splits(seed: int) -> dict[str, set[tuple[str, str]]]:
        out = tmp_path / f"out{seed}"
        options = VideoOptions(frames=1, seed=seed, val_ratio=0.2, test_ratio=0.2)
        run_converter(VideoConverter(options), src, out, workers=1)
        return {s: {_group_of(r) for r in _records(out, s)} for s in ("train", "val", "test")}

    first = splits(0)
    # per class of 20 clips (10 groups): test and val 2 groups each (round(0.2 * 20) = 4 clips), train 6; birds 1
    assert {s: len(g) for s, g in first.items()} == {"train": 13, "val": 4, "test": 4}
    assert not (first["train"] & first["val"])
    assert not (first["train"] & first["test"]) and not (first["val"] & first["test"])
    assert ("birds", "my holiday") in first["train"]
    assert splits(0) == first
    assert splits(1) != first


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    source = make_ucf(tmp_path / "src")
    calls: list[str] = []

    class Counting(VideoConverter):
        def convert(self, item, out):  # noqa: ANN001, ANN201
            calls.append(item.key)
            return super().convert(item, out)

    class Interrupted(Counting):
        def convert(self, item, out):  # noqa: ANN001, ANN201
            if len(calls) == 5:
                raise KeyboardInterrupt
            return super().convert(item, out)

    options = VideoOptions(frames=3, val_ratio=0.25)
    with pytest.raises(KeyboardInterrupt):
        run_converter(Interrupted(options), source, tmp_path / "a", workers=1)
    assert not (tmp_path / "a/ucf101_train.jsonl").exists()
    done_before = list(calls)
    run_converter(Counting(options), source, tmp_path / "a", workers=1)
    assert len(calls) == 18 and not set(done_before) & set(calls[5:])  # the 5 finished items were not redone
    run_converter(VideoConverter(options), source, tmp_path / "b", workers=1)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def _tree(root: Path) -> dict[str, bytes]:
    """Every output file; the journal (kept while failures remain, in completion order) is not output."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".partial" not in p.relative_to(root).parts)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


@pytest.mark.slow
def test_two_workers_give_the_same_bytes_as_one(tmp_path: Path) -> None:
    source = make_ucf(tmp_path / "src")
    options = VideoOptions(frames=3, val_ratio=0.25)
    run_converter(VideoConverter(options), source, tmp_path / "one", workers=1)
    run_converter(VideoConverter(options), source, tmp_path / "two", workers=2)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")


# -- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_help_lists_the_video_flags() -> None:
    result = CliRunner().invoke(main, ["convert", "video", "--help"])
    assert result.exit_code == 0
    for flag in ("--frames", "--backend", "--quality", "--max-side", "--split-list", "--val-ratio", "--test-ratio"):
        assert flag in result.output


def test_cli_strict_exit_and_failure_report(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for g in (1, 2):
        write_clip(src / "Good" / f"v_Good_g{g:02d}_c01.avi", 8, gop=4)
    (src / "Good" / "v_Good_g03_c01.avi").write_bytes(b"RIFF\x00\x00garbage" * 50)
    whole = write_clip(tmp_path / "whole.avi", 24).read_bytes()
    (src / "Good" / "v_Good_g04_c01.avi").write_bytes(whole[: int(len(whole) * 0.7)])
    args = ["convert", "video", str(src), "--out", str(tmp_path / "out"), "--frames", "2", "-j", "1",
            "--test-ratio", "0", "--val-ratio", "0"]
    result = CliRunner().invoke(main, [*args, "--strict"])
    assert result.exit_code == 1, result.output
    failures = [json.loads(line) for line in (tmp_path / "out/reports/failures.jsonl").read_text().splitlines()]
    assert [f["file"] for f in failures] == ["Good/v_Good_g03_c01.avi", "Good/v_Good_g04_c01.avi"]
    assert "cannot decode" in failures[0]["reason"] and "truncated" in failures[1]["reason"]
    assert len(_records(tmp_path / "out", "train")) == 2


def test_cli_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["convert", "video", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no videos found" in result.output
    result = CliRunner().invoke(
        main,
        ["convert", "video", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--val-ratio", "0.6",
         "--test-ratio", "0.5"],
    )
    assert result.exit_code == 2 and "below 1" in result.output


def test_carving_a_sampled_subset_stays_near_the_requested_ratio_and_says_what_it_took(tmp_path: Path) -> None:
    """4 classes x 3 groups x 2 clips: 10% is 2.4 clips. Carving a group per class made 33%; one group is 8.3%."""
    src = tmp_path / "src"
    clip = write_clip(tmp_path / "c.avi", 4, gop=4).read_bytes()
    for cls in ("Archery", "Bowling", "Diving", "Surfing"):
        for g in (1, 2, 3):
            for c in (1, 2):
                (src / "train" / cls).mkdir(parents=True, exist_ok=True)
                (src / "train" / cls / f"v_{cls}_g{g:02d}_c{c:02d}.avi").write_bytes(clip)
    result = CliRunner().invoke(main, ["convert", "video", str(src), "--out", str(tmp_path / "out"), "--frames", "1",
                                       "-j", "1", "--val-ratio", "0.1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert [len(_records(tmp_path / "out", s)) for s in ("train", "val")] == [22, 2]
    assert [line.strip() for line in result.output.splitlines() if "carved" in line] == [
        "carved val: 2 of 24 train items (8.3%, asked 10%)"
    ]


def test_two_clips_that_would_write_the_same_frames_are_reported(tmp_path: Path) -> None:
    """clip.avi beside clip.mp4 (or Clip.avi: one file on macOS/Windows) would write the same frame files."""
    from phi3v_data.converter import Failure

    src = tmp_path / "src"
    for name in ("train/Cat/clip.avi", "train/Cat/clip.mp4", "train/Dog/Run.avi", "train/Dog/run.avi"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        write_clip(src / name, 12)
    planned = list(VideoConverter(VideoOptions(frames=2, val_ratio=0)).plan(src))
    failures = sorted((entry.file, entry.reason) for entry in planned if isinstance(entry, Failure))
    assert failures == [
        ("train/Cat/clip.mp4", "train/Cat/clip.mp4 and train/Cat/clip.avi would both be written to "
                               "images/train/Cat/clip.*.jpg; rename one"),
        ("train/Dog/run.avi", "train/Dog/run.avi would be written to images/train/Dog/run.*.jpg and "
                              "train/Dog/Run.avi to "
                              "images/train/Dog/Run.*.jpg: paths that differ only by case are one file on "
                              "case-insensitive file systems (macOS, Windows); rename one"),
    ]
    assert sorted(entry.key for entry in planned if isinstance(entry, Item)) == [
        "train/Cat/clip.avi", "train/Dog/Run.avi"
    ]


def test_latin1_class_folders_and_clip_names_are_failures_not_records(tmp_path: Path) -> None:
    """A class folder named in Latin-1 is reported clip by clip and leaves the prompt's class list; nothing written
    holds a lone surrogate."""
    import os

    from phi3v_data.converter import Failure

    src = tmp_path / "src"
    write_clip(src / "train" / "Cat" / "a.avi", 4)
    write_clip(Path(os.fsdecode(bytes(src) + b"/train/Caf\xe9/b.avi")), 4)
    write_clip(Path(os.fsdecode(bytes(src) + b"/train/Cat/\xe9t\xe9.avi")), 4)
    planned = list(VideoConverter(VideoOptions(frames=1, val_ratio=0)).plan(src))
    failures = sorted((entry.file, entry.reason[:31]) for entry in planned if isinstance(entry, Failure))
    assert failures == [("train/Caf\\xe9/b.avi", "the name is not valid UTF-8 (wr"),
                        ("train/Cat/\\xe9t\\xe9.avi", "the name is not valid UTF-8 (wr")]
    [item] = [entry for entry in planned if isinstance(entry, Item)]
    assert item.key == "train/Cat/a.avi" and item.payload.prompt.encode("utf-8").count(b"Caf") == 0
