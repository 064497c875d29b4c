"""The HTML preview: sampling, escaping, problem listing, and (in headless Chromium) that every thumbnail loads."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner
from PIL import Image

from phi3v_data.cli.preview import preview as preview_cmd
from phi3v_data.preview import (
    build_preview,
    LineProblem,
    findings_from_report,
    output_path,
    render_html,
    reservoir_sample,
    write_preview,
)

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


def _dataset(root: Path) -> Path:
    """Four lines: a good two-image record, one with missing+corrupt images, a JSON error, a schema error."""
    images = root / "images" / "val"
    images.mkdir(parents=True)
    Image.new("RGB", (170, 220), "white").save(images / "page.jpg")
    Image.new("RGBA", (30, 20), (255, 0, 0, 128)).save(images / "red.png")
    (images / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    good = {
        "id": "val-1", "source": "docvqa", "task": "vqa",
        "conversations": [{"images": ["val/page.jpg", "val/red.png"], "user": HOSTILE, "assistant": "a < b",
                           "reference": {"answers": ["a < b", "<i>x</i>"]}}],
    }
    broken = {"id": "val-2", "conversations": [{"images": ["val/missing.jpg", "val/corrupt.jpg"], "user": "q"}]}
    path = root / "data_val.jsonl"
    path.write_text(
        json.dumps(good) + "\n" + json.dumps(broken) + "\n{not json\n"
        + json.dumps({"id": "", "conversations": []}) + "\n"
    )
    return path


def test_reservoir_sample_keeps_everything_when_small_and_is_deterministic() -> None:
    assert reservoir_sample(iter("abc"), 5) == (["a", "b", "c"], 3)
    first, total = reservoir_sample(range(1000), 10, seed=7)
    assert total == 1000
    assert first == reservoir_sample(range(1000), 10, seed=7)[0]
    assert first == sorted(first) and len(set(first)) == 10
    assert first != reservoir_sample(range(1000), 10, seed=8)[0]


def test_reservoir_sample_is_uniform() -> None:
    # 2 of 5 over 2000 seeds: each value is expected 800 times; Algorithm R is exact, so allow sampling noise only.
    counts = [0] * 5
    for seed in range(2000):
        for value in reservoir_sample(range(5), 2, seed=seed)[0]:
            counts[value] += 1
    assert sum(counts) == 4000
    assert all(720 < c < 880 for c in counts), counts


def test_html_escapes_user_text_and_lists_problems(tmp_path: Path) -> None:
    page = render_html(build_preview(_dataset(tmp_path), limit=50, thumb=64))
    assert "<script" not in page and "<b>bold" not in page
    assert html.escape(HOSTILE) in page
    assert "a &lt; b" in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert page.count('<img class="thumb"') == 2
    assert page.count('class="missing"') == 2
    problems = re.findall(r"<li>(.*?)</li>", page)  # the preview's own findings (no validator run here)
    assert problems == [
        html.escape("image 'val/missing.jpg': file does not exist (image_missing)"),
        html.escape("image 'val/corrupt.jpg': not a recognised image format (image_undecodable)"),
        "invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        html.escape('id: String should have at least 1 character (got "")'),
        "conversations: List should have at least 1 item after validation, not 0",
    ]
    assert "4 of 4 records" in page and "3 with problems" in page
    assert "(unlabeled)" in page  # val-2 has no assistant


def test_thumbnail_records_original_size_and_fits_thumb(tmp_path: Path) -> None:
    gallery = build_preview(_dataset(tmp_path), limit=1, seed=0, thumb=64)
    good = next(item for item in build_preview(tmp_path / "data_val.jsonl", thumb=64).items if item.lineno == 1)
    assert len(gallery.items) == 1 and gallery.total_lines == 4
    page, red = good.thumbs[0]
    assert (page.size, red.size) == ((170, 220), (30, 20))
    assert page.data_uri.startswith("data:image/jpeg;base64,") and page.problem is None


def test_validator_findings_come_first_and_replace_own_problems_of_the_same_code(tmp_path: Path) -> None:
    report = SimpleNamespace(findings=[
        SimpleNamespace(line=2, code="image_missing", field="conversations.0.images.0", message="no such file"),
        SimpleNamespace(line=1, code="too_long", field="", message="5000 tokens > 4096"),
        SimpleNamespace(line=0, code="no_records", field="", message="file-level: belongs to no record"),
    ])
    findings = findings_from_report(report)
    assert findings == {
        2: [LineProblem("image_missing", "image_missing (conversations.0.images.0): no such file")],
        1: [LineProblem("too_long", "too_long: 5000 tokens > 4096")],
    }
    items = build_preview(_dataset(tmp_path), thumb=32, findings=findings).items
    assert [p.text for p in items[0].problems] == ["too_long: 5000 tokens > 4096"]
    assert [p.code for p in items[1].problems] == ["image_missing", "image_undecodable"]  # own image_missing dropped
    assert items[1].problems[0].text.startswith("image_missing (conversations.0.images.0)")


def test_cli_shows_what_the_validator_found(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    result = CliRunner().invoke(preview_cmd, [str(dataset), "--out", str(tmp_path / "p.html"), "--thumb", "32"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "p.html").read_text()
    problems = re.findall(r'<ul class="problems">(.*?)</ul>', page)
    assert len(problems) == 3  # lines 2, 3 and 4; line 1 is clean
    assert "image_missing" in problems[0] and "image_undecodable" in problems[0]
    assert "invalid_json" in problems[1] and "schema" in problems[2]


def test_output_path_and_cli(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    assert output_path(tmp_path) == tmp_path / "index.html"
    assert output_path(tmp_path / "new_dir") == tmp_path / "new_dir" / "index.html"
    assert output_path(tmp_path / "p.html") == tmp_path / "p.html"
    result = CliRunner().invoke(
        preview_cmd, [str(dataset), "--out", str(tmp_path / "site"), "--limit", "2", "--thumb", "32", "--no-validate"]
    )
    assert result.exit_code == 0, result.output
    written = (tmp_path / "site" / "index.html").read_text()
    assert "2 of 4 records" in written
    missing = CliRunner().invoke(preview_cmd, [str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x.html")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


_PROBE = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({
    widths: [...document.images].map(i => i.naturalWidth),
    users: [...document.querySelectorAll('.user')].map(e => e.textContent),
    injected: document.querySelectorAll('.user b, .user script').length,
  });
  document.body.appendChild(out);
});
</script></body>"""


def test_images_load_in_headless_chromium(tmp_path: Path, headless_probe) -> None:
    gallery = build_preview(_dataset(tmp_path), thumb=64)
    probe = headless_probe(write_preview(gallery, tmp_path / "preview.html"), _PROBE)
    assert probe["widths"] == [64 * 170 // 220, 30]  # thumbnails keep aspect; the 30×20 image is not enlarged
    assert probe["users"] == [HOSTILE, "q"]
    assert probe["injected"] == 0


def _pipe_of(data: bytes) -> str:
    """``/dev/fd/N`` of a pipe holding ``data``, as a shell's ``<(cat x.jsonl)`` gives it (readable once)."""
    import os

    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    return f"/dev/fd/{read}"


def test_preview_of_a_pipe_shows_its_records_or_says_why_not(tmp_path: Path) -> None:
    images = tmp_path / "images" / "val"
    images.mkdir(parents=True)
    rows = []
    for index, colour in enumerate(("red", "blue")):
        Image.new("RGB", (8, 8), colour).save(images / f"{index}.png")
        rows.append({"id": f"r{index}", "conversations": [{"images": [f"val/{index}.png"], "user": f"Colour {index}?",
                                                           "assistant": colour}]})
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    result = CliRunner().invoke(preview_cmd, [_pipe_of(data), "--out", str(tmp_path / "p.html"),
                                              "--images", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    assert "2 of 2 records" in " ".join(result.output.split()) and "0 with problems" in result.output
    page = (tmp_path / "p.html").read_text()
    assert "Colour 0?" in page and "Colour 1?" in page and "data:image/jpeg;base64," in page
    pipe = _pipe_of(data)
    refused = CliRunner().invoke(preview_cmd, [pipe, "--out", str(tmp_path / "q.html")])
    assert refused.exit_code == 2
    assert f"{pipe} is a pipe, so there is no images/ folder beside it; give --images DIR" in refused.output


def test_a_dataset_named_in_latin1_previews_with_the_bytes_escaped(tmp_path: Path) -> None:
    import os

    from phi3v_data.cli import main

    (tmp_path / "images" / "val").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "val" / "a.png")
    dataset = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9_val.jsonl"))
    record = {"id": "a", "conversations": [{"images": ["val/a.png"], "user": "Colour?", "assistant": "red"}]}
    dataset.write_text(json.dumps(record) + "\n")
    result = CliRunner().invoke(main, ["preview", str(dataset), "--out", str(tmp_path / "p.html")])
    assert result.exit_code == 0, result.output
    assert "<h1>Preview of caf\\xe9_val.jsonl</h1>" in (tmp_path / "p.html").read_text(encoding="utf-8")
