"""What ``phi3v-train run`` checks before importing torch (seconds) and loading a model (minutes).

Every dataset directory, every split the run will read (the train split, and the eval split when it evaluates) and
the run directory are checked in milliseconds, and all problems are reported together.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import click

from phi3v_train.config import TrainConfig
from schemas.layout import IMAGES_DIR, split_file_name, split_files, split_glob, split_of, splits_in


def has_split(directory: Path, split: str) -> bool:
    """What training will find: any ``*_<split>.jsonl`` (the files :func:`phi3v_train.dataset.split_files` reads)."""
    return bool(split_files(directory, split))


def _data_file(config: TrainConfig, notes: list[str]) -> TrainConfig:
    """``--data DIR/name_split.jsonl`` (what ``eval`` accepts) → ``--data DIR --train-split split`` when unambiguous."""
    path = Path(config.data)  # type: ignore[arg-type]
    split = split_of(path)
    if split is None:
        raise click.UsageError(f"--data {path}: a file; give the converted dataset directory (the folder that holds "
                               f"{split_file_name('<name>', 'train')} and {IMAGES_DIR}/)")
    others = [p.name for p in split_files(path.parent, split) if p.resolve() != path.resolve()]
    if others:
        raise click.UsageError(f"--data {path}: training reads every {split_glob(split)} of a dataset directory, and "
                               f"{path.parent} also has {', '.join(others)}; put the file in a directory of its own "
                               f"(with its {IMAGES_DIR}/) or pass --data DIR --train-split SPLIT")
    notes.append(f"--data {path}: training on dataset {path.parent}, split {split!r}")
    return config.model_copy(update={"data": path.parent, "train_split": split})


def _check_sources(config: TrainConfig) -> list[str]:
    problems = []
    needed = [("--train-split", config.train_split)]
    if config.eval_every:  # every dataset's eval split is scored (and its loss summed) during training
        needed.append(("--eval-every", config.eval_split))
    evaluates = config.eval_before or config.eval_after
    sources = config.sources
    has_eval = []
    for source in sources:
        path = source.path
        if not path.exists():
            problems.append(f"--data {path}: no such directory (convert a dataset into it with `phi3v-data convert`)")
            continue
        if not path.is_dir():
            problems.append(f"--data {path}: not a directory; give the converted dataset directory")
            continue
        have = splits_in(path)
        listed = ", ".join(have) or f"none (no {split_file_name('<name>', '<split>')} files)"
        for flag, split in needed:
            if not has_split(path, split):
                problems.append(f"--data {path}: no {split!r} split for {flag} (no {split_glob(split)}); "
                                f"splits there: {listed}")
        if evaluates:
            has_eval.append((path, has_split(path, config.eval_split), listed))
    # A mixture evaluates each dataset that has the split (and names the others); a single dataset must have it.
    if has_eval and not any(found for _, found, _ in has_eval):
        when = "--eval-after" if config.eval_after else "--eval-before"
        for path, _, listed in has_eval:
            problems.append(f"--data {path}: no {config.eval_split!r} split for {when} (--eval-split "
                            f"{config.eval_split}); splits there: {listed}")
    return problems


def _check_output(output: Path) -> list[str]:
    from phi3v_data.cli.errors import check_writable  # noqa: PLC0415

    try:
        check_writable("--out", output, directory=True)
    except click.ClickException as exc:
        return [exc.message]
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"--out {output}: cannot create it ({exc.strerror or exc})"]
    if not os.access(output, os.W_OK | os.X_OK):
        return [f"--out {output}: not writable"]
    return []


def _check_extras(config: TrainConfig) -> list[str]:
    """Optional packages the settings need, found without importing them."""
    from phi3v_data.cli.errors import install_hint  # noqa: PLC0415

    needed = [("bitsandbytes", "--strategy qlora")] if config.strategy == "qlora" else []
    if config.deepspeed:
        needed.append(("deepspeed", f"--deepspeed {config.deepspeed}"))
    needed += [(name, f"--report-to {name}") for name in config.report_to if name in ("wandb", "mlflow")]
    if "tensorboard" in config.report_to:
        needed.append(("tensorboard", "--report-to tensorboard"))
    elif config.tensorboard:  # on by default; unchecked, it failed after the model loaded and --overwrite deleted
        needed.append(("tensorboard", "--tensorboard (on by default; --no-tensorboard turns it off)"))
    return [f"{flag} needs {module}, which is not installed: {install_hint(module)}"
            for module, flag in needed if importlib.util.find_spec(module) is None]


def check_inputs(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """The config with absolute data/output paths (so RUN/config.yaml works from any directory), and notes to show.

    Raises click.UsageError listing every path problem (and missing optional package) at once.
    """
    notes: list[str] = []
    if isinstance(config.data, Path) and config.data.is_file():
        config = _data_file(config, notes)
    problems = _check_extras(config) + _check_sources(config)
    if not problems:
        problems = _check_output(config.output)  # created only once the data is known to be there
    if problems:
        raise click.UsageError("\n".join(problems))
    return absolute_paths(config), notes


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with absolute data/output paths (and a local --model directory's): RUN/config.yaml then works
    from any directory. A Hub id stays as it is."""
    data: Any = config.data
    data = data.resolve() if isinstance(data, Path) else [s.model_copy(update={"path": s.path.resolve()}) for s in data]
    model = str(Path(config.model).resolve()) if Path(config.model).is_dir() else config.model
    return config.model_copy(update={"data": data, "output": config.output.resolve(), "model": model})
