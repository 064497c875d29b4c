"""What ``phi3v-train run`` checks before importing torch (seconds) and loading a model (minutes).

Every dataset directory, every split the run will read (the train split, and the eval split when it evaluates) and
the run directory are checked in milliseconds, and all problems are reported together. Library chatter
(transformers/DeepSpeed info and warnings, torch's UserWarnings) is hidden unless ``-v``: a user should see only
what they can act on.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from phi3v_train.config import TrainConfig


def splits_in(directory: Path) -> list[str]:
    """Split names of a converted dataset, ``<name>_<split>.jsonl`` → ``split``, for messages.

    Names and splits may both hold ``_`` (``hateful_memes_dev_unseen``): the prefix all files share is the name.
    """
    stems = sorted(path.stem for path in directory.glob("*_*.jsonl"))
    shared = os.path.commonprefix(stems) if len(stems) > 1 else ""
    prefix = shared[: shared.rfind("_") + 1]
    return sorted({stem[len(prefix):] if prefix else stem.rsplit("_", 1)[1] for stem in stems})


def has_split(directory: Path, split: str) -> bool:
    """What training will find: any ``*_<split>.jsonl`` (the glob :func:`phi3v_train.data.split_files` uses)."""
    return any(directory.glob(f"*_{split}.jsonl"))


def _data_file(config: TrainConfig, notes: list[str]) -> TrainConfig:
    """``--data DIR/name_split.jsonl`` (what ``eval`` accepts) → ``--data DIR --train-split split`` when unambiguous."""
    path = Path(config.data)  # type: ignore[arg-type]
    if path.suffix != ".jsonl" or "_" not in path.stem:
        raise click.UsageError(f"--data {path}: a file; give the converted dataset directory (the folder that holds "
                               "<name>_train.jsonl and images/)")
    split = path.stem.rsplit("_", 1)[1]
    others = [p.name for p in sorted(path.parent.glob(f"*_{split}.jsonl")) if p.resolve() != path.resolve()]
    if others:
        raise click.UsageError(f"--data {path}: training reads every *_{split}.jsonl of a dataset directory, and "
                               f"{path.parent} also has {', '.join(others)}; put the file in a directory of its own "
                               "(with its images/) or pass --data DIR --train-split SPLIT")
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
        listed = ", ".join(have) or "none (no <name>_<split>.jsonl files)"
        for flag, split in needed:
            if not has_split(path, split):
                problems.append(f"--data {path}: no {split!r} split for {flag} (no *_{split}.jsonl); "
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


# Loggers that speak at INFO/WARNING about things a user cannot change (deprecations inside libraries, DeepSpeed's
# start-up report); errors still come through.
_CHATTY = ("transformers", "DeepSpeed", "deepspeed", "accelerate", "torch.distributed", "peft", "bitsandbytes")


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_libraries(*, verbose: bool) -> None:
    """Hide library warnings and info unless ``verbose``; our own warnings (``phi3v_train.*``) stay visible.

    A filter, not a level: DeepSpeed sets its logger's level itself when imported, after this runs.
    """
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in _CHATTY:
        logger = logging.getLogger(name)
        # The level reaches child loggers (bitsandbytes.backends.cpu.ops warns at import on AVX512-BF16 CPUs); a
        # filter on this logger does not, but it survives a library that resets its own logger's level.
        logger.setLevel(logging.ERROR)
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:  # already imported: the environment variables above came too late
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
