"""The converter framework: resume, failures, determinism, manifest, plugin discovery."""

import json
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from phi3v_data.cli import main
from phi3v_data.convert import CHUNK_MAX, _chunks, run_converter
from phi3v_data.converter import (
    ConversionError, Converter, ConverterOptions, ConvertUsageError, Failure, ImageWriter, Item,
)
from phi3v_data.plugins import GROUP, PluginError, converter_entry_points, load_converter

CALLS: list[str] = []


class ToyOptions(ConverterOptions):
    size: int = 4


class ToyConverter(Converter):
    """Reads a folder of `<split>/<name>.txt` files whose text is a colour name."""

    name = "toy"
    output_name = "toy"
    Options = ToyOptions
    scans_source = True

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        for path in sorted(source.rglob("*.txt")):
            if path.name.startswith("bad-line"):
                yield Failure(str(path.relative_to(source)), "malformed", line=3)
                continue
            yield Item(key=str(path.relative_to(source)), split=path.parent.name, payload=str(path))

    def convert(self, item: Item, out: ImageWriter) -> list[dict]:
        CALLS.append(item.key)
        colour = Path(item.payload).read_text().strip()
        if colour == "corrupt":
            raise ConversionError("cannot read colour")
        image = Image.new("RGB", (self.options.size, self.options.size), colour)
        rel = out.save(image, f"{item.split}/{Path(item.key).stem}.png")
        return [
            {"task": "classification", "conversations": [{"images": [rel], "user": "Colour?", "assistant": colour}]}
        ]


class InterruptAfter(ToyConverter):
    limit = 2

    def convert(self, item: Item, out: ImageWriter) -> list[dict]:
        if len(CALLS) >= self.limit:
            raise KeyboardInterrupt
        return super().convert(item, out)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for split, names in {"train": ["a", "b", "c", "d"], "val": ["e"]}.items():
        (src / split).mkdir(parents=True)
        for i, name in enumerate(names):
            (src / split / f"{name}.txt").write_text(["red", "green", "blue", "white"][i % 4])
    return src


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_records_ids_and_manifest(tmp_path: Path) -> None:
    result = run_converter(ToyConverter(), _source(tmp_path), tmp_path / "out", workers=1)
    assert result.counts == {"train": 4, "val": 1}
    lines = (tmp_path / "out" / "toy_train.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {
        "id": "train-0000000001",
        "source": "toy",
        "task": "classification",
        "conversations": [{"images": ["train/b.png"], "user": "Colour?", "assistant": "green"}],
    }
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 4, "val": 1}
    assert manifest["failures"] == 0
    assert manifest["params"]["options"] == {"seed": 0, "size": 4}
    assert Image.open(tmp_path / "out" / "images" / "train" / "b.png").getpixel((0, 0)) == (0, 128, 0)
    assert not (tmp_path / "out" / ".partial").exists()


def test_bad_items_are_reported_and_skipped(tmp_path: Path) -> None:
    src = _source(tmp_path)
    (src / "train" / "b.txt").write_text("corrupt")
    (src / "train" / "bad-line.txt").write_text("")
    result = run_converter(ToyConverter(), src, tmp_path / "out", workers=1)
    assert result.counts == {"train": 3, "val": 1}
    failures = [json.loads(line) for line in (tmp_path / "out" / "reports" / "failures.jsonl").read_text().splitlines()]
    assert failures == [
        {"file": "train/bad-line.txt", "reason": "malformed", "split": None, "line": 3},
        {"file": "train/b.txt", "reason": "cannot read colour", "split": "train", "line": None},
    ]
    # ids stay contiguous after a skipped item
    ids = [json.loads(line)["id"] for line in (tmp_path / "out" / "toy_train.jsonl").read_text().splitlines()]
    assert ids == ["train-0000000000", "train-0000000001", "train-0000000002"]


def test_interrupted_run_resumes_without_redoing_items(tmp_path: Path) -> None:
    src = _source(tmp_path)
    reference = tmp_path / "reference"
    run_converter(ToyConverter(), src, reference, workers=1)

    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run_converter(InterruptAfter(), src, tmp_path / "out", workers=1)
    assert CALLS == ["train/a.txt", "train/b.txt"]
    assert not (tmp_path / "out" / "toy_train.jsonl").exists()  # nothing half-written appears

    CALLS.clear()
    result = run_converter(ToyConverter(), src, tmp_path / "out", workers=1)
    assert result.reused == 2 and CALLS == ["train/c.txt", "train/d.txt", "val/e.txt"]
    assert _outputs(tmp_path / "out") == _outputs(reference)


def test_torn_journal_line_is_ignored(tmp_path: Path) -> None:
    src = _source(tmp_path)
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run_converter(InterruptAfter(), src, tmp_path / "out", workers=1)
    with open(tmp_path / "out" / ".partial" / "journal.jsonl", "a") as journal:
        journal.write('{"key": "train/c.txt", "reco')  # killed mid-write
    CALLS.clear()
    run_converter(ToyConverter(), src, tmp_path / "out", workers=1)
    assert CALLS == ["train/c.txt", "train/d.txt", "val/e.txt"]


def test_rerun_is_up_to_date_and_other_options_are_refused(tmp_path: Path) -> None:
    src = _source(tmp_path)
    run_converter(ToyConverter(), src, tmp_path / "out", workers=1)
    assert run_converter(ToyConverter(), src, tmp_path / "out", workers=1).up_to_date
    with pytest.raises(ConvertUsageError, match="--overwrite"):
        run_converter(ToyConverter(ToyOptions(size=8)), src, tmp_path / "out", workers=1)
    result = run_converter(ToyConverter(ToyOptions(size=8)), src, tmp_path / "out", workers=1, overwrite=True)
    assert result.counts == {"train": 4, "val": 1}
    assert Image.open(tmp_path / "out" / "images" / "train" / "a.png").size == (8, 8)


def test_worker_pool_output_equals_sequential(tmp_path: Path) -> None:
    src = _source(tmp_path)
    run_converter(ToyConverter(), src, tmp_path / "one", workers=1)
    run_converter(ToyConverter(), src, tmp_path / "two", workers=2)
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    one.pop("manifest.json"), two.pop("manifest.json")  # the manifest records the output path's params only
    assert one == two


def test_output_inside_the_source_is_refused(tmp_path: Path) -> None:
    src = _source(tmp_path)
    with pytest.raises(ConvertUsageError, match="inside the source"):
        run_converter(ToyConverter(), src, src / "converted", workers=1)


def test_overwrite_removes_images_of_the_earlier_conversion(tmp_path: Path) -> None:
    src = _source(tmp_path)
    run_converter(ToyConverter(), src, tmp_path / "out", workers=1)
    (src / "val" / "e.txt").unlink()
    run_converter(ToyConverter(ToyOptions(size=2)), src, tmp_path / "out", workers=1, overwrite=True)
    assert not (tmp_path / "out" / "images" / "val").exists()


def test_empty_source_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertUsageError, match="nothing to convert"):
        run_converter(ToyConverter(), tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # a wrong layout leaves nothing behind


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Install a third-party distribution that registers `toy` through the entry-point group, as a user would."""
    site = tmp_path / "site"
    package = site / "toy_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom test_convert import ToyConverter\n"
    )
    dist = site / "toy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\ntoy = toy_plugin:ToyConverter\nbroken = toy_plugin:Missing\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("toy_plugin", None)


def test_external_plugin_is_discovered_and_runs_from_the_cli(toy_plugin: None, tmp_path: Path) -> None:
    assert "toy" in converter_entry_points()
    assert load_converter("toy").__name__ == "ToyConverter"
    with pytest.raises(PluginError, match="failed to load"):
        load_converter("broken")

    runner = CliRunner()
    listing = runner.invoke(main, ["convert", "--list"], terminal_width=200)
    assert listing.exit_code == 0 and "toy" in listing.output and "broken" in listing.output
    help_ = runner.invoke(main, ["convert", "toy", "--help"])
    assert help_.exit_code == 0 and "--size" in help_.output

    src = _source(tmp_path)
    result = runner.invoke(main, ["convert", "toy", str(src), "--out", str(tmp_path / "out"), "--size", "2", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "out" / "toy_train.jsonl").read_text().splitlines()) == 4

    bad = runner.invoke(main, ["convert", "toy", str(src), "--out", str(tmp_path / "o2"), "--size", "x"])
    assert bad.exit_code == 2 and "--size" in bad.output


def test_strict_exits_non_zero_on_failures(toy_plugin: None, tmp_path: Path) -> None:
    src = _source(tmp_path)
    (src / "val" / "e.txt").write_text("corrupt")
    result = CliRunner().invoke(
        main, ["convert", "toy", str(src), "--out", str(tmp_path / "out"), "-j", "1", "--strict"]
    )
    assert result.exit_code == 1
    assert "cannot read colour" in result.output


class KilledAfter(ToyConverter):
    """Dies with SIGKILL (no cleanup, no finally blocks) when it reaches its third item: what `kill -9` does."""

    def convert(self, item: Item, out: ImageWriter) -> list[dict]:
        if item.key == "train/c.txt":
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return super().convert(item, out)


def test_a_run_killed_with_sigkill_resumes_to_the_same_output(tmp_path: Path) -> None:
    import subprocess
    import sys

    src = _source(tmp_path)
    reference = tmp_path / "reference"
    run_converter(ToyConverter(), src, reference, workers=1)
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\nfrom test_convert import KilledAfter\nfrom phi3v_data.convert import run_converter\n"
        f"run_converter(KilledAfter(), Path({str(src)!r}), Path({str(tmp_path / 'out')!r}), workers=1)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -9
    assert not (tmp_path / "out" / "toy_train.jsonl").exists()

    CALLS.clear()
    run_converter(ToyConverter(), src, tmp_path / "out", workers=1)
    assert CALLS == ["train/c.txt", "train/d.txt", "val/e.txt"]  # a.txt and b.txt were journaled before the kill
    assert _outputs(tmp_path / "out") == _outputs(reference)


def test_worker_tasks_shrink_to_single_items_at_the_end() -> None:
    """Guided scheduling: size = remaining // (workers * 8), at most CHUNK_MAX, at least 1; order and items kept."""
    items = [Item(f"k{i}", "train") for i in range(100)]
    chunks = _chunks(items, workers=2)
    assert [len(c) for c in chunks] == [6, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2] + [1] * 31
    assert [item for chunk in chunks for item in chunk] == items
    long_run = [len(c) for c in _chunks([Item(f"k{i}", "train") for i in range(13_320)], workers=2)]
    assert long_run[0] == CHUNK_MAX and long_run[-16:] == [1] * 16 and sum(long_run) == 13_320


# -- flat memory at any size (issue 20) ----------------------------------------------------------------------------

SEEN: list[int] = []


def _journal_lines(out: Path) -> int:
    journal = out / ".partial" / "journal.jsonl"
    return journal.read_text().count("\n") if journal.is_file() else 0


class Watching(ToyConverter):
    """Notes, as it plans each item from the third on, how many items the journal of ``OUT`` already holds."""

    out: Path

    def plan(self, source: Path) -> Iterator[Item | Failure]:
        for k, entry in enumerate(super().plan(source)):
            if k >= 2:
                SEEN.append(_journal_lines(self.out))
            yield entry


def test_the_plan_is_consumed_while_items_convert(tmp_path: Path) -> None:
    """One worker: the k-th item is planned only after k - 1 are journaled (two are read ahead)."""
    src = _source(tmp_path)
    Watching.out = tmp_path / "out"
    SEEN.clear()
    result = run_converter(Watching(), src, tmp_path / "out", workers=1)
    assert SEEN == [2, 3, 4] and result.counts == {"train": 4, "val": 1}


class ManyItems(Converter):
    """``count`` text-only items of ``size`` characters each; notes the journal's length when planning the last."""

    name = "many"
    output_name = "many"
    count, size = 300, 10
    out: Path | None = None

    def plan(self, source: Path) -> Iterator[Item]:
        for k in range(self.count):
            if k == self.count - 1 and self.out is not None:
                SEEN.append(_journal_lines(self.out))
            yield Item(f"item-{k:04d}", "train")

    def convert(self, item: Item, out: ImageWriter) -> list[dict]:
        return [{"task": "chat", "conversations": [{"images": [], "user": item.key, "assistant": "x" * self.size}]}]


def test_worker_pool_results_are_journaled_before_the_plan_ends(tmp_path: Path) -> None:
    """Two workers read ahead 2 * 8 * CHUNK_MAX items and keep 8 tasks in flight: 192 items, well before 300."""
    (tmp_path / "src").mkdir()
    ManyItems.out = tmp_path / "out"
    SEEN.clear()
    try:
        result = run_converter(ManyItems(), tmp_path / "src", tmp_path / "out", workers=2)
    finally:
        ManyItems.out = None
    assert result.counts == {"train": 300} and len(SEEN) == 1 and SEEN[0] >= CHUNK_MAX
    lines = (tmp_path / "out" / "many_train.jsonl").read_text().splitlines()
    users = [json.loads(line)["conversations"][0]["user"] for line in lines]
    assert users == [f"item-{k:04d}" for k in range(300)]  # plan order, not completion order


class BigRecords(ManyItems):
    count, size = 400, 20_000


def test_records_are_never_all_in_memory(tmp_path: Path) -> None:
    """400 records of 20 kB (8 MB): converting, journaling and assembling hold a few of them at a time."""
    import tracemalloc

    (tmp_path / "src").mkdir()
    run_converter(BigRecords(), tmp_path / "src", tmp_path / "warm", workers=1)  # imports, caches
    tracemalloc.start()
    try:
        result = run_converter(BigRecords(), tmp_path / "src", tmp_path / "out", workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.counts == {"train": 400}
    assert peak < 2_000_000, f"peak {peak:,} bytes"
    lines = (tmp_path / "out" / "many_train.jsonl").read_text().splitlines()
    assert len(lines) == 400 and json.loads(lines[-1])["id"] == "train-0000000399"


def test_a_journal_with_a_torn_tail_is_cut_before_appending(tmp_path: Path) -> None:
    from phi3v_data.convert import Journal, key_digest

    path = tmp_path / "journal.jsonl"
    path.write_text(
        '{"key": "a", "records": []}\n{"key": "b", "failure": {"file": "b", "reason": "x"}}\n{"key": "c", "rec'
    )
    with Journal(path) as journal:
        assert [key_digest(k) in journal.done for k in "abc"] == [True, False, False]  # b failed: retried
        journal.append("c", [{"task": "chat"}], None)
    assert path.read_text().splitlines() == [
        '{"key": "a", "records": []}', '{"key": "b", "failure": {"file": "b", "reason": "x"}}',
        '{"key": "c", "records": [{"task": "chat"}]}',
    ]
    with Journal(path) as journal:
        assert [key_digest(k) in journal.done for k in "abc"] == [True, False, True]
        assert journal.offsets_of(array("q", [key_digest("c"), key_digest("a")])).tolist() == [82, 0]


def test_a_split_file_no_run_wrote_is_refused_when_the_plan_reaches_it(tmp_path: Path) -> None:
    """The val split appears after four train items: its file, the user's, is refused then; once moved, the rerun
    reuses the train items."""
    src, out = _source(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "toy_val.jsonl").write_text("mine\n")
    CALLS.clear()
    with pytest.raises(ConvertUsageError, match="already holds toy_val.jsonl, which no earlier conversion recorded"):
        run_converter(ToyConverter(), src, out, workers=1)
    assert (out / "toy_val.jsonl").read_text() == "mine\n" and CALLS == [f"train/{n}.txt" for n in "abcd"]
    (out / "toy_val.jsonl").rename(tmp_path / "mine.jsonl")
    CALLS.clear()
    result = run_converter(ToyConverter(), src, out, workers=1)
    assert result.reused == 4 and CALLS == ["val/e.txt"] and result.counts == {"train": 4, "val": 1}


class Renamed(Converter):
    """Three items of the release's ``validation`` split, written as ``val``; the third's record names its own."""

    name = output_name = "renamed"

    def plan(self, source: Path) -> Iterator[Item]:
        yield Item("a", "val", source_split="validation")
        yield Item("b", "val", source_split="val")  # the same name: nothing to keep
        yield Item("c", "val", payload="dev", source_split="validation")

    def convert(self, item: Item, out: ImageWriter) -> list[dict]:
        record = {"task": "chat", "conversations": [{"images": [], "user": item.key, "assistant": "ok"}]}
        return [{**record, "source_split": item.payload} if item.payload else record]


def test_the_engine_stamps_the_release_split_name_of_an_item_on_its_records(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    result = run_converter(Renamed(), tmp_path / "src", tmp_path / "out", workers=1)
    records = [json.loads(line) for line in (tmp_path / "out" / "renamed_val.jsonl").read_text().splitlines()]
    assert [r.get("source_split") for r in records] == ["validation", None, "dev"]
    assert result.source_splits == {"val": "validation"}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["source_splits"] == {"val": "validation"}


def test_a_run_killed_while_assembling_writes_its_outputs_again(tmp_path: Path) -> None:
    """The outputs an assembly began are listed in .partial/assembling.json: the rerun may replace them."""
    import subprocess

    src, out = _source(tmp_path), tmp_path / "out"
    run_converter(ToyConverter(), src, tmp_path / "reference", workers=1)
    script = (
        "import os, signal\nfrom pathlib import Path\nimport phi3v_data.convert as engine\n"
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom test_convert import ToyConverter\n"
        "def dying(path, rows):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "engine.write_jsonl = dying  # the failures report: written after the split files\n"
        f"engine.run_converter(ToyConverter(), Path({str(src)!r}), Path({str(out)!r}), workers=1)\n"
    )
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == -9
    assert (out / "toy_train.jsonl").is_file() and not (out / "manifest.json").exists()
    CALLS.clear()
    result = run_converter(ToyConverter(), src, out, workers=1)
    assert result.reused == 5 and CALLS == []
    assert _outputs(out) == _outputs(tmp_path / "reference")


def test_journal_offsets_are_read_a_block_at_a_time_in_order() -> None:
    import numpy as np

    from phi3v_data.convert import _positions

    assert list(_positions(np.array([5, 6, 7, 8, 9]), block=2)) == [(0, 5), (1, 6), (2, 7), (3, 8), (4, 9)]
    assert list(_positions(np.zeros(0, np.int64))) == []


def test_overwrite_of_an_interrupted_run_redoes_every_item_and_its_images(tmp_path: Path) -> None:
    """--overwrite deletes the interrupted run's images, so its journal goes too (its records name those images)."""
    src, out = _source(tmp_path), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_converter(InterruptAfter(), src, out, workers=1)
    CALLS.clear()
    result = run_converter(ToyConverter(), src, out, workers=1, overwrite=True)
    assert result.reused == 0 and CALLS == ["train/a.txt", "train/b.txt", "train/c.txt", "train/d.txt", "val/e.txt"]
    for line in (out / "toy_train.jsonl").read_text().splitlines():
        assert (out / "images" / json.loads(line)["conversations"][0]["images"][0]).is_file()


def test_a_digest_set_answers_like_a_set_across_merges() -> None:
    from phi3v_data.convert import DigestSet

    digests = DigestSet([9, -4, 9], merge=3)
    for digest in (5, -7, 2**63 - 1, 0, -(2**63)):  # a merge after the third
        digests.add(digest)
    assert [d in digests for d in (9, -4, 5, -7, 2**63 - 1, 0, -(2**63), 1, -5, 6)] == [True] * 7 + [False] * 3


def test_output_claims_name_the_first_path_claimed_under_a_case_folded_name() -> None:
    from phi3v_data.converter import OutputClaims

    for first, second in (("val/Cat/1.png", "val/cat/1.png"), ("val/cat/1.png", "val/Cat/1.png")):
        claims = OutputClaims()
        assert claims.claim(first, "a") is None and claims.claim(second, "a") is None  # one source: the same bytes
        assert claims.claim("val/CAT/1.png", "b") == (
            f"b would be written to images/val/CAT/1.png and a to images/{first}: paths that differ only by case are "
            "one file on case-insensitive file systems (macOS, Windows); rename one")


def test_the_converter_errors_are_user_errors_at_the_cli_edge() -> None:
    """The contract's two errors derive from schemas.errors.UserError, so the CLI edge shows them as messages."""
    from phi3v_data.cli.errors import describe
    from schemas.errors import UserError

    assert issubclass(ConvertUsageError, UserError) and issubclass(ConversionError, UserError)
    shown = describe(ConvertUsageError("data/x: not a DocVQA folder"))
    assert shown is not None and (shown.message, shown.exit_code) == ("data/x: not a DocVQA folder", 1)
