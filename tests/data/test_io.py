import os
from pathlib import Path

import pytest

from phi3v_data.io import (UnsafePathError, atomic_write, dumps_utf8, iter_json_array, iter_jsonl, json_object_members,
                           resolve_inside, write_bytes, write_jsonl)


def test_resolve_inside_joins_relative_paths(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    assert resolve_inside(tmp_path, "./a//b.png") == tmp_path / "a" / "b.png"


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x.png", "a/../../x.png", "C:/x.png", "\\\\server\\x", ""])
def test_resolve_inside_refuses_escapes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, bad)


def test_resolve_inside_follows_symlinked_folders_but_not_files_leading_out(tmp_path: Path) -> None:
    root, mount, secrets = tmp_path / "root", tmp_path / "mnt" / "img", tmp_path / "secrets"
    root.mkdir()
    mount.mkdir(parents=True)
    secrets.mkdir()
    (mount / "a.png").write_bytes(b"x")
    (secrets / "key.png").write_bytes(b"x")
    os.symlink(mount, root / "img")  # images on another disk: the user's own layout, followed
    os.symlink(mount / "a.png", mount / "same.png")  # a link to a sibling inside the mounted folder
    os.symlink(secrets / "key.png", root / "leak.png")
    os.symlink(secrets / "key.png", mount / "leak2.png")
    os.symlink(root / "inner.png", root / "ok.png")
    assert resolve_inside(root, "img/a.png") == root / "img" / "a.png"
    assert resolve_inside(root, "img/same.png") == root / "img" / "same.png"
    assert resolve_inside(root, "ok.png") == root / "ok.png"  # a link that stays inside is fine
    for bad in ("leak.png", "img/leak2.png"):
        with pytest.raises(UnsafePathError, match="symlink to a file outside the dataset"):
            resolve_inside(root, bad)


@pytest.mark.parametrize(
    ("bad", "rule"),
    [("a\x00b.png", "NUL byte"), ("/etc/passwd", "absolute"), ("C:/x.png", "drive letter"), ("a/../../x.png", "'..'"),
     ("", "empty")],
)
def test_resolve_inside_names_the_broken_rule(tmp_path: Path, bad: str, rule: str) -> None:
    with pytest.raises(UnsafePathError, match=rule):
        resolve_inside(tmp_path, bad)


def test_atomic_write_leaves_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_iter_jsonl_reports_bad_lines_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n\xff\xfe\n[1, 2]\n')
    lines = list(iter_jsonl(path))
    assert [(line.lineno, line.value, line.error is None) for line in lines] == [
        (1, {"a": 1}, True),
        (3, None, False),
        (4, None, False),
        (5, [1, 2], True),
    ]
    assert lines[1].error.startswith("invalid JSON")
    assert lines[2].error.startswith("not valid UTF-8")


def test_write_jsonl_counts_and_drops_none(tmp_path: Path) -> None:
    from schemas import Record

    record = Record.model_validate({"id": "a", "conversations": [{"user": "hi", "assistant": "yo"}]})
    assert write_jsonl(tmp_path / "r.jsonl", [record, {"x": 1}]) == 2
    assert (tmp_path / "r.jsonl").read_text().splitlines() == [
        '{"id": "a", "task": "chat", "conversations": [{"images": [], "user": "hi", "assistant": "yo"}]}',
        '{"x": 1}',
    ]


def test_iter_jsonl_ignores_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert [line.value for line in iter_jsonl(path)] == [{"a": 1}]


def test_atomic_write_gives_ordinary_permissions(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a.txt") as handle:
        handle.write("x")
    (tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


def test_write_bytes_replaces_atomically_and_leaves_no_temp_on_failure(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.jpg"
    write_bytes(target, b"first")
    write_bytes(target, memoryview(b"second version"))
    assert target.read_bytes() == b"second version"
    real_write = os.write
    calls = []

    def short_then_fail(fd: int, data: memoryview) -> int:  # a short write, then a full disk
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_bytes(target, b"third version")
    monkeypatch.undo()
    assert calls == [13, 10]  # the rest of a short write is retried
    assert target.read_bytes() == b"second version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]
    with pytest.raises(FileNotFoundError):
        write_bytes(tmp_path / "missing" / "b.jpg", b"x")  # the directory must exist (ImageWriter makes it)


def test_iter_jsonl_fails_one_line_for_huge_numbers_lone_surrogates_and_deep_nesting(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"n": ' + "9" * 5000 + '}\n{"t": "\\udcff"}\n' + "[" * 50000 + "]" * 50000
                    + '\n{"ok": "\\ud83d\\ude00"}\n')
    got = [(line.lineno, line.value, line.error) for line in iter_jsonl(path)]
    assert got == [
        (1, {"a": 1}, None),
        (2, None, "invalid JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"),
        (3, None, "invalid JSON text: a \\uD800-\\uDFFF escape that is not part of a surrogate pair"),
        (4, None, "invalid JSON: nested too deeply"),
        (5, {"ok": "😀"}, None),  # a proper surrogate pair is ordinary text
    ]


def test_iter_json_array_reads_past_a_bad_element_with_its_line() -> None:
    text = '[{"a": "]"},\n' + "[" * 50000 + "]" * 50000 + ',\n {"b": 2}, 3 ]'
    got = [(line.lineno, line.value, line.error) for line in iter_json_array(text)]
    assert got == [(1, {"a": "]"}, None), (2, None, "invalid JSON: nested too deeply"), (3, {"b": 2}, None),
                   (3, 3, None)]
    members = json_object_members('{"split": "val", "data": [1, 2]}')
    assert ({key: '{"split": "val", "data": [1, 2]}'[a:b] for key, (a, b) in members.items()}
            == {"split": '"val"', "data": "[1, 2]"})
    with pytest.raises(ValueError):
        list(iter_json_array('[1, 2'))


def test_written_json_is_always_utf8(tmp_path: Path) -> None:
    assert write_jsonl(tmp_path / "a.jsonl", [{"t": "caf\u00e9"}, {"t": "\udcff"}]) == 2
    raw = (tmp_path / "a.jsonl").read_bytes()
    assert raw == '{"t": "café"}\n{"t": "\\udcff"}\n'.encode()  # readable where possible, escaped where it must be
    assert dumps_utf8({"t": "\ud800x"}) == '{"t": "\\ud800x"}' and dumps_utf8({"t": "é"}) == '{"t": "é"}'


def test_streamed_json_arrays_read_as_json_loads_across_chunk_boundaries(tmp_path: Path) -> None:
    import io as _io
    import json

    from phi3v_data.io import iter_json_array_stream, stream_json_array

    rows = [{"id": k, "t": "]} \\\" [{" * (k % 3), "n": [1.5, None, True, 10 ** 30 if k == 7 else k]}
            for k in range(40)]
    text = "\ufeff[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n"
    (tmp_path / "a.json").write_text(text, encoding="utf-8")
    got = list(stream_json_array(tmp_path / "a.json"))  # 10**30 is past ijson's 64 bits: row 7 on is re-read
    assert [(e.index, e.value, e.error) for e in got] == [(k, rows[k], None) for k in range(40)]
    streamed = list(iter_json_array_stream(_io.StringIO(text[1:]), chunk=5))  # elements cut by every boundary
    assert [(line.lineno, line.value) for line in streamed] == [(k + 2, rows[k]) for k in range(40)]
    assert [line.value for line in iter_json_array_stream(_io.StringIO(text[1:]), chunk=5, after=38)] == rows[38:]
    with pytest.raises(ValueError):
        list(iter_json_array_stream(_io.StringIO('[{"a": 1}, {"b": 2'), chunk=3))
