"""The length cache: measured once (serially or in a pool, same result), reused while data, tokenizer and num_crops
stay, measured again when any changes; records read back by byte offset are the file's records."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

import phi3v_train.dataset
from phi3v_data.images import ImageProblem
from phi3v_data.tokens import num_image_tokens
from phi3v_train import lengths
from phi3v_train.model.processing_phi3v import TextEncoder
from phi3v_train.config import load_config
from phi3v_train.dataset import image_sizes, load_split, sample_length
from schemas.layout import images_dir
from phi3v_train.lengths import LengthCache, tokenizer_digest
from phi3v_train.model import Phi3VProcessor, bos_id
from phi3v_train.train import run
from schemas import Record
from train_fixtures import run_flags, write_dataset

EXTRA = [
    {"id": "u", "task": "chat", "conversations": [{"images": [], "user": "hi", "assistant": None}]},  # unlabeled
    {"id": "m", "conversations": [{"images": ["train/missing.png"], "user": "q", "assistant": "a"}]},  # unusable
    {"id": "t", "task": "chat", "conversations": [{"images": [], "user": "text only, ünïcode", "assistant": "ok"}]},
]


@pytest.fixture(scope="module")
def processor(tiny_model: Path) -> Phi3VProcessor:  # noqa: F811
    return Phi3VProcessor.from_pretrained(tiny_model, num_crops=2)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times records were measured (each call of lengths.measure)."""
    calls: list[int] = []
    real = lengths.measure

    def measure(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(phi3v_train.dataset, "measure", measure)
    return calls


def _data(root: Path) -> Path:
    data = write_dataset(root, extra=EXTRA)
    path = data / "colors_train.jsonl"
    path.write_text("\ufeff" + path.read_text().replace("\n", "\n\n", 1))  # a byte-order mark and a blank line 2
    return data


def _load(data: Path, processor: Phi3VProcessor, *, cache: LengthCache | None, num_crops: int = 2, **kwargs):
    return load_split(data, "train", encode=TextEncoder(processor.tokenizer), bos_id=bos_id(processor.tokenizer),
                      num_crops=num_crops, max_length=100_000, cache=cache, **kwargs)


def _by_hand(data: Path, processor: Phi3VProcessor, num_crops: int = 2) -> list[tuple[str, dict, int]]:
    """(where, record, length) of the usable records, measured one by one the way the old loader did."""
    out = []
    path = data / "colors_train.jsonl"
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        record = Record.model_validate(json.loads(line))
        if not record.labeled:
            continue
        try:
            sizes = image_sizes(record, images_root=images_dir(data), num_crops=num_crops)
        except ImageProblem:  # the missing image
            continue
        tokens = [num_image_tokens(w, h, num_crops) for w, h in sizes]
        length = sample_length(record, encode=TextEncoder(processor.tokenizer), bos_id=bos_id(processor.tokenizer),
                               image_tokens=tokens)
        out.append((f"{path}:{lineno}", record.model_dump(), length))
    return out


def test_cached_lengths_and_records_read_by_offset_equal_fresh_ones(tmp_path: Path, processor: Phi3VProcessor,
                                                                    counted: list[int]) -> None:
    data = _data(tmp_path / "data")
    cache = LengthCache(tokenizer_digest(processor.tokenizer), (data,))
    first, summary = _load(data, processor, cache=cache)
    again, cached = _load(data, processor, cache=cache)
    expected = _by_hand(data, processor)
    assert len(expected) == 9 and counted == [1]  # 8 colours + the text-only record; measured once
    assert (summary.cached, cached.cached) == (False, True)
    assert cached.cache_path == data / ".phi3v-cache" / cache.name("train", 2, bos_id(processor.tokenizer))
    assert (cached.kept, cached.unlabeled, cached.unusable) == (9, 1, 1)
    assert cached.problems == [f"{data / 'colors_train.jsonl'}:11: file does not exist"]
    for dataset in (first, again):
        got = [(s.where, s.record.model_dump(), s.length) for s in dataset.samples]
        assert got == expected
    assert again.lengths == [length for _, _, length in expected]
    assert again[1].image_sizes == ((30, 40),) and again[3].image_sizes == ((50, 20), (30, 40))
    assert again.text_only


def test_measuring_in_a_pool_gives_the_serial_arrays(tmp_path: Path, processor: Phi3VProcessor,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path / "data")
    path = data / "colors_train.jsonl"
    path.write_text(path.read_text(encoding="utf-8-sig") * 30, encoding="utf-8-sig")  # 30 copies: many ranges
    args = dict(images_root=images_dir(data), encode=TextEncoder(processor.tokenizer),
                bos_id=bos_id(processor.tokenizer), num_crops=2)
    serial = lengths.measure([path], workers=1, **args)
    monkeypatch.setattr(lengths, "RANGE_BYTES", 700)
    monkeypatch.setattr(lengths, "POOL_MIN_BYTES", 0)
    pooled = lengths.measure([path], workers=2, **args)
    assert len(serial) == 270 and (serial.unlabeled, serial.unusable) == (30, 30)
    for name in lengths.USABLE_FIELDS:
        assert np.array_equal(getattr(serial, name), getattr(pooled, name)), name
    assert (pooled.unlabeled, pooled.unusable, pooled.problems) == (serial.unlabeled, serial.unusable, serial.problems)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    assert serial.line[-1] == len(lines) and json.loads(lines[serial.line[-1] - 1])["id"] == "t"


def test_changed_data_tokenizer_or_num_crops_are_measured_again(tmp_path: Path, processor: Phi3VProcessor,
                                                                counted: list[int]) -> None:
    data = _data(tmp_path / "data")
    cache = LengthCache(tokenizer_digest(processor.tokenizer), (data,))
    _load(data, processor, cache=cache)
    path = data / "colors_train.jsonl"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: the digest still holds
    assert _load(data, processor, cache=cache)[1].cached and counted == [1]

    with path.open("a", encoding="utf-8") as handle:  # data changed
        handle.write(json.dumps({"id": "n", "task": "chat", "conversations": [
            {"images": [], "user": "new", "assistant": "one"}]}) + "\n")
    dataset, summary = _load(data, processor, cache=cache)
    assert not summary.cached and counted == [1, 1] and len(dataset) == 10
    assert _load(data, processor, cache=cache)[1].cached and counted == [1, 1]

    same_size = path.read_text(encoding="utf-8").replace('"one"', '"two"')  # same size, other bytes
    path.write_text(same_size, encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 3 * 10**9))
    assert not _load(data, processor, cache=cache)[1].cached and counted == [1, 1, 1]

    other = copy.deepcopy(processor.tokenizer)
    other.add_tokens(["zzqx"])
    assert tokenizer_digest(other) != tokenizer_digest(processor.tokenizer)
    assert not _load(data, processor, cache=LengthCache(tokenizer_digest(other), (data,)))[1].cached
    assert not _load(data, processor, cache=cache, num_crops=4)[1].cached
    assert counted == [1] * 5
    assert _load(data, processor, cache=cache)[1].cached and _load(data, processor, cache=cache, num_crops=4)[1].cached
    assert counted == [1] * 5  # each (tokenizer, num_crops) has its own file: going back measures nothing


def test_an_unwritable_dataset_caches_in_the_run_and_resumes_and_later_runs_measure_nothing(
    tmp_path: Path, tiny_model: Path, counted: list[int], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    data = write_dataset(tmp_path / "data")
    (data / ".phi3v-cache").write_text("")  # the dataset's folder takes no cache (as if read-only): the run's does
    run(load_config(flags=run_flags(data, tiny_model, tmp_path / "run", max_steps=1, save_every=1)))
    assert counted == [1] and list((tmp_path / "run" / ".phi3v-cache").glob("lengths-train-*.npz"))
    assert f"lengths measured, cached in {tmp_path / 'run' / '.phi3v-cache'}" in capsys.readouterr().err
    run(load_config(flags=run_flags(data, tiny_model, tmp_path / "run", max_steps=2, resume="latest")))
    assert counted == [1]  # the resume read the run's cache
    assert f"lengths from {tmp_path / 'run' / '.phi3v-cache'}" in capsys.readouterr().err
    (data / ".phi3v-cache").unlink()
    run(load_config(flags=run_flags(data, tiny_model, tmp_path / "run2", max_steps=1)))
    assert counted == [1, 1] and list((data / ".phi3v-cache").glob("lengths-train-*.npz"))
    run(load_config(flags=run_flags(data, tiny_model, tmp_path / "run3", max_steps=1)))
    assert counted == [1, 1]  # a later run on the same data


def test_a_clean_preflight_is_remembered_until_the_files_change(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import phi3v_data.validate
    from phi3v_train.dataset import preflight

    data = write_dataset(tmp_path / "data")
    checked: list[int] = []
    real = phi3v_data.validate.validate_files

    def validate_files(*args, **kwargs):
        checked.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(phi3v_data.validate, "validate_files", validate_files)
    assert preflight(data, "train", report_dir=tmp_path / "run", workers=1, remember=True) is None
    assert preflight(data, "train", report_dir=tmp_path / "run", workers=1, remember=True) is None
    assert checked == [1] and (data / ".phi3v-cache" / "preflight-train-deep.json").is_file()
    assert preflight(data, "train", report_dir=tmp_path / "run", workers=1) is None and checked == [1, 1]  # not asked
    broken = {"id": "b", "conversations": [{"images": ["train/missing.png"], "user": "q", "assistant": "a"}]}
    with (data / "colors_train.jsonl").open("a") as handle:
        handle.write(json.dumps(broken) + "\n")
    message = preflight(data, "train", report_dir=tmp_path / "run", workers=1, remember=True)
    assert message is not None and "colors_train.jsonl:9" in message and checked == [1, 1, 1]
    assert preflight(data, "train", report_dir=tmp_path / "run", workers=1, remember=True) is not None  # not remembered


def test_padding_figures_of_a_big_dataset_are_estimated_on_a_subset() -> None:
    from phi3v_train.sampler import LengthGroupedSampler, MixtureSampler
    from phi3v_train.train import PADDING_ESTIMATE, _padding_sampler

    small = LengthGroupedSampler([5, 6, 7], batch_size=1, global_batch_size=1)
    assert _padding_sampler(small) is small
    lengths = [10 + k % 997 for k in range(250_000)]
    plain = _padding_sampler(LengthGroupedSampler(lengths, batch_size=4, global_batch_size=8, seed=3))
    assert len(plain.lengths) == PADDING_ESTIMATE and set(plain.lengths) <= set(lengths) and plain.group_size == 8
    mixture = _padding_sampler(MixtureSampler(lengths, sizes=[200_000, 50_000], weights=[1, 3], batch_size=4,
                                              global_batch_size=8))
    assert (mixture.sizes, mixture.quotas, len(mixture)) == ([80_000, 20_000], [25_000, 75_000], 100_000)
    assert 0 <= mixture.padding_fraction(0) < mixture.ungrouped().padding_fraction(0)


def test_lines_read_by_the_fast_parse_keep_the_slow_paths_verdicts(tmp_path: Path, processor: Phi3VProcessor) -> None:
    from phi3v_data.io import LONE_SURROGATE

    data = write_dataset(tmp_path / "data", count=1)
    path = data / "colors_train.jsonl"
    chat = {"id": "p", "task": "chat", "conversations": [{"images": [], "user": "😀 \u00e9", "assistant": "ok"}]}
    lone = {**chat, "id": "l", "conversations": [{"images": [], "user": "\udcff", "assistant": "ok"}]}
    with path.open("a", encoding="utf-8") as handle:  # json.dumps escapes: a surrogate pair, a lone surrogate
        handle.write(f"{json.dumps(chat)}\n{json.dumps(lone)}\n{{\"id\": \"b\", \n\u3000\n")
    measured = lengths.measure([path], images_root=images_dir(data), encode=TextEncoder(processor.tokenizer),
                               bos_id=bos_id(processor.tokenizer), num_crops=2, workers=1)
    assert measured.line.tolist() == [1, 2] and (measured.unlabeled, measured.unusable) == (0, 2)
    assert measured.problems == [f"{path}:3: {LONE_SURROGATE}", f"{path}:4: invalid JSON: Expecting property name "
                                 "enclosed in double quotes (column 12)"]
    record = Record.model_validate(chat)
    assert measured.length[1] == sample_length(record, encode=TextEncoder(processor.tokenizer),
                                               bos_id=bos_id(processor.tokenizer), image_tokens=[])
