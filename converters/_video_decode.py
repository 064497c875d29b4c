"""Read N frames out of a video file without decoding all of it.

Which frames: the centres of N equal segments, frame ``floor((i + 0.5) * n / N)`` for ``i`` in ``range(N)`` where
``n`` is the clip's frame count. Centres (not ``linspace(0, n - 1)``) never pick the first and last frames, which are
often fades or cuts, and spread the frames evenly; a clip shorter than N frames repeats frames.

How many frames: one demux pass over the packets (reads the file, decodes nothing; ~1 ms for a UCF clip) counts
the frames, finds the keyframes and keeps the packets in memory when they fit in ``PACKET_CACHE_BYTES``. Container
headers are not trusted: AVI headers of cut or re-muxed files announce frames that are not there, and Matroska/WebM
announce none. The same pass detects truncated files (an incomplete last packet) so they are reported instead of
silently yielding fewer frames.

Decoding (``--backend auto`` tries PyAV, then decord; see ``AUTO_ORDER``): decord's ``get_batch``, or PyAV starting
at the keyframe before each wanted frame and decoding forward to it — from the kept packets (no second read of the
file, no seeking), or by seeking in the file when the packets were too big to keep. A wanted frame reachable from the
current position without a new keyframe is decoded forward (so a clip with a single keyframe costs one forward pass
that stops after the last wanted frame). When the stream ends before a wanted frame (a lying index), the last
decodable frame stands in for it.
"""

from __future__ import annotations

import io
import os
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy  # imported here, before the worker pool forks, so workers inherit it
from PIL import Image

from phi3v_data.converter import ConversionError

try:  # at import time for the same reason: each worker importing PyAV itself cost ~0.1 s of a ~0.6 s benchmark
    import av
except ImportError:  # the [video] extra is missing; decode_frames reports it per clip
    av = None
try:  # libjpeg-turbo that takes YUV planes (the [video] extra); PIL encodes when it is missing
    import simplejpeg
except ImportError:
    simplejpeg = None

Backend = Literal["auto", "decord", "pyav"]


def sample_indices(n: int, num: int) -> list[int]:
    """Centres of ``num`` equal segments of ``n`` frames: ``floor((i + 0.5) * n / num)`` (exact integer arithmetic)."""
    return [((2 * i + 1) * n) // (2 * num) for i in range(num)]


@dataclass(frozen=True)
class Probe:
    """What one demux pass learned: frame timestamps in display order and which frames are keyframes."""

    count: int
    pts: list[int] | None
    """Sorted presentation timestamps (one per frame), or None when the container gives none (no seeking then)."""
    keyframes: list[int]
    """Display-order indices of keyframes, sorted."""
    packets: list[Any] | None = None
    """The stream's packets in decode order, or None when they were too big to keep (then decoding seeks)."""
    key_packets: dict[int, int] = field(default_factory=dict)
    """Display-order keyframe index → its position in ``packets``."""

    def index_of(self, pts: int | None) -> int | None:
        if self.pts is None or pts is None:
            return None
        return bisect_left(self.pts, pts)

    def keyframe_before(self, index: int) -> int:
        pos = bisect_right(self.keyframes, index) - 1
        return self.keyframes[pos] if pos >= 0 else 0


PACKET_CACHE_BYTES = 64 << 20
"""Keep a clip's packets in memory up to this size (a UCF-101 clip is ~0.5 MB); longer videos are re-read by seeking."""


def probe(container: Any, stream: Any) -> Probe:
    """Count frames and locate keyframes by demuxing; raise ConversionError for truncated or frameless streams."""
    stamps: list[int | None] = []
    keys: list[int] = []
    kept: list[Any] | None = []
    size = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            continue
        if packet.is_corrupt:
            raise ConversionError(f"truncated or damaged: packet {len(stamps) + 1} is incomplete")
        if packet.is_keyframe:
            keys.append(len(stamps))
        stamps.append(packet.pts if packet.pts is not None else packet.dts)
        if kept is not None:
            size += packet.size
            kept.append(packet)
            if size > PACKET_CACHE_BYTES:
                kept = None
    if not stamps:
        raise ConversionError("the video stream holds no frames")
    if any(s is None for s in stamps) or len(set(stamps)) != len(stamps):
        return Probe(count=len(stamps), pts=None, keyframes=[0], packets=kept, key_packets={0: 0})
    ordered = sorted(stamps)  # type: ignore[type-var]
    rank = {s: i for i, s in enumerate(ordered)}
    key_packets = {rank[stamps[k]]: k for k in keys} or {0: 0}
    return Probe(count=len(stamps), pts=ordered, keyframes=sorted(key_packets), packets=kept, key_packets=key_packets)


AUTO_ORDER: tuple[str, ...] = ("pyav", "decord")
"""``--backend auto`` tries these in turn. PyAV first: on UCF-shaped clips (320x240 MPEG-4 AVI, keyframe every 12
frames) its keyframe seeking read 8 frames in ~15-20 ms where decord's ``get_batch`` took ~85-110 ms (decord pays
~30 ms per file before the first frame); decord remains the fallback for files PyAV fails to decode."""


def read_frames(path: Path, num: int, *, backend: Backend = "auto") -> list[Image.Image]:
    """The ``num`` sampled frames of ``path`` as RGB images; ConversionError when the file cannot give them."""
    return [to_image(frame) for frame in decode_frames(path, num, backend=backend)]


def decode_frames(path: Path, num: int, *, backend: Backend = "auto") -> list[Any]:
    """The ``num`` sampled frames as the decoder gave them (``av.VideoFrame``, or a PIL image from decord).

    Kept undecided so that :func:`to_jpeg` can hand a YUV frame to the JPEG encoder without an RGB round trip.
    """
    if av is None:
        raise ConversionError("PyAV is not installed: pip install 'phi3v[video]'")
    problems: list[str] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ConversionError("the file has no video stream")
            if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # png_pipe, jpeg_pipe…
                raise ConversionError(f"the file is a still image ({container.format.name}), not a video")
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # workers give the parallelism; decoder threads only contend with them
            info = probe(container, stream)
            indices = sample_indices(info.count, num)
            for name in AUTO_ORDER if backend == "auto" else (backend,):
                try:
                    if name == "decord":
                        return _decord_frames(path, indices)
                    return _pyav_frames(container, stream, info, indices)
                except (ConversionError, av.FFmpegError) as exc:
                    problems.append(f"{name}: {exc}")
    except av.FFmpegError as exc:
        raise ConversionError(f"cannot decode: {exc}") from None
    raise ConversionError("cannot decode: " + "; ".join(problems))


def to_image(frame: Any) -> Image.Image:
    """An RGB PIL image of a frame from :func:`decode_frames`: one swscale pass, one copy."""
    if isinstance(frame, Image.Image):
        return frame
    rgb = _reformatter().reformat(frame, format="rgb24", threads=1)
    plane = rgb.planes[0]
    return Image.frombuffer("RGB", (rgb.width, rgb.height), plane, "raw", "RGB", plane.line_size, 1)


_JPEG_READY = frozenset({"yuv420p", "yuvj420p"})
_BT601 = frozenset({2, 5, 6})
"""AVColorSpace values JPEG's own YCbCr (BT.601) matches: unspecified (SD video), BT.470BG, SMPTE 170M."""


def to_jpeg(frame: Any, *, quality: int, max_side: int | None = None) -> bytes:
    """JPEG bytes of a frame from :func:`decode_frames`, at libjpeg ``quality`` (the scale PIL uses).

    A 4:2:0 BT.601 frame (most video) goes from the decoder's planes straight into libjpeg-turbo, range-expanded
    to full-range YCbCr but never converted to RGB and back (~0.2 ms of ~0.6 ms per 320x240 frame); other frames,
    and every frame when simplejpeg is not installed, go through an RGB PIL image.
    """
    if (
        simplejpeg is not None
        and not isinstance(frame, Image.Image)
        and frame.format.name in _JPEG_READY
        and frame.colorspace in _BT601
        and not (max_side and max(frame.width, frame.height) > max_side)
    ):
        if frame.format.name != "yuvj420p" and frame.color_range != 2:  # limited (TV) range: JPEG wants full range
            frame = _reformatter().reformat(frame, format="yuv420p", dst_color_range="JPEG", threads=1)
        planes = [
            numpy.frombuffer(plane, numpy.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
            for plane in frame.planes
        ]
        return simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality)
    image = to_image(frame)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample=3)
    image = image if image.mode == "RGB" else image.convert("RGB")
    if simplejpeg is not None:
        return simplejpeg.encode_jpeg(numpy.asarray(image), quality=quality, colorsubsampling="420")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _decord_frames(path: Path, indices: list[int]) -> list[Image.Image]:
    try:
        import decord
    except ImportError:
        raise ConversionError("decord is not installed (pip install decord)") from None
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        batch = reader.get_batch(indices).asnumpy()
    except Exception as exc:  # decord raises its own DECORDError, RuntimeError and IndexError alike
        raise ConversionError(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__) from None
    return [Image.fromarray(frame) for frame in batch]


_REFORMATTERS: dict[int, Any] = {}


def _reformatter() -> Any:
    """One swscale context per process: ``frame.to_ndarray(format=...)`` builds a new one per frame (~2 ms each).

    Keyed by pid because a context inherited through fork hangs (its worker threads did not come along). Callers
    pass ``threads=1``: swscale's own threads cost 20-40% more CPU on 320x240 frames, CPU the other workers want.
    """
    from av.video.reformatter import VideoReformatter

    pid = os.getpid()
    if pid not in _REFORMATTERS:
        _REFORMATTERS[pid] = VideoReformatter()
    return _REFORMATTERS[pid]


def decode_from(container: Any, stream: Any, info: Probe, keyframe: int) -> Iterator[Any]:
    """Decoded frames from the (display-order) keyframe ``keyframe`` to the end of the stream."""
    if info.packets is not None:
        context = stream.codec_context
        context.flush_buffers()
        for packet in info.packets[info.key_packets.get(keyframe, len(info.packets)) :]:
            yield from context.decode(packet)
        yield from context.decode(None)  # drain the frames the decoder still holds
        return
    if info.pts is not None and keyframe > 0:
        container.seek(info.pts[keyframe], stream=stream, backward=True, any_frame=False)
    else:
        container.seek(0)  # back to the start after the demux pass (flushes the decoder too)
    yield from container.decode(stream)


def _pyav_frames(container: Any, stream: Any, info: Probe, indices: list[int]) -> list[Any]:
    """Start at the keyframe before each wanted frame unless decoding forward gets there without a new keyframe."""
    got: dict[int, Any] = {}
    frames, pos, last = None, -1, None
    for target in sorted(set(indices)):
        keyframe = info.keyframe_before(target)
        if frames is None or (info.pts is not None and keyframe > pos):
            frames = decode_from(container, stream, info, keyframe)
        for frame in frames:
            index = info.index_of(frame.pts)
            pos = index if index is not None else pos + 1
            last = frame
            if pos >= target:
                break
        if last is None:
            raise ConversionError("no frame of the video could be decoded")
        got[target] = last
    return [got[i] for i in indices]
