"""Property-based fuzzing: ``phi3v-data validate`` never crashes and flags what is not a valid record."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from phi3v_data.cli import main
from phi3v_data.report import CODES
from phi3v_data.validate import LengthSpec, validate_file
from schemas import Record

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)

paths = st.sampled_from(["a/x.png", "a/x.png", "a/bad.png", "a/missing.png", "b/x.png", "/abs.png", "../up.png",
                         "a/../x.png", "a//x.png", "./a/x.png", "a/", "", " a/x.png", "a\\x.png", "a/x.png\x00",
                         "a", "link.png"]) | st.text(max_size=12)
texts = st.lists(st.sampled_from(["<|image_1|>", "<|image_2|>", "<|image_0|>", "<|image_99|>", "what", " ", "\n", ""]),
                 max_size=5).map("".join) | st.text(max_size=20)
turns = st.fixed_dictionaries(
    {"user": texts, "images": st.lists(paths, max_size=3), "assistant": st.sampled_from(["yes", "no", "cat"]) | texts},
    optional={"reference": st.fixed_dictionaries({}, optional={"label": st.sampled_from([0, 1, None]),
                                                               "answers": st.lists(st.text(max_size=5), max_size=2)})},
)
unlabeled_turns = turns.map(lambda turn: {**turn, "assistant": None})
records = st.fixed_dictionaries(  # mostly schema-valid, so the checks after the schema get exercised too
    {"id": st.sampled_from(["a", "b"]) | st.text(min_size=1, max_size=6),
     "conversations": st.lists(turns, min_size=1, max_size=3) | st.lists(unlabeled_turns, min_size=1, max_size=2)},
    optional={"task": st.sampled_from(["classification", "vqa", "binary", "caption", "chat"]),
              "source": st.none() | st.text(max_size=5)},
)


@pytest.fixture(scope="module")
def dataset() -> Path:
    """images/a/x.png (real), images/a/bad.png (not an image), images/link.png → outside; tokenizer in proc/."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = Path(tempfile.mkdtemp(prefix="phi3v-fuzz-"))
    (root / "images/a").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(root / "images/a/x.png")
    (root / "images/a/bad.png").write_bytes(b"junk")
    (root / "outside.png").write_bytes((root / "images/a/x.png").read_bytes())
    (root / "images/link.png").symlink_to(root / "outside.png")
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "what": 2}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (root / "proc").mkdir()
    tokenizer.save(str(root / "proc/tokenizer.json"))
    return root


def check(path: Path, **options):
    report = validate_file(path, **options)
    codes = {f.code for f in report.findings}
    assert "internal_error" not in codes, report.findings
    assert codes <= set(CODES)
    assert report.valid == (not report.findings)
    return report


@FUZZ
@given(content=st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_and_are_flagged(dataset: Path, content: bytes) -> None:
    path = dataset / "bytes.jsonl"
    path.write_bytes(content)
    report = check(path)
    assert not report.valid  # random bytes are never a record: either no records or a finding on some line


@FUZZ
@given(values=st.lists(json_values, min_size=1, max_size=4))
def test_arbitrary_json_values_are_each_flagged(dataset: Path, values: list) -> None:
    path = dataset / "values.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    report = check(path)
    assert {f.line for f in report.findings} == set(range(1, len(values) + 1))


@FUZZ
@given(rows=st.lists(records, min_size=1, max_size=4), deep=st.booleans())
def test_record_shaped_fuzz_never_crashes(dataset: Path, rows: list[dict], deep: bool) -> None:
    path = dataset / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = LengthSpec(num_crops=2, max_length=400, processor=dataset / "proc")
    report = check(path, image_check="deep" if deep else "header", lengths=lengths)
    flagged = {f.line for f in report.findings}
    for line in set(range(1, len(rows) + 1)) - flagged:  # what passes is a loadable record with existing images
        record = Record.model_validate(rows[line - 1])
        assert all((dataset / "images" / p).resolve().is_file() for p in record.images)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | st.lists(records, max_size=2).map(
    lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()))
def test_cli_never_tracebacks(dataset: Path, content: bytes) -> None:
    path = dataset / "cli.jsonl"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["validate", str(path), "--report", str(dataset / "r.json")])
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert json.loads((dataset / "r.json").read_text())["valid"] is (result.exit_code == 0)
