"""Dataset mixtures: `--data DIR:WEIGHT` parsing, weighted per-epoch draws, per-dataset logs and eval, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import phi3v_train.train as train_module
from phi3v_train.cli.run import run as run_command
from phi3v_train.config import ConfigError, DataSource, load_config, parse_data_spec, write_config
from phi3v_train.sampler import LengthGroupedSampler, MixtureSampler, mixture_quotas
from phi3v_train.train import RunError, run
from test_resume import Interrupt
from train_fixtures import run_flags, write_dataset

BASE = {"model": "m", "output": "o"}


# ---- --data parsing ------------------------------------------------------------------------------------------------


def test_only_a_trailing_number_is_a_weight(tmp_path: Path) -> None:
    assert parse_data_spec("data/docvqa:0.7") == DataSource(path=Path("data/docvqa"), weight=0.7)
    assert parse_data_spec("data/llava:3") == DataSource(path=Path("data/llava"), weight=3.0)
    assert parse_data_spec("data/v1:2:0.5") == DataSource(path=Path("data/v1:2"), weight=0.5)
    assert parse_data_spec("data/run:v2") == DataSource(path=Path("data/run:v2"), weight=1.0)
    assert parse_data_spec("C:/data/memes") == DataSource(path=Path("C:/data/memes"), weight=1.0)
    existing = tmp_path / "scan:2"
    existing.mkdir()
    assert parse_data_spec(str(existing)) == DataSource(path=existing, weight=1.0)  # a real directory wins
    with pytest.raises(ValueError, match=r"'data/x:0': the weight after ':' must be > 0"):
        parse_data_spec("data/x:0")


def test_one_dataset_stays_a_plain_directory_and_a_mixture_round_trips(tmp_path: Path) -> None:
    assert load_config(flags={**BASE, "data": "data/docvqa"}).data == Path("data/docvqa")
    assert load_config(flags={**BASE, "data": "data/docvqa:0.7"}).data == Path("data/docvqa")  # one = no mixture
    config = load_config(flags={**BASE, "data": ["data/docvqa:0.7", "data/llava:0.3"]})
    assert config.sources == [DataSource(path=Path("data/docvqa"), weight=0.7),
                              DataSource(path=Path("data/llava"), weight=0.3)]
    write_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"] == [{"path": "data/docvqa", "weight": 0.7}, {"path": "data/llava", "weight": 0.3}]
    assert load_config(tmp_path / "config.yaml").sources == config.sources
    (tmp_path / "mix.yaml").write_text("data:\n  - {path: a, weight: 2}\n  - path: b\n")
    assert ([(s.path.name, s.weight) for s in load_config(tmp_path / "mix.yaml", flags=BASE).sources]
            == [("a", 2), ("b", 1)])


@pytest.mark.parametrize(("data", "message"), [
    (["a:0.5", "a:0.5"], "--data: a given more than once"),
    (["a:-1", "b"], "--data: 'a:-1': the weight after ':' must be > 0"),
    ([{"path": "a", "weight": 0}, {"path": "b"}], "--data: entry 1: weight: Input should be greater than 0"),
    ([{"path": "a", "share": 1}, {"path": "b"}], "--data: entry 1: share: is not a known field (misspelt?)"),
])
def test_bad_mixtures_are_refused_naming_the_flag(data: list, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(flags={**BASE, "data": data})
    assert str(caught.value).startswith(message)


def test_cli_repeated_data_flags_become_a_mixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_run(config, **_):
        seen.append(config)
        raise RunError("stop here")

    monkeypatch.setattr(train_module, "run", fake_run)
    a, b = write_dataset(tmp_path / "a"), write_dataset(tmp_path / "b:v2")  # a ':' inside a path is no weight
    args = ["--model", "m", "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(run_command, ["--data", f"{a}:0.7", "--data", f"{b}:0.3", *args])
    assert result.exit_code == 1 and "stop here" in result.output
    assert seen[0].sources == [DataSource(path=a, weight=0.7), DataSource(path=b, weight=0.3)]
    CliRunner().invoke(run_command, ["--data", str(b), *args])
    assert seen[1].data == b


# ---- sampling --------------------------------------------------------------------------------------------------------


def test_quotas_follow_the_weights_and_fill_the_epoch_exactly() -> None:
    assert mixture_quotas([1000, 200], [0.7, 0.3]) == [840, 360]
    assert mixture_quotas([4, 2], [1, 2]) == [2, 4]
    assert mixture_quotas([5, 5], [1, 1]) == [5, 5]
    assert mixture_quotas([3, 3, 1], [1, 1, 1]) == [3, 2, 2]  # 7/3 each: the largest remainders, ties to the first


def test_mixture_draws_each_dataset_by_weight_deterministically() -> None:
    lengths = [10 + i for i in range(20)] + [100 + i for i in range(4)]  # dataset 0: 20 short, dataset 1: 4 long
    sampler = MixtureSampler(lengths, sizes=[20, 4], weights=[1, 1], batch_size=2, global_batch_size=4, seed=7)
    assert sampler.quotas == [12, 12] and len(sampler) == 24
    for epoch in range(3):
        order = sampler.order(epoch)
        per_source = Counter(0 if i < 20 else 1 for i in order)
        assert per_source == {0: 12, 1: 12}
        assert Counter(i for i in order if i >= 20) == {20: 3, 21: 3, 22: 3, 23: 3}  # 3 whole passes
        assert len(set(i for i in order if i < 20)) == 12  # a subset of the large dataset, no repeats
        assert order == MixtureSampler(lengths, sizes=[20, 4], weights=[1, 1], batch_size=2, global_batch_size=4,
                                       seed=7).order(epoch)  # a pure function of (seed, epoch): resume is exact
    assert {i for i in sampler.order(0) if i < 20} != {i for i in sampler.order(1) if i < 20}  # new subset per epoch
    # Length grouping still works per batch: no batch mixes a short and a long sample, so padding stays small.
    assert all(len({i < 20 for i in batch}) == 1 for batch in sampler.batches(0))
    assert sampler.padding_fraction(0) < 0.05 < sampler.ungrouped().padding_fraction(0)


def test_one_dataset_order_is_unchanged_by_mixture_support() -> None:
    # The order single-dataset runs had before mixtures (the sampler's doctest), and a mixture of one agrees.
    lengths = [5, 50, 6, 49]
    assert LengthGroupedSampler(lengths, batch_size=2, global_batch_size=2, seed=0).batches(0) == [[1, 3], [2, 0]]
    assert (MixtureSampler(lengths, sizes=[4], weights=[1], batch_size=2, global_batch_size=2).batches(0)
            == [[1, 3], [2, 0]])


# ---- training on a mixture -------------------------------------------------------------------------------------------


def _two_datasets(root: Path) -> tuple[Path, Path]:
    """colors: 4 samples; paints: 2, one with an image only paints/ has (a mixed-up images root would miss it)."""
    colors = write_dataset(root / "colors", count=4)
    write_dataset(colors, split="val", count=2)
    only = {"id": "paint-purple", "source": "paints", "task": "classification",
            "conversations": [{"images": ["train/purple.png"], "user": "What color is the image?",
                               "assistant": "purple"}]}
    paints = write_dataset(root / "paints", name="paints", count=1, extra=[only])
    Image.new("RGB", (20, 30), (128, 0, 128)).save(paints / "images" / "train" / "purple.png")
    return colors, paints


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_mixture_trains_by_weight_logs_per_dataset_and_resumes_exactly(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture
) -> None:
    colors, paints = _two_datasets(tmp_path)
    # Weights 1:2 over 4 + 2 samples: an epoch of 6 draws 2 colors and 4 paints (paints twice over); global batch 2
    # of per-device 1 makes 3 steps per epoch, so 5 steps cross an epoch boundary and the resume lands mid-epoch.
    def flags(name: str, **extra) -> dict:
        return {**run_flags(colors, tiny_model, tmp_path / name, strategy="lora", lr=1e-2, batch_size=1,
                            global_batch_size=2, max_steps=5, save_every=2, **extra),
                "data": [f"{colors}:1", f"{paints}:2"]}

    straight = run(load_config(flags=flags("a", eval_after=True, eval_split="val", eval_limit=2)))
    assert straight.status == "finished" and len(straight.losses) == 5
    err = capsys.readouterr().err
    assert ("data colors: 4 samples from colors_train.jsonl" in err
            and "data paints: 2 samples from paints_train.jsonl" in err)
    assert ("mixture: 6 samples per epoch: colors 2 (weight 1, 0.50× its samples), "
            "paints 4 (weight 2, 2.00× its samples)") in err
    logged = _log(tmp_path / "a")
    counts = [(row["samples/colors"], row["samples/paints"]) for row in logged]
    assert all(sum(pair) == 2 for pair in counts)  # one global batch per step
    assert [sum(c for c, _ in counts[:3]), sum(p for _, p in counts[:3])] == [2, 4]  # epoch 0 by weight exactly

    # Per-dataset evaluation: colors has a val split, paints has none and is named as not evaluated.
    assert "not evaluated: paints:" in err
    metrics = json.loads((tmp_path / "a" / "eval-after" / "metrics.json").read_text())
    assert list(metrics["datasets"]) == ["colors"] and metrics["datasets"]["colors"]["records"] == 2
    assert len((tmp_path / "a" / "eval-after" / "colors" / "predictions.jsonl").read_text().splitlines()) == 2

    preempted = run(load_config(flags=flags("b")), callbacks=[Interrupt(3, sigterm=True)])
    assert (preempted.status, preempted.global_step) == ("preempted", 3)
    resumed = run(load_config(flags=flags("b", resume="latest")))
    assert resumed.status == "finished" and resumed.global_step == 5
    # Same losses and the same datasets at every step: the resumed run saw the uninterrupted run's samples.
    assert _log(tmp_path / "b") == [{**row, **{k: _log(tmp_path / "b")[i][k] for k in TIMING}}
                                     for i, row in enumerate(logged)]
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["data"]
    assert saved == [{"path": str(colors), "weight": 1.0}, {"path": str(paints), "weight": 2.0}]


TIMING = ("images_per_s", "tokens_per_s", "peak_memory_gb")


def test_each_dataset_of_a_mixture_is_validated(tmp_path: Path, tiny_model: Path) -> None:
    colors, paints = _two_datasets(tmp_path)
    bad = {"id": "x", "conversations": [{"images": ["nope.png"], "user": "q", "assistant": "a"}]}
    write_dataset(paints, name="paints", count=1, extra=[bad])
    with pytest.raises(RunError) as caught:
        run(load_config(flags={**run_flags(colors, tiny_model, tmp_path / "run"),
                               "data": [str(colors), f"{paints}:2"]}))
    message = str(caught.value)
    assert message.startswith(f"{paints}: the dataset has problems (1 of 2 records") and str(colors) not in message
    assert (tmp_path / "run" / "preflight-paints-train.json").is_file()
