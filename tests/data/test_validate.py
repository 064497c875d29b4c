"""``phi3v-data validate``: one deliberately broken file per problem kind, a clean file, reports, --output, lengths."""

from __future__ import annotations

import json
import os
import struct
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data.cli import main
from phi3v_data.report import CODES, percentile
from phi3v_data.validate import LengthSpec, iter_valid_records, validate_file


def png(path: Path, size: tuple[int, int] = (40, 30), *, noise: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)) if noise else Image.new("RGB", size, "red")
    image.save(path)
    return path


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A 1x1 PNG whose IHDR claims width x height (CRC fixed up): a decompression bomb by its header."""
    data = bytearray(png(path, (1, 1)).read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def record(rid: str = "r1", *, images: list[str] | None = None, user: str = "what is it", assistant: str | None = "cat",
           **extra) -> dict:
    return {"id": rid, "conversations": [{"images": images or [], "user": user, "assistant": assistant}], **extra}


def write(path: Path, *lines: dict | str | bytes) -> Path:
    with open(path, "wb") as handle:
        for line in lines:
            data = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
            handle.write(data + b"\n")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A dataset directory with images/a/x.png (40x30) and images/a/y.jpg (40x30)."""
    png(tmp_path / "images/a/x.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "images/a/y.jpg")
    return tmp_path


def findings(path: Path, **options) -> list[tuple[str, int, str | None, str, str]]:
    report = validate_file(path, **options)
    assert all(f.code in CODES for f in report.findings)
    return [(f.code, f.line, f.id, f.field, f.message) for f in report.findings]


# --- one test per problem kind -------------------------------------------------------------------------------------


def test_not_utf8(data: Path) -> None:
    path = write(data / "d.jsonl", b'{"id": "\xff"}')
    assert findings(path) == [("not_utf8", 1, None, "",
                               "not valid UTF-8 at byte 8 (invalid start byte); save the file as UTF-8")]


def test_invalid_json(data: Path) -> None:
    path = write(data / "d.jsonl", record("ok", images=["a/x.png"]), "", '{"id": "r2", ')
    assert findings(path) == [("invalid_json", 3, None, "",
                               "invalid JSON: Expecting property name enclosed in double quotes (column 14)")]


def test_byte_order_mark_and_crlf_are_accepted(data: Path) -> None:
    path = data / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record("a")).encode() + b"\r\n"
                     + json.dumps(record("b")).encode() + b"\r\n")
    assert findings(path) == []


def test_schema_reports_every_error_with_field_path(data: Path) -> None:
    bad = {"id": "r1", "task": "poem", "conversations": [{"images": ["a/x.png", 7], "assistant": "x"}], "extra": 1}
    assert findings(write(data / "d.jsonl", bad)) == [
        ("schema", 1, "r1", "task",
         "Input should be 'classification', 'vqa', 'binary', 'caption' or 'chat' (got \"poem\")"),
        ("schema", 1, "r1", "conversations[0].images[1]", "Input should be a valid string (got 7)"),
        ("schema", 1, "r1", "conversations[0].user", "required field is missing"),
        ("schema", 1, "r1", "extra", "is not a known field (misspelt?)"),
    ]


def test_schema_non_object_and_half_labeled(data: Path) -> None:
    half = {"id": "h", "conversations": [{"user": "a", "assistant": "b"}, {"user": "c", "assistant": None}]}
    assert findings(write(data / "d.jsonl", "[1, 2]", half)) == [
        ("schema", 1, None, "", "a record must be a JSON object, got an array"),
        ("schema", 2, "h", "", "either every turn has an assistant reply or none does (unlabeled record)"),
    ]


def test_a_schema_error_does_not_hide_an_empty_text(data: Path) -> None:
    broken = {"id": "x", "conversations": [{"images": ["../a.png"], "user": " ", "assistant": "b", "extra": 1}]}
    assert findings(write(data / "d.jsonl", broken)) == [
        ("image_path_unsafe", 1, "x", "conversations[0].images[0]", "'../a.png' climbs out with '..'"),
        ("schema", 1, "x", "conversations[0].extra", "is not a known field (misspelt?)"),
        ("empty_text", 1, "x", "conversations[0].user", "user text is empty"),
    ]


def test_duplicate_id_names_the_first_line(data: Path) -> None:
    path = write(data / "d.jsonl", record("a"), record("b"), record("a"))
    assert findings(path) == [("duplicate_id", 3, "a", "id", "id 'a' was already used on line 1")]


def test_empty_texts_whitespace_counts_as_empty(data: Path) -> None:
    path = write(data / "d.jsonl", record("u", user=" \n\t"), record("a", assistant="  "))
    assert findings(path) == [
        ("empty_text", 1, "u", "conversations[0].user", "user text is empty"),
        ("empty_text", 2, "a", "conversations[0].assistant",
         "assistant text is empty (use null for unlabeled records)"),
    ]


def test_image_tag_missing(data: Path) -> None:
    path = write(data / "d.jsonl", record(images=["a/x.png", "a/y.jpg"], user="<|image_2|> and this"))
    assert findings(path) == [("image_tag_missing", 1, "r1", "conversations[0].images[0]",
                               "image 1 has no <|image_1|> tag; this turn places tags, so it must place one for each "
                               "of its images")]


def test_image_tag_unknown(data: Path) -> None:
    path = write(data / "d.jsonl", record(images=["a/x.png"], user="<|image_1|> vs <|image_3|>"))
    assert findings(path) == [("image_tag_unknown", 1, "r1", "conversations[0].user",
                               "<|image_3|> refers to image 3 but the record has 1 image(s)")]


def test_image_tag_wrong_turn(data: Path) -> None:
    rec = {"id": "t", "conversations": [
        {"images": ["a/x.png"], "user": "first", "assistant": "ok"},
        {"images": ["a/y.jpg"], "user": "<|image_1|> <|image_2|> again", "assistant": "ok"}]}
    assert findings(write(data / "d.jsonl", rec)) == [
        ("image_tag_wrong_turn", 1, "t", "conversations[1].user",
         "<|image_1|> is placed in turn 1 but image 1 belongs to turn 0 (conversations[0].images[0])")]


def test_image_tag_duplicate(data: Path) -> None:
    path = write(data / "d.jsonl", record(images=["a/x.png"], user="<|image_1|> twice <|image_1|>"))
    assert findings(path) == [("image_tag_duplicate", 1, "r1", "conversations[0].user",
                               "<|image_1|> appears more than once")]


def test_image_tag_in_answer(data: Path) -> None:
    path = write(data / "d.jsonl", record(images=["a/x.png"], assistant="see <|image_1|>"))
    assert findings(path) == [("image_tag_in_answer", 1, "r1", "conversations[0].assistant",
                               "assistant text contains an <|image_k|> tag; tags belong in user text")]


def test_image_path_absolute_and_dotdot(data: Path) -> None:
    path = write(data / "d.jsonl", record(images=["a/x.png", "/etc/passwd", "a/../../x.png"]))
    assert findings(path) == [
        ("image_path_unsafe", 1, "r1", "conversations[0].images[1]",
         "'/etc/passwd' is absolute; paths in data files must be relative"),
        ("image_path_unsafe", 1, "r1", "conversations[0].images[2]", "'a/../../x.png' climbs out with '..'"),
    ]


def test_image_symlinks_follow_the_one_rule(data: Path) -> None:
    """phi3v_data.io.SYMLINK_RULE: a symlinked folder is followed (images on another disk); a symlinked file that
    leads outside is refused, named as such; a file link inside is fine."""
    outside = png(data / "outside/secret.png")
    os.symlink(outside, data / "images/a/link.png")
    os.symlink(outside.parent, data / "images/linkdir")
    os.symlink(data / "images/a/x.png", data / "images/a/inside.png")
    path = write(data / "d.jsonl", record(images=["a/link.png", "linkdir/secret.png", "a/inside.png"]))
    assert findings(path) == [
        ("image_path_unsafe", 1, "r1", "conversations[0].images[0]",
         f"a/link.png is a symlink to a file outside the dataset ({outside}); not read"),
    ]


def test_image_missing(data: Path) -> None:
    path = write(data / "d.jsonl", record(images=["a/nope.png", "b/x.png", "a"]))
    root = data / "images"
    assert findings(path) == [
        ("image_missing", 1, "r1", "conversations[0].images[0]", f"a/nope.png does not exist in {root}"),
        ("image_missing", 1, "r1", "conversations[0].images[1]", f"directory b/ does not exist in {root}"),
        ("image_missing", 1, "r1", "conversations[0].images[2]", "a is a directory, not an image file"),
    ]


def test_images_root_missing_says_to_point_images_at_it(data: Path) -> None:
    path = write(data / "d.jsonl", record(images=["a/x.png"]))
    assert findings(path, images_dir=data / "imgs") == [
        ("image_missing", 1, "r1", "conversations[0].images[0]",
         f"the images directory {data / 'imgs'} does not exist (point --images at it)")]


def test_image_undecodable_header(data: Path) -> None:
    (data / "images/a/text.png").write_text("not an image")
    path = write(data / "d.jsonl", record(images=["a/text.png"]))
    assert findings(path) == [("image_undecodable", 1, "r1", "conversations[0].images[0]",
                               "not a recognised image format")]


def test_truncated_image_passes_header_check_and_fails_deep(data: Path) -> None:
    full = png(data / "images/a/noise.png", (64, 64), noise=True).read_bytes()
    (data / "images/a/noise.png").write_bytes(full[: len(full) // 2])
    path = write(data / "d.jsonl", record(images=["a/noise.png"]))
    assert findings(path) == []
    [(code, line, rid, field, message)] = findings(path, image_check="deep")
    assert (code, line, rid, field) == ("image_undecodable", 1, "r1", "conversations[0].images[0]")
    assert "truncated" in message


def test_decompression_bomb_is_refused_by_its_header(data: Path) -> None:
    bomb_png(data / "images/a/bomb.png")
    path = write(data / "d.jsonl", record(images=["a/bomb.png"]))
    [(code, line, rid, field, message)] = findings(path)
    assert (code, line, rid, field) == ("image_too_large", 1, "r1", "conversations[0].images[0]")
    assert "decompression bomb" in message


def test_binary_answers(data: Path) -> None:
    yes = {"id": "y", "task": "binary", "conversations": [{"user": "q", "assistant": "yes", "reference": {"label": 1}}]}
    maybe = {"id": "m", "task": "binary", "conversations": [{"user": "q", "assistant": "Maybe"}]}
    wrong = {"id": "w", "task": "binary",
             "conversations": [{"user": "q", "assistant": "no", "reference": {"label": 1}}]}
    assert findings(write(data / "d.jsonl", yes, maybe, wrong)) == [
        ("binary_answer", 2, "m", "conversations[0].assistant", "binary answers must be 'yes' or 'no', got \"Maybe\""),
        ("binary_answer", 3, "w", "conversations[0].reference.label", "label 1 means 'yes' but the answer is 'no'"),
    ]


def test_empty_file_has_no_records(data: Path) -> None:
    path = write(data / "d.jsonl", "", "   ")
    assert findings(path) == [("no_records", 0, None, "", "the file contains no records")]


def test_unlabeled_records_are_counted_not_flagged(data: Path) -> None:
    path = write(data / "d.jsonl", record("a", assistant=None), record("b"))
    report = validate_file(path)
    assert report.valid and report.findings == []
    assert (report.stats.records, report.stats.ok, report.stats.unlabeled) == (2, 2, 1)


# --- the clean file, statistics, report, exit codes ----------------------------------------------------------------


def clean_file(data: Path) -> Path:
    return write(
        data / "clean.jsonl",
        record("c1", images=["a/x.png"], task="classification", source="ucf"),
        record("c2", images=["a/x.png", "a/y.jpg"], assistant="dog", task="classification", source="ucf"),
        record("c3", images=["a/y.jpg"], assistant="cat", task="classification", source="ucf"),
        {"id": "b1", "source": "memes", "task": "binary",
         "conversations": [{"images": ["a/x.png"], "user": "<|image_1|>\nhateful?", "assistant": "no",
                            "reference": {"label": 0}}]},
        record("u1", assistant=None, source="memes"),
    )


def test_clean_file_statistics(data: Path) -> None:
    report = validate_file(clean_file(data))
    assert report.valid
    stats = report.stats
    assert (stats.records, stats.ok, stats.with_problems, stats.unlabeled) == (5, 5, 0, 1)
    assert stats.sources == {"ucf": 3, "memes": 2}
    assert stats.tasks == {"classification": 3, "binary": 1, "chat": 1}
    assert stats.images_per_record == {0: 1, 1: 3, 2: 1}
    assert stats.labels == {"classification": {"cat": 2, "dog": 1}, "binary": {"no": 1}}


def test_cli_clean_file_exits_0(data: Path) -> None:
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["validate", str(clean_file(data))])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"VALID  {data / 'clean.jsonl'}: 5 records, no problems")


def test_cli_problems_exit_1_and_list_findings(data: Path) -> None:
    path = write(data / "d.jsonl", record("a"), record("a"))
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"INVALID  {path}: 1 of 2 records have problems" in result.output
    assert "d.jsonl:2  a  id  duplicate_id: id 'a' was already used on line 1" in result.output


@pytest.mark.parametrize("args", [
    ["missing.jsonl"],
    ["{d}", "--deep", "--exists-only"],
    ["{d}", "--max-length", "10"],
    ["{d}", "{d}", "--output", "out.jsonl"],
    ["{d}", "--processor", "{dir}", "--num-crops", "1"],  # a directory without tokenizer.json
    ["{d}", "--exists-only", "--processor", "{dir}"],
], ids=["missing-file", "deep-and-exists-only", "max-length-without-processor", "output-with-two-inputs",
        "processor-without-tokenizer", "exists-only-and-processor"])
def test_cli_usage_errors_exit_2(data: Path, args: list[str]) -> None:
    path = clean_file(data)
    argv = [a.format(d=path, dir=data / "images") for a in args]
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["validate", *argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_cli_processor_without_tokenizer_names_the_file(data: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(clean_file(data)), "--processor", str(data), "--num-crops", "4"])
    assert result.exit_code == 2
    assert f"cannot load {data / 'tokenizer.json'}" in result.output


def test_cli_processor_with_broken_config_names_file_line_and_column(data: Path) -> None:
    processor = data / "proc"
    processor.mkdir()
    (processor / "preprocessor_config.json").write_text('{\n  "num_crops": 4,\n}\n')
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["validate", str(clean_file(data)),
                                                             "--processor", str(processor)])
    assert result.exit_code == 2
    expected = (f"--processor: {processor / 'preprocessor_config.json'}:3: invalid JSON: Expecting property name "
                "enclosed in double quotes (column 1); fix it or pass --num-crops N")
    assert expected in " ".join(result.output.split()), result.output


def test_report_json_content(data: Path) -> None:
    path = write(data / "d.jsonl", record("a", images=["a/x.png"], source="s"), record("b", user=""))
    out = data / "report.json"
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["validate", str(path), "--report", str(out), "--quiet"])
    assert (result.exit_code, result.output) == (1, "")
    report = json.loads(out.read_text())
    assert report["valid"] is False
    assert report["files"] == [str(path)]
    assert report["findings"] == [{"code": "empty_text", "line": 2, "id": "b", "field": "conversations[0].user",
                                   "message": "user text is empty", "file": str(path)}]
    assert report["findings_not_kept"] == 0
    stats = report["stats"]
    assert (stats["records"], stats["ok"], stats["with_problems"], stats["unlabeled"]) == (2, 1, 1, 0)
    assert stats["findings_by_code"] == {"empty_text": 1} == stats["records_by_code"]
    assert stats["sources"] == {"s": 1, "(none)": 1}
    assert stats["images_per_record"] == {"0": 1, "1": 1}
    assert (stats["lengths"], stats["max_length"]) == (None, None)


def test_json_flag_prints_the_report(data: Path) -> None:
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["validate", str(clean_file(data)), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["stats"]["records"] == 5


def test_output_writes_exactly_the_valid_lines(data: Path) -> None:
    lines = ['{"id": "a", "conversations": [{"user": "hi", "assistant": "yo"}]}', "not json",
             '{"id":"b","conversations":[{"images":["a/x.png"],"user":"x","assistant":"y"}]}',
             '{"id": "a", "conversations": [{"user": "dup", "assistant": "yo"}]}',
             '{"id": "c", "conversations": [{"images": ["a/gone.png"], "user": "x", "assistant": "y"}]}']
    path = write(data / "d.jsonl", *lines)
    out = data / "clean/out.jsonl"
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["validate", str(path), "--output", str(out)])
    assert result.exit_code == 1
    assert out.read_text() == lines[0] + "\n" + lines[2] + "\n"
    assert f"wrote 2 valid records to {out}; dropped 3 (" in result.output
    for part in ("invalid_json: 1", "duplicate_id: 1", "image_missing: 1"):
        assert part in result.output
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temporary file left behind


def test_iter_valid_records_and_findings_by_line(data: Path) -> None:
    path = write(data / "d.jsonl", record("a"), record("b", user=" "), record("c", images=["a/x.png"]))
    assert [(line, rec.id) for line, rec in iter_valid_records(path)] == [(1, "a"), (3, "c")]
    assert [f.code for f in validate_file(path).findings_by_line[2]] == ["empty_text"]


def test_parallel_workers_match_serial(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("phi3v_data.validate.BLOCK_BYTES", 300)  # a few lines per block
    rows = [record(f"r{i % 7}", images=["a/x.png"] if i % 2 else ["a/missing.png"]) for i in range(20)]
    path = write(data / "d.jsonl", *rows)
    serial, parallel = validate_file(path), validate_file(path, workers=2)
    assert parallel.findings == serial.findings and parallel.stats == serial.stats
    assert serial.stats.findings_by_code == {"duplicate_id": 13, "image_missing": 10}


def test_percentile_nearest_rank() -> None:
    from collections import Counter

    lengths = Counter({10: 5, 20: 4, 30: 1})  # sorted values: 10 x5, 20 x4, 30
    assert [percentile(lengths, q) for q in (50, 90, 99, 100)] == [10, 20, 30, 30]


# --- exact sequence lengths ----------------------------------------------------------------------------------------


@pytest.fixture
def processor(tmp_path: Path) -> Path:
    """A word-level tokenizer: the Phi-3 chat markers are single added tokens, words split on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<s>", "<|user|>", "<|end|>", "<|assistant|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate([*specials, "what", "is", "it", "cat"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(specials)
    out = tmp_path / "proc"
    out.mkdir()
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "bos_token": "<s>"}))
    return out


def test_exact_length_counts_bos_text_and_image_tokens(data: Path, processor: Path) -> None:
    png(data / "images/sq.png", (336, 336))  # 313 tokens at num_crops=1
    path = write(data / "d.jsonl", record(images=["sq.png"]))
    # <s> | <|user|> | image: 313 | <s> (the official processor's BOS after each image) | what is it <|end|>
    # <|assistant|> | cat <|end|> <|endoftext|>  = 1 + 1 + 313 + 1 + 5 + 3
    report = validate_file(path, lengths=LengthSpec(num_crops=1, max_length=324, processor=processor))
    assert report.valid and report.stats.lengths == {324: 1}
    assert report.stats.length_summary() == {"p50": 324, "p90": 324, "p99": 324, "max": 324, "count": 1}


def test_too_long_by_answer_tokens(data: Path, processor: Path) -> None:
    png(data / "images/sq.png", (336, 336))
    path = write(data / "d.jsonl", record(images=["sq.png"]))
    assert findings(path, lengths=LengthSpec(num_crops=1, max_length=321, processor=processor)) == [
        ("too_long", 1, "r1", "", "324 tokens, over --max-length 321 by 3: truncating it would drop 3 answer token(s); "
                                  "lower --num-crops, use fewer or smaller images, or raise --max-length")]


def test_too_long_through_image_tokens_via_cli(data: Path, processor: Path) -> None:
    png(data / "images/sq.png", (336, 336))
    path = write(data / "d.jsonl", record(images=["sq.png"]))
    out = data / "r.json"
    args = ["validate", str(path), "--processor", str(processor), "--num-crops", "1", "--max-length", "100",
            "--report", str(out)]
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, args)
    assert result.exit_code == 1
    [finding] = json.loads(out.read_text())["findings"]
    assert finding["message"].startswith("324 tokens, over --max-length 100 by 224: truncating it would cut through "
                                         "image tokens (image 1)")
    assert "Sequence length" in result.output


def test_too_elongated_image_is_a_finding_not_a_length(data: Path, processor: Path) -> None:
    """The token formula counts a 10000x1 strip (157 tokens at --num-crops 4); training refuses it, so validate does."""
    png(data / "images/sq.png", (336, 336))
    png(data / "images/wide.png", (10000, 1))
    path = write(data / "d.jsonl", record("ok", images=["sq.png"]), record("strip", images=["sq.png", "wide.png"]))
    out = data / "r.json"
    args = ["validate", str(path), "--processor", str(processor), "--num-crops", "4", "--report", str(out)]
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, args)
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    assert [(f["code"], f["file"].endswith("d.jsonl"), f["line"], f["id"], f["field"], f["message"])
            for f in report["findings"]] == [
        ("image_aspect", True, 2, "strip", "conversations[0].images[1]",
         "wide.png: 10000x1 is too elongated for --num-crops 4: the HD transform would give a 0-pixel side; "
         "crop or pad the image, or drop the record")]
    # at --num-crops 32 the strip resizes to 10752x1, a usable (if wasteful) image: measured as usual
    assert findings(path, lengths=LengthSpec(num_crops=32, processor=processor)) == []


def test_bos_follows_tokenizer_config(data: Path, processor: Path) -> None:
    (processor / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    png(data / "images/sq.png", (336, 336))
    path = write(data / "d.jsonl", record(images=["sq.png"]))
    report = validate_file(path, lengths=LengthSpec(num_crops=1, processor=processor))
    assert report.stats.lengths == {322: 1}  # 324 less the two BOS


def test_parallel_workers_end_even_when_the_parent_swallows_sigterm(data: Path) -> None:
    """A pool worker forked while a handler that ignores SIGTERM is installed (the trainer's "save, then stop") must
    still end when its pool is terminated; it used to survive, and the parent waited for it forever."""
    rows = [record(f"r{i}", images=["a/x.png"]) for i in range(400)]
    path = write(data / "d.jsonl", *rows)
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: None)\n"
        "import phi3v_data.validate as v\n"
        "v.BLOCK_BYTES = 300\n"
        "for _ in range(20):  # the worker that hung was one the pool's terminate caught waiting for work\n"
        "    report = v.validate_file(sys.argv[1], workers=4)\n"
        "print(report.stats.records, report.valid)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert (proc.returncode, proc.stdout) == (0, "400 True\n"), proc.stderr


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"\nPPid:\t{pid}\n" in status.read_text():
                found.append(int(status.parent.name))
        except OSError:  # the process ended while we looked
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="finds the pool's workers through /proc")
def test_ctrl_c_during_a_parallel_validate_ends_it_with_130_and_one_line(data: Path) -> None:
    """Ctrl-C reaches every process of the group; a worker interrupted inside the pool's queue used to leave its lock
    taken, and the command then hung instead of exiting."""
    path = data / "d.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(300_000):
            handle.write(json.dumps({"id": f"r{i}", "conversations": [{"user": "q " * 20, "assistant": "a"}]}) + "\n")
    script = ("import signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # a background shell may ignore SIGINT
              "import phi3v_data.validate as v\n"
              "from phi3v_data.cli import main\n"
              "main(['validate', sys.argv[1], '--workers', '3'])\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "validate finished before the pool could be interrupted"
        time.sleep(0.5)  # the workers are taking blocks from the queue
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (proc.returncode, output.strip().splitlines()[-1]) == (130, "Error: interrupted"), output
    assert "Traceback" not in output


def test_validate_pool_workers_leave_ctrl_c_to_the_parent_and_die_on_terminate(data: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from phi3v_data.validate import CheckConfig, _start_worker

    config = CheckConfig(data / "images", "header", None)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # as a run's "save, then stop" handler would be
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                                 initargs=(config, os.getpid())) as pool:  # the pool validate_file starts
            seen = [pool.submit(signal.getsignal, number).result() for number in (signal.SIGINT, signal.SIGTERM)]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIG_IGN, signal.SIG_DFL]
