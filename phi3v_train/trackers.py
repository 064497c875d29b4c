"""``--report-to wandb,mlflow``: transformers' own callbacks, plus the run's settings and data as the run's config.

:class:`transformers.integrations.WandbCallback` and ``MLflowCallback`` already log every number the Trainer logs
(the same dicts ``log.jsonl`` gets: loss, learning rate, throughput, ``eval_*``) at the optimizer step, and read
their usual environment (``WANDB_PROJECT``, ``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``, ...). What they cannot know is added here: the resolved ``phi3v-train run`` settings,
each dataset's ``manifest.json`` and the mixture weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import MLflowCallback, WandbCallback

from schemas.layout import manifest_path

MODULES = {"wandb": "wandb", "mlflow": "mlflow"}
"""--report-to name → the module it needs (phi3v_data.cli.errors.EXTRAS names the extra that installs it)."""


def run_config(config: Any) -> dict[str, Any]:
    """The settings (as RUN/config.yaml holds them) and, per dataset, its path, weight and manifest."""
    datasets = []
    for source in config.sources:
        try:
            manifest = json.loads(manifest_path(source.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None  # a hand-made dataset has none
        datasets.append({"path": str(source.path), "weight": source.weight, "manifest": manifest})
    return {"settings": config.model_dump(mode="json", exclude={"resume", "overwrite"}), "datasets": datasets}


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
    return out


class Wandb(WandbCallback):
    """WandbCallback with the run's config under ``phi3v``; the run is finished when training ends (a CLI run is
    over then; transformers leaves it open for notebooks)."""

    def __init__(self, run: dict[str, Any]) -> None:
        super().__init__()
        self.run = run

    def setup(self, args: Any, state: Any, model: Any, **kwargs: Any) -> None:
        super().setup(args, state, model, **kwargs)
        if state.is_world_process_zero and self._wandb.run is not None:
            self._wandb.config.update({"phi3v": self.run}, allow_val_change=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_end(args, state, control, **kwargs)
        if self._initialized and state.is_world_process_zero and self._wandb.run is not None:
            self._wandb.finish()


class MLflow(MLflowCallback):
    """MLflowCallback plus the run's settings as ``phi3v.*`` params (values cut to MLflow's limit) and the whole
    config, manifests included, as the artifact ``phi3v-run.json``."""

    def __init__(self, run: dict[str, Any]) -> None:
        super().__init__()
        self.run = run

    def setup(self, args: Any, state: Any, model: Any) -> None:
        super().setup(args, state, model)
        if not (state.is_world_process_zero and self._ml_flow.active_run()):
            return
        params = _flat("phi3v", {"settings": self.run["settings"],
                                 "weights": {Path(d["path"]).name: d["weight"] for d in self.run["datasets"]}}, {})
        items = [(key, str(value)[: self._MAX_PARAM_VAL_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), self._MAX_PARAMS_TAGS_PER_BATCH):
            self._ml_flow.log_params(dict(items[start : start + self._MAX_PARAMS_TAGS_PER_BATCH]))
        self._ml_flow.log_dict(self.run, "phi3v-run.json")


def tracker_callbacks(config: Any) -> list[TrainerCallback]:
    """The callbacks of --report-to besides TensorBoard (attached by train.py into RUN/tensorboard)."""
    run = run_config(config)
    kinds = {"wandb": Wandb, "mlflow": MLflow}
    return [kinds[name](run) for name in dict.fromkeys(config.report_to) if name in kinds]
