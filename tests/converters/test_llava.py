"""LLaVA / ShareGPT import: exact records, tag mapping, failures, and import → export → import round trips."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from converters.llava import LlavaConverter, LlavaOptions, ShareGPTConverter, image_destination
from phi3v_data.convert import run_converter
from phi3v_data.converter import ConvertUsageError
from phi3v_data.export import export_dataset


def _images(folder: Path) -> None:
    (folder / "coco").mkdir(parents=True)
    Image.new("RGB", (4, 3), "red").save(folder / "coco" / "x.png")
    Image.new("RGB", (5, 2), "blue").save(folder / "coco" / "y.jpg", quality=90)
    (folder / "coco" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _human_gpt(*texts: str) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(texts)]


LLAVA_ROWS = [
    {"id": "a1", "image": "coco/x.png", "conversations": _human_gpt("<image>\nWhat colour?", "Red.")},
    {
        "id": 7,
        "image": ["coco/x.png", "coco/y.jpg"],
        "conversations": [
            {"from": "system", "value": "Be brief."},
            *_human_gpt("Compare <image> and <image>.", "Same size.", "Which is blue?", "The second."),
        ],
    },
    {"image": "coco/y.jpg", "conversations": _human_gpt("Describe.", "A blue strip.")},
    {"id": "t", "conversations": _human_gpt("Hi", "Hello")},
    {"id": "u", "image": "coco/x.png", "conversations": _human_gpt("<image>\nWhat is it?")},
    {"id": "multi-turn-images", "image": ["coco/x.png", "coco/y.jpg"],
     "conversations": _human_gpt("<image>\nFirst?", "Red.", "And <image>?", "Blue.")},
    {"id": "too-many-tags", "image": "coco/x.png", "conversations": _human_gpt("<image> <image>", "?")},
    {"id": "missing", "image": "coco/missing.png", "conversations": _human_gpt("<image>", "?")},
    {"id": "escape", "image": "../outside.png", "conversations": _human_gpt("<image>", "?")},
    {"id": "twice-human", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
    {"id": "corrupt", "image": "coco/broken.jpg", "conversations": _human_gpt("<image>", "?")},
]

EXPECTED = [
    {"id": "a1", "source": "llava", "task": "chat",
     "conversations": [{"images": ["train/coco/x.png"], "user": "<|image_1|>\nWhat colour?", "assistant": "Red."}]},
    {"id": "7", "source": "llava", "task": "chat",
     "conversations": [
         {"images": ["train/coco/x.png", "train/coco/y.jpg"],
          "user": "Be brief.\n\nCompare <|image_1|> and <|image_2|>.", "assistant": "Same size."},
         {"images": [], "user": "Which is blue?", "assistant": "The second."}]},
    {"id": "train-0000000002", "source": "llava", "task": "chat",
     "conversations": [
         {"images": ["train/coco/y.jpg"], "user": "<|image_1|>\nDescribe.", "assistant": "A blue strip."}
     ]},
    {"id": "t", "source": "llava", "task": "chat",
     "conversations": [{"images": [], "user": "Hi", "assistant": "Hello"}]},
    {"id": "u", "source": "llava", "task": "chat",
     "conversations": [{"images": ["train/coco/x.png"], "user": "<|image_1|>\nWhat is it?", "assistant": None}]},
    {"id": "multi-turn-images", "source": "llava", "task": "chat",
     "conversations": [{"images": ["train/coco/x.png"], "user": "<|image_1|>\nFirst?", "assistant": "Red."},
                       {"images": ["train/coco/y.jpg"], "user": "And <|image_2|>?", "assistant": "Blue."}]},
]


def _llava_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _images(src / "imgs")
    (src / "llava.json").write_text(json.dumps(LLAVA_ROWS))
    return src / "llava.json"


def test_llava_rows_become_exact_records_and_failures(tmp_path: Path) -> None:
    source = _llava_source(tmp_path)
    options = LlavaOptions(image_folder=source.parent / "imgs")
    result = run_converter(LlavaConverter(options), source, tmp_path / "out", workers=1)

    assert _records(tmp_path / "out" / "llava_train.jsonl") == EXPECTED
    assert [asdict(f) for f in result.failures] == [
        {"file": "llava.json[6]", "reason": "2 <image> tag(s) but 1 image(s)", "split": "train", "line": None},
        {"file": "llava.json[8]", "reason": "image path refused: '../outside.png' climbs out with '..'",
         "split": "train", "line": None},
        {"file": "llava.json[9]",
         "reason": "message 2 is 'human' where a gpt turn belongs: turns must alternate human, gpt",
         "split": "train", "line": None},
        {"file": "llava.json[7]", "reason": f"{source.parent / 'imgs/coco/missing.png'}: file does not exist",
         "split": "train", "line": None},
        {"file": "llava.json[10]", "reason": f"{source.parent / 'imgs/coco/broken.jpg'}: not a recognised image format",
         "split": "train", "line": None},
    ]
    copied = tmp_path / "out" / "images" / "train" / "coco"
    assert sorted(p.name for p in copied.iterdir()) == ["x.png", "y.jpg"]
    assert (copied / "y.jpg").read_bytes() == (source.parent / "imgs" / "coco" / "y.jpg").read_bytes()


def test_llava_jsonl_reports_bad_lines_with_line_numbers(tmp_path: Path) -> None:
    _images(tmp_path)
    robot = {"id": "x", "conversations": [{"from": "robot", "value": "hi"}]}
    lines = [json.dumps(LLAVA_ROWS[0]), "{not json", json.dumps(robot), ""]
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    result = run_converter(
        LlavaConverter(LlavaOptions(split="val", task="vqa")), tmp_path / "data.jsonl", tmp_path / "out", workers=1
    )

    assert _records(tmp_path / "out" / "llava_val.jsonl") == [
        {"id": "a1", "source": "llava", "task": "vqa",
         "conversations": [{"images": ["val/coco/x.png"], "user": "<|image_1|>\nWhat colour?", "assistant": "Red."}]}
    ]
    assert [(f.file, f.line, f.reason) for f in result.failures] == [
        ("data.jsonl", 2, "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        ("data.jsonl", 3, "unsupported role 'robot' (expected human/user, gpt/assistant or system)"),
    ]


def test_sharegpt_messages_and_conversations_variants(tmp_path: Path) -> None:
    _images(tmp_path)
    rows = [
        {"messages": [{"role": "system", "content": "You judge colours."},
                      {"role": "user", "content": "<image>Colour?"},
                      {"role": "assistant", "content": "Red"}], "images": ["coco/x.png"]},
        {"id": "c", "system": "Short answers.", "conversations": _human_gpt("Two: <image><image>", "ok"),
         "images": ["coco/y.jpg", "coco/x.png"]},
        {"id": "bad", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    ]
    (tmp_path / "sg.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = run_converter(ShareGPTConverter(), tmp_path / "sg.jsonl", tmp_path / "out", workers=1)

    assert _records(tmp_path / "out" / "sharegpt_train.jsonl") == [
        {"id": "train-0000000000", "source": "sharegpt", "task": "chat",
         "conversations": [
             {"images": ["train/coco/x.png"], "user": "You judge colours.\n\n<|image_1|>Colour?", "assistant": "Red"}
         ]},
        {"id": "c", "source": "sharegpt", "task": "chat",
         "conversations": [{"images": ["train/coco/y.jpg", "train/coco/x.png"],
                            "user": "Short answers.\n\nTwo: <|image_1|><|image_2|>", "assistant": "ok"}]},
    ]
    assert [(f.line, f.reason) for f in result.failures] == [
        (3, "messages[0].content: Input should be a valid string (got an array)")
    ]


def test_image_destination_keeps_an_existing_split_prefix() -> None:
    assert image_destination("coco/x.png", "train") == "train/coco/x.png"
    assert image_destination("./train/coco/x.png", "train") == "train/coco/x.png"
    assert image_destination("train2017/x.png", "train") == "train/train2017/x.png"
    assert image_destination("val/x.png", "train") == "train/val/x.png"


def test_llava_round_trip_import_export_import(tmp_path: Path) -> None:
    source = _llava_source(tmp_path)
    first = tmp_path / "first"
    run_converter(LlavaConverter(LlavaOptions(image_folder=source.parent / "imgs")), source, first, workers=1)
    exported = export_dataset(first / "llava_train.jsonl", tmp_path / "exported.json", to="llava-multi")
    assert (exported.rows, exported.problems) == (6, [])

    second = tmp_path / "second"
    run_converter(
        LlavaConverter(LlavaOptions(image_folder=first / "images")), tmp_path / "exported.json", second, workers=1
    )
    assert _records(second / "llava_train.jsonl") == _records(first / "llava_train.jsonl") == EXPECTED
    y_jpg = Path("images", "train", "coco", "y.jpg")
    assert (second / y_jpg).read_bytes() == (first / y_jpg).read_bytes()


def test_sharegpt_round_trip_with_a_named_image_folder(tmp_path: Path) -> None:
    source = _llava_source(tmp_path)  # the same rows, read as ShareGPT (conversations + from/value)
    first = tmp_path / "first"
    run_converter(
        ShareGPTConverter(LlavaOptions(image_folder=source.parent / "imgs", split="val")), source, first, workers=1
    )
    export_dataset(
        first / "sharegpt_val.jsonl", tmp_path / "sg.jsonl", to="sharegpt", image_folder=first / "images" / "val"
    )
    assert json.loads((tmp_path / "sg.jsonl").read_text().splitlines()[1])["images"] == ["coco/x.png", "coco/y.jpg"]

    second = tmp_path / "second"
    options = LlavaOptions(image_folder=first / "images" / "val", split="val")
    run_converter(ShareGPTConverter(options), tmp_path / "sg.jsonl", second, workers=1)
    records = _records(second / "sharegpt_val.jsonl")
    assert records == _records(first / "sharegpt_val.jsonl")
    assert [r["id"] for r in records] == ["a1", "7", "val-0000000002", "t", "u", "multi-turn-images"]


def test_two_files_never_land_on_one_path(tmp_path: Path) -> None:
    Image.new("RGB", (2, 2), "red").save(tmp_path / "x.png")
    (tmp_path / "train").mkdir()
    Image.new("RGB", (2, 2), "blue").save(tmp_path / "train" / "x.png")
    rows = [
        {"id": n, "image": path, "conversations": _human_gpt("<image>", "?")}
        for n, path in enumerate(["x.png", "train/x.png", "."])
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = run_converter(LlavaConverter(), tmp_path / "d.jsonl", tmp_path / "out", workers=1)

    records = _records(tmp_path / "out" / "llava_train.jsonl")
    assert [r["conversations"][0]["images"] for r in records] == [["train/x.png"]]
    assert [(f.line, f.reason) for f in result.failures] == [
        (2, f"{tmp_path / 'train' / 'x.png'} and {tmp_path / 'x.png'} "
            "would both be written to images/train/x.png; rename one"),
        (3, "image path '.' names no file"),
    ]


def _instruct_150k(tmp_path: Path) -> Path:
    """Rows as in llava_instruct_150k.json: `id` is the COCO image id, shared by every conversation about the image."""
    coco = tmp_path / "coco" / "train2017"
    coco.mkdir(parents=True)
    for n, colour in ((33471, "red"), (52846, "blue"), (334872, "green"), (319154, "white")):
        Image.new("RGB", (4, 4), colour).save(coco / f"{n:012d}.jpg")
    rows = [
        {"id": "000000033471", "image": "000000033471.jpg",
         "conversations": _human_gpt("What are the colors of the bus in the image?\n<image>", "White and red.")},
        {"id": "000000052846", "image": "000000052846.jpg",
         "conversations": _human_gpt("<image>\nWhere is the cat?", "On a desk.")},
        {"id": "000000033471", "image": "000000033471.jpg",
         "conversations": _human_gpt("<image>\nDescribe the image in detail.", "A bus on a street.")},
        {"id": "000000033471", "image": "000000033471.jpg",  # the first row again: a true duplicate
         "conversations": _human_gpt("What are the colors of the bus in the image?\n<image>", "White and red.")},
        {"id": "000000334872", "image": "000000334872.jpg",
         "conversations": _human_gpt("<image>\nAny people?", "Two.")},
        {"id": "000000319154", "image": "000000319154.jpg",
         "conversations": _human_gpt("<image>\nWhat animal?", "A dog.")},
    ]
    path = tmp_path / "llava_instruct_150k.json"
    path.write_text(json.dumps(rows, indent=1))
    return coco


def test_rows_sharing_a_coco_id_get_distinct_ids_and_only_true_duplicates_fail(tmp_path: Path) -> None:
    coco = _instruct_150k(tmp_path)
    result = run_converter(
        LlavaConverter(LlavaOptions(image_folder=coco)), tmp_path / "llava_instruct_150k.json", tmp_path / "out",
        workers=1,
    )
    records = _records(tmp_path / "out" / "llava_train.jsonl")
    assert [r["id"] for r in records] == [
        "000000033471", "000000052846", "000000033471-2", "000000334872", "000000319154"
    ]
    assert records[2]["conversations"][0]["user"] == "<|image_1|>\nDescribe the image in detail."
    assert [(f.file, f.reason) for f in result.failures] == [
        ("llava_instruct_150k.json[3]",
         "duplicate of llava_instruct_150k.json[0]: same id '000000033471' and the same conversation"),
    ]


def test_val_ratio_carves_whole_images_deterministically(tmp_path: Path) -> None:
    coco = _instruct_150k(tmp_path)
    source = tmp_path / "llava_instruct_150k.json"

    def convert(out: str, seed: int) -> dict[str, list[dict]]:
        result = run_converter(LlavaConverter(LlavaOptions(image_folder=coco, val_ratio=0.25, seed=seed)), source,
                               tmp_path / out, workers=1)
        # 5 rows, 25% → 1: a single-row image (the two rows about bus 33471 would make 2)
        assert [c.describe() for c in result.carved] == ["val: 1 of 5 train items (20.0%, asked 25%)"]
        return {s: _records(tmp_path / out / f"llava_{s}.jsonl") for s in result.counts}

    first = convert("a", 0)
    assert convert("b", 0) == first
    val_images = {r["conversations"][0]["images"][0].split("/", 1)[1] for r in first["val"]}
    train_images = {r["conversations"][0]["images"][0].split("/", 1)[1] for r in first["train"]}
    assert not val_images & train_images  # the rows about one image stay on one side
    assert all(r["conversations"][0]["images"][0].startswith("val/") for r in first["val"])
    assert sum(map(len, first.values())) == 5
    assert (tmp_path / "a" / "images" / first["val"][0]["conversations"][0]["images"][0]).is_file()
    with pytest.raises(ValueError, match="cannot be val"):
        LlavaOptions(val_ratio=0.1, split="val")


def test_a_malformed_row_in_the_middle_of_a_big_array_is_one_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The array is streamed (ijson, then element by element past the bad row, in chunks smaller than the file):
    the broken row fails with its index and line, every other row converts, in order."""
    import phi3v_data.io

    monkeypatch.setattr(phi3v_data.io, "ARRAY_CHUNK", 4096)  # the file is ~190 kB: many chunk boundaries
    _images(tmp_path)
    rows = [json.dumps({"id": f"r{k}", "image": "coco/x.png" if k == 0 else None,
                        "conversations": _human_gpt(f"Question {k}?", f"Answer {k}.")}) for k in range(2000)]
    rows[1000] = '{"id": "r1000", "conversations": [oops]}'
    (tmp_path / "rows.json").write_text("[\n" + ",\n".join(rows) + "\n]")  # row k on line k + 2
    result = run_converter(LlavaConverter(), tmp_path / "rows.json", tmp_path / "out", workers=1)

    assert [(f.file, f.line, f.reason) for f in result.failures] == [
        ("rows.json[1000]", 1002, "invalid JSON: Expecting value (column 35)")]
    got = _records(tmp_path / "out" / "llava_train.jsonl")
    assert [r["id"] for r in got] == [f"r{k}" for k in range(2000) if k != 1000]
    assert got[0]["conversations"][0] == {"images": ["train/coco/x.png"], "user": "<|image_1|>\nQuestion 0?",
                                          "assistant": "Answer 0."}
    assert got[-1]["conversations"] == [{"images": [], "user": "Question 1999?", "assistant": "Answer 1999."}]


def test_repeated_ids_skip_ids_the_file_holds_and_duplicates_name_the_line_they_repeat(tmp_path: Path) -> None:
    rows = [("x", "A"), ("x-2", "B"), ("x", "C"), ("x", "A"), ("x", "D"), ("x-2", "B")]
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "conversations": _human_gpt(text, "ok")}) + "\n" for i, text in rows)
    )
    result = run_converter(LlavaConverter(), source, tmp_path / "out", workers=1)
    records = _records(tmp_path / "out" / "llava_train.jsonl")
    assert [(r["id"], r["conversations"][0]["user"]) for r in records] == [("x", "A"), ("x-2", "B"), ("x-3", "C"),
                                                                           ("x-4", "D")]
    assert [(f.file, f.line, f.reason) for f in result.failures] == [
        ("rows.jsonl", 4, "duplicate of line 1: same id 'x' and the same conversation"),
        ("rows.jsonl", 6, "duplicate of line 2: same id 'x-2' and the same conversation"),
    ]


def test_the_plan_keeps_no_rows_in_memory(tmp_path: Path) -> None:
    """400 rows of 20 kB (8 MB of json): planning reads the file twice and holds a few integers per row."""
    import tracemalloc

    _images(tmp_path)
    source = tmp_path / "big.json"
    rows = [{"id": f"r{k}", "image": ["coco/x.png", "coco/y.jpg"][k % 2],
             "conversations": _human_gpt("<image>\nSay.", f"{k} " + "x" * 20_000)} for k in range(400)]
    source.write_text(json.dumps(rows))
    del rows
    run_converter(LlavaConverter(LlavaOptions(val_ratio=0.1)), source, tmp_path / "warm", workers=1)
    tracemalloc.start()
    try:
        result = run_converter(LlavaConverter(LlavaOptions(val_ratio=0.1)), source, tmp_path / "out", workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.counts == {"train": 200, "val": 200}  # two images, one group each: the smaller (equal) goes
    assert peak < 2_000_000, f"peak {peak:,} bytes"


def test_a_file_that_changes_between_the_two_passes_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import converters.llava as llava

    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"id": "a", "conversations": _human_gpt("Hi", "Hello")}) + "\n")
    first_pass = llava._Survey.of

    def then_edited(path: Path, *, carve: bool) -> llava._Survey:
        survey = first_pass(path, carve=carve)
        with open(path, "a") as handle:  # another row lands after the first pass
            handle.write(json.dumps({"id": "b", "conversations": _human_gpt("Hey", "Yo")}) + "\n")
        return survey

    monkeypatch.setattr(llava._Survey, "of", then_edited)
    with pytest.raises(ConvertUsageError, match="rows.jsonl changed while it was read"):
        run_converter(LlavaConverter(), source, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()  # refused before the first item: nothing written
