"""A self-contained HTML gallery of sampled records, so people look at converted data instead of reading jsonl.

The sample is drawn by reservoir sampling while the file streams past (constant memory, deterministic per seed).
Thumbnails are embedded as base64 JPEG, so the single HTML file can be mailed or opened anywhere. A record whose
line does not parse, whose fields break the schema or whose images are missing/corrupt is still shown, with its
problems in red — alongside whatever the validator (:mod:`phi3v_data.validate`) reports for that line.
"""

from __future__ import annotations

import base64
import html
import io
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from PIL import Image, ImageOps
from pydantic import ValidationError

from phi3v_data.images import ImageProblem, check_image, orientation, to_rgb
from phi3v_data.io import JsonlLine, UnsafePathError, atomic_write, iter_jsonl, resolve_inside
from schemas import Record, Turn
from schemas.errors import validation_lines
from schemas.layout import images_beside

T = TypeVar("T")


@dataclass(frozen=True)
class LineProblem:
    """Something wrong with a record: a stable code (the validator's codes) and a sentence for people."""

    code: str
    text: str


Findings = dict[int, list[LineProblem]]
"""Validator problems per 1-based jsonl line number."""


@dataclass
class Thumb:
    """One image of a turn: its embedded thumbnail, or why there is none."""

    path: str
    data_uri: str | None = None
    size: tuple[int, int] | None = None
    problem: LineProblem | None = None


@dataclass
class PreviewLine:
    """One sampled line, parsed as far as it goes."""

    lineno: int
    raw: str
    record: Record | None = None
    problems: list[LineProblem] = field(default_factory=list)
    thumbs: list[list[Thumb]] = field(default_factory=list)  # per turn


@dataclass
class Preview:
    source: Path
    total_lines: int
    seed: int
    items: list[PreviewLine]


def reservoir_sample(values: Iterable[T], k: int, *, seed: int = 0) -> tuple[list[T], int]:
    """Uniform sample of ``k`` values from a stream of unknown length (Algorithm R), plus how many there were.

    The sample keeps stream order, so a preview reads top to bottom like the file.
    """
    rng = random.Random(seed)
    chosen: list[tuple[int, T]] = []
    count = 0
    for count, value in enumerate(values, start=1):
        if len(chosen) < k:
            chosen.append((count, value))
        else:
            slot = rng.randrange(count)
            if slot < k:
                chosen[slot] = (count, value)
    return [value for _, value in sorted(chosen, key=lambda pair: pair[0])], count


def thumbnail_data_uri(path: Path, *, size: int = 256, quality: int = 80) -> tuple[str, tuple[int, int]]:
    """A ``data:image/jpeg;base64`` thumbnail (long side ≤ ``size``) and the original (width, height).

    The header is checked first, so a decompression bomb is refused before any pixel is decoded.
    """
    width, height = check_image(path)
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG decodes at reduced scale: fast for document pages
            if orientation(image) != 1:  # shown upright, as training uses it
                ImageOps.exif_transpose(image, in_place=True)
            image = _flatten(image)
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageProblem("image_undecodable", f"does not decode: {exc}") from None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), (width, height)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white, as JPEG needs."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return to_rgb(image)  # a 16-bit scan or a float TIFF scaled as training sees it, not clipped


def _make_thumb(images_dir: Path, rel: str, size: int) -> Thumb:
    try:
        data_uri, dims = thumbnail_data_uri(resolve_inside(images_dir, rel), size=size)
    except UnsafePathError as exc:
        return Thumb(rel, problem=LineProblem("image_path_unsafe", f"image {rel!r}: unsafe path: {exc}"))
    except ImageProblem as exc:
        return Thumb(rel, problem=LineProblem(exc.code, f"image {rel!r}: {exc} ({exc.code})"))
    return Thumb(rel, data_uri=data_uri, size=dims)


def build_item(line: JsonlLine, *, images_dir: Path, thumb: int = 256) -> PreviewLine:
    """Parse one sampled line and make its thumbnails; every failure becomes a listed problem."""
    item = PreviewLine(line.lineno, line.text)
    if line.error:
        item.problems.append(LineProblem("not_utf8" if "UTF-8" in line.error else "invalid_json", line.error))
        return item
    try:
        item.record = Record.model_validate(line.value)
    except ValidationError as exc:
        item.problems += [LineProblem("schema", line) for line in validation_lines(exc)]
        return item
    for turn in item.record.conversations:
        thumbs = [_make_thumb(images_dir, rel, thumb) for rel in turn.images]
        item.problems += [t.problem for t in thumbs if t.problem]
        item.thumbs.append(thumbs)
    return item


def build_preview(
    jsonl: Path,
    *,
    images_dir: Path | None = None,
    limit: int = 50,
    seed: int = 0,
    thumb: int = 256,
    findings: Findings | None = None,
) -> Preview:
    """Sample ``limit`` lines of ``jsonl`` and prepare them for :func:`render_html`.

    ``images_dir`` defaults to ``images/`` beside the jsonl (the converter layout). ``findings`` are validator
    problems per line number; they come first, and the preview's own findings of the same kind are dropped.
    """
    images_dir = images_dir if images_dir is not None else images_beside(jsonl)
    lines, total = reservoir_sample(iter_jsonl(jsonl), limit, seed=seed)
    items = [build_item(line, images_dir=images_dir, thumb=thumb) for line in lines]
    for item in items:
        found = (findings or {}).get(item.lineno, [])
        codes = {problem.code for problem in found}
        item.problems = found + [problem for problem in item.problems if problem.code not in codes]
    return Preview(jsonl, total, seed, items)


def validator_findings(jsonl: Path, *, images_dir: Path | None = None) -> Findings:
    """Problems ``phi3v-data validate`` reports for ``jsonl``, per line.

    Images are only checked for existence: the preview decodes every sampled image itself, which finds more than a
    header read, and skipping the headers of the records not shown keeps a preview of a big file quick.
    """
    from phi3v_data.validate import validate_file  # noqa: PLC0415 - only when asked for

    return findings_from_report(validate_file(jsonl, images_dir=images_dir, image_check="exists"))


def findings_from_report(report: object) -> Findings:
    """Group a :class:`phi3v_data.report.ValidationReport`'s findings by line: ``"code (field): message"``."""
    out: Findings = {}
    for finding in getattr(report, "findings", None) or []:
        if not finding.line:  # file-level findings (e.g. no records) belong to no record
            continue
        where = f" ({finding.field})" if getattr(finding, "field", "") else ""
        problem = LineProblem(finding.code, f"{finding.code}{where}: {finding.message}")
        out.setdefault(int(finding.line), []).append(problem)
    return out


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;background:#f6f6f6;color:#222}
header p{color:#555}
.record{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:0 0 1.2em}
.record.bad{border-color:#c00}
.record h2{font-size:1.05em;margin:0 0 .2em;font-family:monospace}
.meta{color:#666;font-size:.9em;margin-bottom:.5em}
.problems{color:#c00;margin:.3em 0 .6em;padding-left:1.2em}
.turn{border-top:1px dashed #ddd;padding:.5em 0}
.images{display:flex;flex-wrap:wrap;gap:.5em;margin-bottom:.4em}
figure{margin:0;font-size:.8em;color:#666;max-width:170px}
figcaption{overflow-wrap:anywhere}
figure:has(img.big){max-width:none}
img.thumb{max-width:160px;max-height:160px;border:1px solid #ccc;cursor:zoom-in;display:block}
img.thumb.big{max-width:none;max-height:none;cursor:zoom-out}
.missing{width:160px;height:120px;background:#fee;border:1px dashed #c00;color:#c00;display:flex;
 align-items:center;justify-content:center;text-align:center;font-size:.85em;padding:.3em;box-sizing:border-box}
.text{white-space:pre-wrap;font-family:inherit;margin:.2em 0 .4em;padding:.3em .5em;border-radius:4px}
.user{background:#eef3fb}.assistant{background:#eefbf0}.none{color:#999;font-style:italic}
.raw{white-space:pre-wrap;font-family:monospace;font-size:.85em;color:#555;word-break:break-all}
.label{font-weight:600;color:#444;font-size:.85em}
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _render_thumb(t: Thumb) -> str:
    caption = _esc(t.path) + (f" ({t.size[0]}×{t.size[1]})" if t.size else "")
    if t.data_uri is None:
        return ('<figure><div class="missing">image unavailable<br>'
                f'{_esc(t.problem.code if t.problem else "")}</div><figcaption>{caption}</figcaption></figure>')
    return (
        f'<figure><img class="thumb" src="{t.data_uri}" alt="{_esc(t.path)}" title="click to enlarge" '
        f"onclick=\"this.classList.toggle('big')\"><figcaption>{caption}</figcaption></figure>"
    )


def _render_turn(index: int, turn: Turn, thumbs: list[Thumb]) -> str:
    parts = [f'<div class="turn"><div class="label">turn {index + 1}</div>']
    if thumbs:
        parts.append('<div class="images">' + "".join(_render_thumb(t) for t in thumbs) + "</div>")
    parts.append(f'<div class="label">user</div><div class="text user">{_esc(turn.user)}</div>')
    if turn.assistant is None:
        parts.append('<div class="label">assistant</div><div class="text none">(unlabeled)</div>')
    else:
        parts.append(f'<div class="label">assistant</div><div class="text assistant">{_esc(turn.assistant)}</div>')
    ref = turn.reference
    if ref is not None and (ref.answers is not None or ref.label is not None):
        bits = []
        if ref.answers is not None:
            bits.append("answers: " + " | ".join(_esc(a) for a in ref.answers))
        if ref.label is not None:
            bits.append(f"label: {ref.label}")
        parts.append(f'<div class="meta">reference — {"; ".join(bits)}</div>')
    return "".join(parts) + "</div>"


def _render_item(item: PreviewLine) -> str:
    record = item.record
    title = _esc(record.id) if record else f"line {item.lineno}"
    meta = f"line {item.lineno}"
    if record:
        meta = f"source: {_esc(record.source or '—')} · task: {_esc(record.task)} · {meta}"
    parts = [f'<section class="record{" bad" if item.problems else ""}" id="line-{item.lineno}">', f"<h2>{title}</h2>"]
    parts.append(f'<div class="meta">{meta}</div>')
    if item.problems:
        parts.append('<ul class="problems">' + "".join(f"<li>{_esc(p.text)}</li>" for p in item.problems) + "</ul>")
    if record is None:
        parts.append(f'<div class="raw">{_esc(item.raw[:2000])}</div>')
    else:
        parts += [_render_turn(i, turn, thumbs)
                  for i, (turn, thumbs) in enumerate(zip(record.conversations, item.thumbs))]
    return "".join(parts) + "</section>"


def render_html(preview: Preview) -> str:
    """The whole gallery as one HTML document; all user-controlled text is escaped."""
    shown = len(preview.items)
    bad = sum(1 for item in preview.items if item.problems)
    summary = (
        f"{shown} of {preview.total_lines} records (random sample, seed {preview.seed}); "
        f'<span style="color:{"#c00" if bad else "#080"}">{bad} with problems</span>'
    )
    body = "\n".join(_render_item(item) for item in preview.items) or "<p>The file has no records.</p>"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Preview of {_esc(shown_name(preview.source))}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Preview of {_esc(shown_name(preview.source))}</h1><p>{summary}</p></header>\n{body}\n"
        "</body></html>\n"
    )


def output_path(out: Path) -> Path:
    """``out`` itself, or ``out/index.html`` when ``out`` is (or is meant as) a directory."""
    if out.is_dir() or str(out).endswith(("/", os.sep)) or not out.suffix:
        return out / "index.html"
    return out


def shown_name(path: Path) -> str:
    """``path.name`` as text a UTF-8 page can hold: a name in another encoding (Latin-1 ``caf\\xe9_val.jsonl``)
    shows its undecodable bytes escaped instead of ending the command with an encoding error."""
    return os.fsencode(path.name).decode("utf-8", "backslashreplace")


def write_preview(preview: Preview, out: Path) -> Path:
    """Write the gallery atomically; returns the file written."""
    target = output_path(out)
    with atomic_write(target, "w", encoding="utf-8", errors="backslashreplace") as handle:  # no text can end it
        handle.write(render_html(preview))
    return target
