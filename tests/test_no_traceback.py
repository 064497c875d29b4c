"""Every subcommand over a corpus of broken or mistaken inputs: one clear line, exit 1 or 2, never a traceback.

Each case names what its message must mention (the flag, the file or the extra to install), so a case passes only
when the user is told what is wrong, not merely when nothing crashed. Most cases run in-process through click's
CliRunner against the real entry-point groups (the same guard the console scripts use); a few run the console
scripts as subprocesses to check what a shell sees, and that a bad path is refused before torch is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from phi3v_data.cli import main as data_main
from phi3v_train.cli import main as train_main

BIN = Path(sys.executable).parent


@dataclass
class Case:
    """``argv`` run in ``world`` (``{w}`` = its path); the output must name every string of ``mentions``."""

    program: str  # "data" | "train"
    argv: list[str]
    mentions: list[str]
    block: list[str] = field(default_factory=list)  # modules made unimportable (a missing optional extra)
    prepare: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    codes: tuple[int, ...] = (1, 2)  # the exit statuses the case may end with


def _write_record(path: Path, image: str, *, split: str) -> dict:
    return {"id": f"{split}-{path.stem}", "source": "t", "task": "classification",
            "conversations": [{"images": [image], "user": "What colour?", "assistant": "red"}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model, a tiny dataset and the broken things a first day meets, in one directory."""
    from phi3v_train.model import create_tiny_checkpoint

    root = tmp_path_factory.mktemp("world")
    create_tiny_checkpoint(root / "tiny", preset="tiny", seed=0, num_crops=1)
    data = root / "data"
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        rows = []
        for index in range(2):
            Image.new("RGB", (24, 24), (200, 20 * index, 20)).save(data / "images" / split / f"{index}.png")
            record = _write_record(Path(f"{index}.jsonl"), f"{split}/{index}.png", split=split)
            rows.append(json.dumps(record))
        (data / f"colors_{split}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "afile").write_text("not a directory\n")
    (root / "garbage.jsonl").write_text("{not json\n\x00\x01 binary\n")
    (root / "clip.avi").write_bytes(b"RIFF....AVI not really")
    # weights: a truncated safetensors file, and a pickle holding an object torch refuses to unpickle
    for name in ("corrupt", "pickled", "adapter"):
        (root / name).mkdir()
        for item in (root / "tiny").iterdir():
            if item.name != "model.safetensors":
                (root / name / item.name).write_bytes(item.read_bytes())
    (root / "corrupt" / "model.safetensors").write_bytes((root / "tiny" / "model.safetensors").read_bytes()[:1000])
    torch.save({"weights": argparse_namespace()}, root / "pickled" / "pytorch_model.bin")
    (root / "adapter" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": str(root / "tiny"), "r": 4, "lora_alpha": 8,
        "target_modules": ["qkv_proj"], "task_type": "CAUSAL_LM"}))
    (root / "adapter" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    memes = root / "memes"
    (memes / "img").mkdir(parents=True)
    Image.new("RGB", (24, 24)).save(memes / "img" / "01.png")
    (memes / "train.jsonl").write_text('{"id": 1, "img": "img/01.png", "label": 0, "text": "hi"}\n')
    (memes / "dev.jsonl").write_text('{"id": 1, "img": "img/01.png", "label": 0, "text": "hi"}\n')
    (root / "parquet").mkdir()
    (root / "parquet" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 not really PAR1")
    (root / "bad.yaml").write_text("data: [unclosed\n")
    (root / "llama_factory.yaml").write_text("learning_rate: 1e-4\nlora_rank: 8\nper_device_train_batch_size: 2\n")
    return root


def argparse_namespace() -> object:
    import argparse

    return argparse.Namespace(x=1)


def _unreadable_dev_jsonl(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any file whatever its mode, so the permission error is raised where the file is opened."""
    real_open = Path.open

    def open_(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.name == "dev.jsonl":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    real_builtin_open = open

    def builtin_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file).endswith("dev.jsonl"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_builtin_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", builtin_open)


RUN = ["run", "--model", "{w}/tiny", "--strategy", "full", "--precision", "fp32", "--num-crops", "1",
       "--max-steps", "1", "--workers", "0", "--no-tensorboard"]

CASES: dict[str, Case] = {
    # phi3v-data
    "convert a video file, not a folder": Case(
        "data", ["convert", "video", "{w}/clip.avi", "--out", "{w}/o1"], ["clip.avi"]),
    "convert a missing source": Case("data", ["convert", "video", "{w}/nope", "--out", "{w}/o2"], ["nope"]),
    "convert an unknown converter": Case("data", ["convert", "nosuch", "{w}/data", "--out", "{w}/o3"], ["nosuch"]),
    "convert hateful-memes with an unreadable dev.jsonl": Case(
        "data", ["convert", "hateful-memes", "{w}/memes", "--out", "{w}/o4"], ["dev.jsonl"],
        prepare=_unreadable_dev_jsonl),
    "convert parquet without pyarrow": Case(
        "data", ["convert", "docvqa", "{w}/parquet", "--out", "{w}/o5"], ["pyarrow", "pip install 'phi3v[hf]'"],
        block=["pyarrow", "pyarrow.parquet", "pyarrow.ipc"]),
    "convert into a file": Case("data", ["convert", "folder", "{w}/data", "--out", "{w}/afile"], ["afile"]),
    "validate garbage": Case("data", ["validate", "{w}/garbage.jsonl"], ["garbage.jsonl"]),
    "validate --report under a file": Case(
        "data", ["validate", "{w}/data/colors_val.jsonl", "--report", "{w}/afile/r.json"], ["--report", "afile"]),
    "validate --output under a file": Case(
        "data", ["validate", "{w}/data/colors_val.jsonl", "--output", "{w}/afile/c.jsonl"], ["--out /", "afile"]),
    "validate --processor without the training extra": Case(
        "data", ["validate", "{w}/data/colors_val.jsonl", "--processor", "{w}/tiny"], ["pip install 'phi3v[train]'"],
        block=["tokenizers"],
        prepare=lambda w, mp: __import__("phi3v_data.record_checks").record_checks._ENCODERS.clear()),
    "validate a missing file": Case("data", ["validate", "{w}/nope.jsonl"], ["nope.jsonl"]),
    "preview into a file's child": Case("data", ["preview", "{w}/data/colors_val.jsonl", "--out", "{w}/afile/p.html"],
                                        ["afile"]),
    # a gallery of broken records is still a gallery: it is written, each record marked with its problem
    "preview garbage": Case("data", ["preview", "{w}/garbage.jsonl", "--out", "{w}/p.html"], ["2 of 2 records"],
                            codes=(0,)),
    "export into a file's child": Case("data", ["export", "{w}/data/colors_val.jsonl", "--to", "llava", "--out",
                                                "{w}/afile/x.json"], ["--out", "afile"]),
    "export garbage": Case(
        "data", ["export", "{w}/garbage.jsonl", "--to", "sharegpt", "--out", "{w}/x.json"], ["garbage.jsonl"]),
    "sample into a file": Case("data", ["sample", "video", "{w}/afile"], ["afile"]),
    # phi3v-train run
    "run --data missing": Case(
        "train", [*RUN, "--data", "{w}/nope", "--out", "{w}/r"], ["--data", "nope", "no such directory"]),
    "run --data a lone file": Case(
        "train", [*RUN, "--data", "{w}/garbage.jsonl", "--out", "{w}/r"], ["--data", "garbage.jsonl"]),
    "run --train-split unknown": Case("train", [*RUN, "--data", "{w}/data", "--train-split", "x", "--out", "{w}/r"],
                                      ["--train-split", "splits there: train, val"]),
    "run --eval-after without the split": Case(
        "train", [*RUN, "--data", "{w}/data", "--eval-after", "--eval-split", "test", "--out", "{w}/r"],
        ["--eval-after", "'test'", "splits there: train, val"]),
    "run --out is a file": Case("train", [*RUN, "--data", "{w}/data", "--out", "{w}/afile"], ["--out /", "afile"]),
    "run --out under a file": Case(
        "train", [*RUN, "--data", "{w}/data", "--out", "{w}/afile/run"], ["--out /", "afile"]),
    "run --config bad YAML": Case("train", ["run", "--config", "{w}/bad.yaml"], ["bad.yaml", "line"]),
    "run --config with other tools' names": Case(
        "train", ["run", "--config", "{w}/llama_factory.yaml"], ["did you mean 'lr'", "'lora.rank'", "'batch_size'"]),
    "run qlora without bitsandbytes": Case(
        "train", [*RUN, "--data", "{w}/data", "--strategy", "qlora", "--precision", "bf16", "--out", "{w}/r"],
        ["pip install 'phi3v[qlora]'"], block=["bitsandbytes"]),
    "run a corrupt model.safetensors": Case(
        "train", [*RUN, "--data", "{w}/data", "--model", "{w}/corrupt", "--out", "{w}/r-corrupt"],
        ["corrupt", "safetensors"]),
    # phi3v-train eval / export / bench / init-tiny
    "eval a corrupt model.safetensors": Case(
        "train", ["eval", "--model", "{w}/corrupt", "--data", "{w}/data", "--out", "{w}/e1"],
        ["--model", "safetensors"]),
    "eval a pickle torch refuses": Case(
        "train", ["eval", "--model", "{w}/pickled", "--data", "{w}/data", "--out", "{w}/e2"], ["--model", "refused"]),
    "eval an unknown split": Case("train", ["eval", "--model", "{w}/tiny", "--data", "{w}/data", "--split", "x",
                                            "--out", "{w}/e3"], ["x"]),
    "eval --out under a file": Case("train", ["eval", "--model", "{w}/tiny", "--data", "{w}/data", "--out",
                                              "{w}/afile/e"], ["--out /", "afile"]),
    "export a checkpoint that is no adapter": Case("train", ["export", "--adapter", "{w}/tiny", "--out", "{w}/m1"],
                                                   ["adapter"]),
    "export a corrupt adapter": Case("train", ["export", "--adapter", "{w}/adapter", "--out", "{w}/m2"], ["adapter"]),
    "export --out under a file": Case("train", ["export", "--adapter", "{w}/adapter", "--out", "{w}/afile/m"],
                                      ["--out", "afile"]),
    "bench --out under a file": Case("train", ["bench", "--out", "{w}/afile/b.md"], ["--out", "afile"]),
    "init-tiny into a file": Case("train", ["init-tiny", "{w}/afile"], ["afile"]),
}


def _invoke(world: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> Result:
    for module in case.block:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    if case.prepare:
        case.prepare(world, monkeypatch)
    argv = [arg.replace("{w}", str(world)) for arg in case.argv]
    group = data_main if case.program == "data" else train_main
    return CliRunner().invoke(group, argv, prog_name=f"phi3v-{case.program}")


def _assert_clean_failure(result: Result, mentions: list[str], codes: tuple[int, ...] = (1, 2)) -> None:
    assert result.exit_code in codes, result.output
    assert "Traceback" not in result.output, result.output
    # an exception other than click's exit means the guard let it through (CliRunner swallows the traceback)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for text in mentions:
        assert text in result.output, f"{text!r} not in: {result.output}"


@pytest.mark.parametrize("name", list(CASES))
def test_broken_input_gives_one_clear_message(name: str, world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    _assert_clean_failure(_invoke(world, case, monkeypatch), case.mentions, case.codes)


@pytest.mark.parametrize("program", ["data", "train"])
def test_every_subcommand_refuses_an_unknown_option_and_a_missing_path(program: str, world: Path) -> None:
    """Covers commands added later too: every listed subcommand, with a bogus flag and with bogus positionals."""
    import click

    group = data_main if program == "data" else train_main
    names = group.list_commands(click.Context(group))
    assert len(names) >= 5
    for name in names:
        for argv in ([name, "--no-such-option"], [name, str(world / "nope"), str(world / "nope2")]):
            result = CliRunner().invoke(group, argv, prog_name=f"phi3v-{program}")
            _assert_clean_failure(result, [])


def test_an_unexpected_error_is_one_line_with_a_hint_and_v_shows_the_traceback(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import phi3v_data.cli.sample as sample_cli

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(sample_cli, "write_video_sample", broken)
    result = CliRunner().invoke(data_main, ["sample", "video", str(world / "s")], prog_name="phi3v-data")
    _assert_clean_failure(result, ["unexpected error: ZeroDivisionError: a bug", "phi3v-data -v"])
    verbose = CliRunner().invoke(data_main, ["-v", "sample", "video", str(world / "s")])
    assert isinstance(verbose.exception, ZeroDivisionError)  # re-raised: Python prints the traceback


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_console_scripts_show_no_traceback(world: Path) -> None:
    runs = [
        _script("phi3v-data", "convert", "video", "clip.avi", "--out", "o-sub", cwd=world),
        _script("phi3v-train", "eval", "--model", "corrupt", "--data", "data", "--out", "e-sub", cwd=world),
    ]
    for done in runs:
        assert done.returncode in (1, 2), done.stderr
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("Error: "), done.stderr
    # the torchrun entry (python -m phi3v_train.cli.run) has the same guard
    module = subprocess.run([sys.executable, "-m", "phi3v_train.cli.run", "--data", "nope", "--model", "tiny",
                             "--out", "r-sub"], cwd=world, capture_output=True, text=True, timeout=120)
    assert module.returncode == 2 and "Traceback" not in module.stderr, module.stderr
    assert "--data nope: no such directory" in module.stderr


def test_run_refuses_a_bad_path_before_importing_torch(world: Path) -> None:
    code = ("import sys\nfrom phi3v_train.cli import main\ntry:\n    main()\nfinally:\n"
            "    print('torch imported:', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, "run", "--data", "nope", "--model", "tiny", "--out", "r"],
                          cwd=world, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "torch imported: False" in done.stdout
