"""A run directory is data too: what a run wrote there, the lock while one trains, and whether a resume is that run.

Everything here is file bookkeeping (no torch), so ``phi3v-train run`` can use it before importing torch:

- :func:`run_lock` — one training process writes into a run directory at a time (the lock conversion takes).
- :func:`run_files` / :func:`clear_run` — a run's own outputs, so ``--overwrite`` deletes those and nothing else,
  and a second run into a finished one is refused instead of replacing ``final/`` and ``log.jsonl``.
- :func:`run_settings` / :func:`changed_settings` — each checkpoint records the settings and the dataset digest it
  was trained with (``checkpoint-<step>/run-settings.json``); a resume that would change the run names each difference.
- :func:`checkpoint_gaps` — a checkpoint that lacks its weights or its optimizer/scheduler state is not resumable.
- :func:`follow_run_config` — ``--config runs/b/config.yaml`` of a copied run trains into ``runs/b``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

from phi3v_data.io import OutputLock
from phi3v_train.config import CONFIG_HEADER, TrainConfig, flag_name
from schemas.errors import UserError
from schemas.layout import split_files


class RunError(UserError, RuntimeError):
    """The run cannot start or had to stop; the message says why and what to do."""


LOCK_NAME = ".phi3v-train.lock"
SETTINGS_FILE = "run-settings.json"
DRY_RUN_CONFIG = "config.dry-run.yaml"

# What a run writes besides config.yaml and preflight-*.json (both rewritten by the new run before anything is
# deleted). The first four mean "a run happened here"; eval-* are --eval-before/--eval-after results.
_RUN_MARKERS = ("final", ".final.tmp", "log.jsonl")
_RUN_EXTRAS = ("tensorboard", "best")


def run_lock(run_dir: Path) -> OutputLock:
    """The run directory's lock: a second ``run`` into it is refused naming the holder's PID; a crashed holder's
    lock is taken over (the kernel released it)."""
    return OutputLock(run_dir, name=LOCK_NAME, what="training run", error=RunError)


def _checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def run_files(run_dir: Path) -> list[str]:
    """Names of a run's outputs in ``run_dir`` (checkpoints oldest first, then final/, log.jsonl): empty when no
    run has written there (a dry run's config.yaml alone is not a run)."""
    if not run_dir.is_dir():
        return []
    names = [p.name for p in _checkpoints(run_dir)]
    return names + [name for name in _RUN_MARKERS if (run_dir / name).exists()]


def clear_run(run_dir: Path) -> list[Path]:
    """Delete what an earlier run wrote (checkpoints, final/, log.jsonl, tensorboard/, eval-*/, best); files of the
    user's own in the directory stay. Returns what was deleted."""
    doomed = [*_checkpoints(run_dir), *(run_dir / name for name in (*_RUN_MARKERS, *_RUN_EXTRAS))]
    doomed += [p for p in run_dir.glob("eval-*") if p.is_dir()]
    gone = []
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        gone.append(path)
    return gone


def refuse_existing(run_dir: Path) -> None:
    """A run without --resume or --overwrite never replaces an earlier run's checkpoints, final/ or log.jsonl."""
    found = run_files(run_dir)
    if not found:
        return
    checkpoints = [name for name in found if name.startswith("checkpoint-")]
    if checkpoints:
        what = f"already has checkpoints ({checkpoints[-1]}, …)"
        how = "continue it with --resume latest, or start afresh with --overwrite"
    else:
        what = f"already holds a run ({', '.join(name + '/' if (run_dir / name).is_dir() else name for name in found)})"
        how = "start afresh with --overwrite"
    raise RunError(f"{run_dir} {what}; {how} (deletes the old run's files once the new run's inputs are checked), "
                   "or choose another --out")


def dry_run_config_path(run_dir: Path) -> Path:
    """Where ``--dry-run`` writes the settings: RUN/config.yaml, or beside it when RUN holds a run whose
    config.yaml a later ``--resume`` reads."""
    return run_dir / (DRY_RUN_CONFIG if run_files(run_dir) else "config.yaml")


def follow_run_config(config_path: Path | None, config: TrainConfig, *,
                      out_given: bool) -> tuple[TrainConfig, str | None]:
    """``--config DIR/config.yaml`` written by a run (or a dry run) means the run in DIR, even when it was copied
    from another directory and still names that one as its output; --out chooses otherwise. Returns the config
    and a note when the output was changed."""
    if config_path is None or out_given or config_path.name != "config.yaml":
        return config, None
    try:
        with config_path.open(encoding="utf-8") as handle:
            first = handle.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return config, None
    own = config_path.parent.resolve()
    if first != CONFIG_HEADER or config.output.resolve() == own:
        return config, None
    note = (f"--config {config_path}: the config.yaml of run directory {own}, which names {config.output} as its "
            f"output (copied from there?); training into {own}, its own directory (pass --out to choose another)")
    return config.model_copy(update={"output": own}), note


# --- is a resume the same run? ----------------------------------------------------------------------------------

# Settings that change where a run stops, what it reports or how fast it goes, never what a step computes: they may
# differ on resume. Everything else (data, model, strategy, num_crops, lr, schedule, batches, seed, …) may not. A
# setting added later is a run-changing one until it is listed here.
RUN_NEUTRAL = frozenset({
    "output", "resume", "overwrite", "recipe", "max_steps", "epochs", "log_every", "workers", "save_every",
    "keep_last", "save_dtype", "eval_split", "eval_before", "eval_after", "eval_limit", "tensorboard", "preflight",
    "attention", "gradient_checkpointing", "data",  # data: compared by content (the digest), not by path
    "eval_every", "keep_best", "patience", "report_to",  # issue 21's reporting settings
})


def data_digest(config: TrainConfig) -> list[dict[str, Any]]:
    """Per dataset: its weight and the SHA-256 of the records it trains on (every ``*_<train_split>.jsonl``, by
    name). A moved or copied dataset keeps its digest; other records (or another split) do not. Images are not
    hashed: a record names its images, and hashing gigabytes of them on every start would cost minutes."""
    digests = []
    for source in config.sources:
        hasher = hashlib.sha256()
        for path in split_files(source.path, config.train_split):
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)
        digests.append({"weight": source.weight, "sha256": hasher.hexdigest()})
    return digests


def run_settings(config: TrainConfig, *, world_size: int, digest: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What a checkpoint records about the run that made it (``checkpoint-<step>/run-settings.json``)."""
    settings = config.model_dump(mode="json", exclude={"resume", "overwrite"})
    settings["global_batch_size"] = config.global_batch_size or config.batch_size * world_size
    return {"settings": settings, "data": digest}


def saved_settings(checkpoint: Path) -> dict[str, Any] | None:
    """The settings ``checkpoint`` was trained with: its run-settings.json, else (a checkpoint from before these
    files) the run's config.yaml beside it, without a data digest; None when neither can be read."""
    try:
        return json.loads((checkpoint / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    import yaml  # noqa: PLC0415

    try:
        settings = yaml.safe_load((checkpoint.parent / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(settings, dict):
        return None
    settings.setdefault("global_batch_size", None)
    return {"settings": settings, "data": None}


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _data_shown(digest: list[dict[str, Any]]) -> str:
    return "; ".join(f"records {entry['sha256'][:12]}" + (f" weight {entry['weight']:g}" if len(digest) > 1 else "")
                     for entry in digest)


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each setting that differs between the checkpoint's run and this one and changes what training computes,
    as ``--lr: 0.0001 in the run, 0.0002 now``; the data by content."""
    changes = []
    old, new = _flat(before["settings"]), _flat(now["settings"])
    if old.get("global_batch_size") is None:  # a config.yaml of an older run: unset means batch × devices
        old["global_batch_size"] = new.get("global_batch_size")
    for key in sorted(old.keys() | new.keys()):
        if key.split(".")[0] in RUN_NEUTRAL or old.get(key) == new.get(key):
            continue
        unused = (key.startswith("lora.") and old.get("strategy") not in ("lora", "qlora")) or (
            key in ("train_projector", "vision_freeze") and old.get("strategy") != "frozen-vision")
        if unused and new.get("strategy") == old.get("strategy"):
            continue  # a setting the run's strategy does not read (adapter shape of a full run, …)
        changes.append(f"{flag_name(tuple(key.split('.')))}: {_shown(old.get(key))} in the run, "
                       f"{_shown(new.get(key))} now")
    if before.get("data") is not None and now.get("data") is not None and before["data"] != now["data"]:
        changes.append(f"--data: {_data_shown(before['data'])} in the run, {_data_shown(now['data'])} now "
                       "(other records)")
    return changes


# --- is a checkpoint resumable? ---------------------------------------------------------------------------------

_FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def checkpoint_gaps(checkpoint: Path, *, strategy: str, deepspeed: bool) -> tuple[str | None, str | None]:
    """(missing weights, missing optimizer/scheduler state) of a checkpoint, each as the words for a message or
    None. Under DeepSpeed both live in its ``global_step*/`` folder."""
    if deepspeed:
        shards = [p for p in checkpoint.glob("global_step*") if p.is_dir()]
        if not shards:
            return "no DeepSpeed state (global_step*/)", None
        optimizer = any(p.name.endswith("optim_states.pt") for shard in shards for p in shard.iterdir())
        return None, None if optimizer else f"no optimizer state in {shards[0].name}/ (*optim_states.pt)"
    names = _ADAPTER_WEIGHTS if strategy in ("lora", "qlora") else _FULL_WEIGHTS
    weights = None if any((checkpoint / name).is_file() for name in names) else (
        f"no {'adapter' if strategy in ('lora', 'qlora') else 'model'} weights ({names[0]})")
    missing = [name for name in ("optimizer.pt", "scheduler.pt") if not (checkpoint / name).is_file()]
    return weights, f"no {' or '.join(missing)}" if missing else None
