"""Everything one training run needs to know, read from a YAML file and/or command-line flags.

Flags override the YAML file; the result is validated once and every problem is reported together, each naming the
flag (``--lora.rank``) or the YAML key and file it came from. The resolved configuration (defaults filled in, the
strategy's learning rate chosen) is what :func:`write_config` saves as ``RUN/config.yaml``; passing that file back
with ``--config`` repeats the run.

Example YAML (``phi3v-train run --config ucf101-lora.yaml``)::

    data: data/ucf101
    model: microsoft/Phi-3.5-vision-instruct
    output: runs/ucf101-lora
    strategy: lora
    num_crops: 4
    batch_size: 2
    global_batch_size: 32
    lora: {rank: 16, alpha: 32, vision: false}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from phi3v_data.io import atomic_write
from phi3v_data.prompt import PromptFormat
from schemas.errors import UserError, error_message, first_validation_line, render_loc

Strategy = Literal["full", "frozen-vision", "lora", "qlora"]
Precision = Literal["bf16", "fp16", "fp32"]
Attention = Literal["sdpa", "eager", "flash_attention_2"]

DEFAULT_LR: dict[str, float] = {"full": 2e-5, "frozen-vision": 2e-5, "lora": 2e-4, "qlora": 2e-4}
"""Adapters tolerate (and need) a larger step than full finetuning. The original recipe's scripts default to 4e-5 for
every strategy and its tables use 5e-6…1e-4 (full / frozen) and 2e-4 (LoRA); ``--recipe`` applies those exactly."""

# Flags whose spelling is not "--" + the field path with "_" → "-".
_FLAG_OVERRIDES = {"train_projector": "--train-projector/--freeze-projector", "preflight": "--preflight/--no-preflight"}


class ConfigError(UserError, ValueError):
    """Every problem found in a configuration, one per line, each naming its flag or YAML key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # --epochs inf: refused


class LoraSettings(_Section):
    """LoRA adapter shape; used by the lora and qlora strategies."""

    rank: int = Field(16, gt=0, description="Adapter rank r.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator (update scaled by alpha / rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    targets: list[str] = Field(
        default_factory=lambda: ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        min_length=1,
        description="Linear layers of the language model that get adapters (module names, last component).",
    )
    vision: bool = Field(False, description="Also put adapters on every linear layer of the vision tower.")
    projector: bool = Field(False, description="Also put adapters on the image projector's linear layers.")
    lm_head: bool = Field(False, description="Also put an adapter on the output head (the original recipe does).")
    init: Literal["kaiming", "gaussian"] = Field(
        "kaiming", description="Adapter A init: kaiming (PEFT's default) or gaussian (std 1/rank, the original's); "
        "B starts at 0.")
    quantize_vision: bool = Field(
        False, description="qlora: quantize the CLIP tower's linears to 4 bit too "
        "(the original does; ours keeps them).")
    double_quant: bool = Field(True, description="qlora: also quantize the quantization constants (the original: off).")


_WEIGHT = re.compile(r"(?P<path>.+):(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


class DataSource(_Section):
    """One dataset of a mixture: a converted dataset directory and its sampling weight."""

    path: Path = Field(description="Converted dataset directory.")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="Share of each epoch, relative to the others.")


def parse_data_spec(text: str) -> DataSource:
    """``DIR`` or ``DIR:WEIGHT``; only a trailing number is a weight, and an existing directory is taken whole.

    >>> parse_data_spec("data/docvqa:0.7")
    DataSource(path=PosixPath('data/docvqa'), weight=0.7)
    >>> parse_data_spec("C:/data/memes").path
    PosixPath('C:/data/memes')
    """
    match = _WEIGHT.fullmatch(text)
    if match is None or Path(text).is_dir():
        return DataSource(path=Path(text))
    weight = float(match["weight"])
    if weight <= 0:
        raise ValueError(f"{text!r}: the weight after ':' must be > 0 (got {match['weight']})")
    return DataSource(path=Path(match["path"]), weight=weight)


def _data_sources(value: Any) -> Path | list[DataSource]:
    """--data / YAML ``data`` → one directory (a plain run, as before mixtures existed) or a list of weighted sources.

    One source keeps the plain form whatever its weight, so a single dataset trains exactly as it always has.
    """
    if isinstance(value, (str, Path)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a dataset directory, DIR:WEIGHT, or a list of {path, weight} entries")
    sources = []
    for index, entry in enumerate(value):
        try:
            if isinstance(entry, (str, Path)):
                sources.append(parse_data_spec(str(entry)))
            elif isinstance(entry, DataSource):
                sources.append(entry)
            else:
                sources.append(DataSource.model_validate(entry))
        except ValidationError as exc:
            raise ValueError(f"entry {index + 1}: {first_validation_line(exc)}") from None
    paths = [source.path for source in sources]
    repeated = sorted({str(path) for path in paths if paths.count(path) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once; list each dataset once with its weight")
    if len(sources) == 1:
        return sources[0].path
    return sources


class TrainConfig(_Section):
    """One finetuning run. Field names are the YAML keys; flags are ``--`` + the name with ``-`` for ``_``."""

    data: Path | list[DataSource] = Field(
        description="Converted dataset directory (holds *_train.jsonl, *_val.jsonl and images/), or several to mix: "
        "DIR:WEIGHT flags, or a list of {path, weight} in YAML.")
    model: str = Field(description="Base model: a local checkpoint directory or a Hugging Face Hub id.")
    output: Path = Field(description="Run directory: config.yaml, checkpoint-<step>/, final/, tensorboard/.")
    train_split: str = Field("train", min_length=1, description="Reads <data>/*_<train_split>.jsonl.")
    eval_split: str = Field("val", min_length=1,
                            description="Split evaluated by --eval-before/--eval-after/--eval-every.")
    strategy: Strategy = "lora"
    train_projector: bool = Field(True,
                                  description="frozen-vision with vision_freeze clip: keep training the projector.")
    vision_freeze: Literal["clip", "original"] = Field(
        "clip", description="frozen-vision scope: clip = the CLIP tower only; original = what the original recipe "
        "froze: CLIP, projector, glb_GN/sub_GN separators and the token embeddings (its shared wte).")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    precision: Precision = "bf16"
    attention: Attention = "sdpa"
    gradient_checkpointing: bool = True
    num_crops: int = Field(4, ge=1, le=64, description="HD crops per image: 4 for video frames, 16 for documents.")
    image_tags: Literal["lines", "joined"] = Field(
        "lines", description="Where the images of a turn whose text has no <|image_k|> tags go: lines = one "
        "'<|image_k|>\\n' per image (the model card's layout); joined = every tag, then one '\\n' (the original "
        "recipe's, which --recipe sets).")
    turns: Literal["together", "separate"] = Field(
        "together", description="A record of several turns: together = one conversation (one BOS, <|endoftext|> after "
        "the last answer); separate = every turn its own chat (BOS … <|end|>\\n<|endoftext|>), as the original NLVR2 "
        "script encodes the_cauldron's rows.")
    # Phi-3.5-vision's context window: 8 video frames at num_crops 4 are already ~6k tokens, so a small default
    # would silently drop whole datasets; lower it to bound memory.
    max_length: int = Field(131072, gt=0, description="Longer samples (text + image tokens) are dropped, never cut.")
    batch_size: int = Field(1, gt=0, description="Samples per device per forward pass.")
    global_batch_size: int | None = Field(None, gt=0, description="Samples per optimizer step over all devices.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float | None = Field(None, gt=0, description="Peak learning rate; default depends on the strategy.")
    weight_decay: float = Field(0.0, ge=0)
    decay_exempt: Literal["norms", "layernorm"] = Field(
        "norms", description="Parameters weight decay skips: norms = biases and every norm weight (transformers 5's "
        "Trainer); layernorm = biases and nn.LayerNorm weights only, so Phi-3's RMSNorm weights are decayed "
        "(transformers 4.4x, which the original recipe ran on).")
    loss_norm: Literal["tokens", "micro-batch"] = Field(
        "tokens", description="Loss over an accumulated batch: tokens = summed token losses / the label tokens of the "
        "whole global batch (every answer token weighs the same); micro-batch = the mean of each micro-batch's mean "
        "(the original recipe's transformers 4.4x).")
    warmup: float = Field(0.03, ge=0, description="Learning-rate warmup: a fraction of the steps when < 1, else steps.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2 (the original recipe: 0.95).")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon (the original recipe: 1e-7).")
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 disables it.")
    seed: int = 42
    order: Literal["length", "file", "random"] = Field(
        "length", description="Sample order: length = length-grouped batches, shuffled per epoch (little padding); "
        "file = the records in file order every epoch; random = a seeded shuffle per epoch, no grouping.")
    save_every: int = Field(500, gt=0, description="Checkpoint every N optimizer steps (and always at the end).")
    keep_last: int = Field(2, gt=0,
                           description="Complete checkpoints kept (besides --keep-best's); older ones are deleted.")
    save_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype of the weights in final/ (a full model): auto = the base checkpoint's (bf16 for the "
        "official ones); intermediate checkpoints always keep fp32 master weights so resume stays exact.")
    log_every: int = Field(10, gt=0, description="Optimizer steps between log lines / TensorBoard points.")
    resume: str | None = Field(None, description="'latest' (newest complete checkpoint in --output) or a path.")
    overwrite: bool = Field(False, description="Allow starting afresh in an --output that already has checkpoints.")
    deepspeed: str | None = Field(None, description="'zero2', 'zero3' (shipped configs) or a DeepSpeed JSON path.")
    workers: int = Field(2, ge=0, description="DataLoader worker processes (image decoding happens there).")
    preflight: bool = Field(True, description="Validate the dataset before training; refuse a broken one.")
    eval_before: bool = False
    eval_after: bool = False
    eval_limit: int | None = Field(None, gt=0, description="Evaluate at most this many records.")
    eval_every: int | None = Field(None, gt=0, description="Every N optimizer steps (and at the last) evaluate "
                                   "--eval-split: validation loss and the task metrics of `phi3v-train eval`.")
    keep_best: Literal["val_loss", "accuracy", "anls", "auroc"] | None = Field(
        None, description="Keep the checkpoint best by this metric (lowest val_loss, else highest) as RUN/best.")
    patience: int | None = Field(None, gt=0, description="Stop after N evaluations without a better --keep-best.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Trackers besides log.jsonl (comma-separated); tensorboard also by "
        "--tensorboard. wandb and mlflow read their usual environment (WANDB_PROJECT, MLFLOW_TRACKING_URI, ...).")
    tensorboard: bool = True
    recipe: str | None = Field(None, description="Preset applied under the YAML and flags (`phi3v-train recipes`).")

    @field_validator("data", mode="before")
    @classmethod
    def _parse_data(cls, value: Any) -> Path | list[DataSource]:
        try:
            return _data_sources(value)
        except ValueError as exc:  # without pydantic's "Value error, " prefix
            raise PydanticCustomError("data_sources", str(exc)) from None

    @field_validator("report_to", mode="before")
    @classmethod
    def _split_report_to(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str) else value or []
        return [part.strip() for item in values for part in str(item).split(",") if part.strip() not in ("", "none")]

    @property
    def prompt_format(self) -> PromptFormat:
        """How records become chat text (image tags, turns): what measuring, the collator and evaluation share."""
        return PromptFormat(image_tags=self.image_tags, turns=self.turns)

    @property
    def sources(self) -> list[DataSource]:
        """The datasets to train on; one entry (weight 1) for a plain single-dataset run."""
        return list(self.data) if isinstance(self.data, list) else [DataSource(path=self.data)]

    @model_validator(mode="after")
    def _strategy_learning_rate(self) -> "TrainConfig":
        if self.lr is None:
            self.lr = DEFAULT_LR[self.strategy]
        return self


def flag_name(loc: tuple[str | int, ...]) -> str:
    """The command-line flag of a config field path: ``("lora", "rank")`` → ``--lora.rank``."""
    names = [str(part) for part in loc if not isinstance(part, int)]
    if len(names) == 1 and names[0] in _FLAG_OVERRIDES:
        return _FLAG_OVERRIDES[names[0]]
    return "--" + ".".join(name.replace("_", "-") for name in names)


def _cross_checks(config: TrainConfig) -> list[str]:
    """Combinations that are each valid alone but not together."""
    problems = []
    if config.attention == "flash_attention_2" and config.precision != "bf16":
        problems.append(
            f"--attention flash_attention_2 with --precision {config.precision}: flash attention needs bf16 "
            "(fp16 overflows in Phi-3.5-vision's attention and gives NaN losses); "
            "use --precision bf16 or --attention sdpa"
        )
    if config.strategy == "qlora" and config.precision == "fp32":
        problems.append("--strategy qlora with --precision fp32: 4-bit layers compute in bf16 or fp16; "
                        "pick one of those")
    if config.strategy == "qlora" and config.deepspeed:
        problems.append("--strategy qlora with --deepspeed: bitsandbytes 4-bit weights cannot be sharded; "
                        "drop --deepspeed")
    if config.warmup >= 1 and config.warmup != int(config.warmup):
        problems.append(f"--warmup {config.warmup}: a value >= 1 counts steps and must be whole; "
                        "below 1 it is a fraction")
    if config.global_batch_size is not None and config.global_batch_size % config.batch_size:
        problems.append(
            f"--global-batch-size {config.global_batch_size} is not a multiple of --batch-size {config.batch_size}"
        )
    if config.keep_best and not config.eval_every:
        problems.append(f"--keep-best {config.keep_best} needs --eval-every N (the steps it is measured at)")
    if config.patience and not config.keep_best:
        problems.append(f"--patience {config.patience} needs --keep-best METRIC (the metric that must improve)")
    return problems


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
"""A settings file is a few dozen values; these bounds refuse YAML that expands (aliases of aliases: 500 bytes can
stand for billions of values) or nests past what the loader's recursion survives, before anything walks it."""


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes ``node`` stands for once every alias is expanded (shared nodes counted per use), memoised."""
    key = id(node)
    if key in open_:
        raise ValueError("an alias refers to a node that contains it (infinitely deep)")
    if key not in sizes:
        open_.add(key)
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        sizes[key] = min(1 + sum(_expanded_nodes(child, sizes, open_) for child in children), MAX_YAML_NODES + 1)
        open_.discard(key)
    return sizes[key]


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses documents expanding past :data:`MAX_YAML_NODES` (ValueError)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, {}, set()) > MAX_YAML_NODES:
            raise ValueError(f"its aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ValueError(f"{path.stat().st_size:,} bytes is not a settings file (the limit is {MAX_YAML_BYTES:,})")
        data = _safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"--config {path}: cannot read it ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"--config {path}: not UTF-8 text (byte {exc.start})"]) from None
    except RecursionError:
        raise ConfigError([f"--config {path}: nested too deeply to be a settings file"]) from None
    except ValueError as exc:
        raise ConfigError([f"--config {path}: refused: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = _clip(str(getattr(exc, "problem", None) or exc).splitlines()[0])
        raise ConfigError([f"--config {path}{where}: not valid YAML ({problem})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"--config {path}: expected a mapping of settings, got {type(data).__name__}"])
    return data


def _came_from_flags(loc: tuple[str | int, ...], flags: dict[str, Any]) -> bool:
    node: Any = flags
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _describe(error: dict[str, Any], *, flags: dict[str, Any], yaml_path: Path | None) -> str:
    loc = tuple(error["loc"])
    key = render_loc(loc)
    if error["type"] == "extra_forbidden":
        origin = f"in {yaml_path}" if yaml_path and not _came_from_flags(loc, flags) else "among the settings"
        guess = suggest_setting(key)
        hint = f"did you mean {guess}?" if guess else "`phi3v-train run --help` lists them"
        return f"unknown setting {key!r} {origin}; {hint}"
    where = flag_name(loc)
    if error["type"] == "missing":
        return f"{where} is required (a flag, or {key!r} in the --config YAML)"
    if yaml_path is not None and not _came_from_flags(loc, flags):
        where += f" ({key} in {yaml_path})"
    return f"{where}: {error_message(error, show=lambda value: _clip(repr(value)))}"


def _clip(text: str, limit: int = 120) -> str:
    """Messages quote what the user gave, never a whole file of it."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


# Names users bring from LLaMA-Factory, ms-swift and transformers' TrainingArguments → ours (with a note when the
# meaning differs). difflib catches typos; this table catches other tools' vocabulary.
SETTING_ALIASES: dict[str, str] = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "max_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "global_batch_size (= batch_size × accumulation × devices)",
    "total_batch_size": "global_batch_size",
    "warmup_ratio": "warmup", "warmup_steps": "warmup (a fraction of the steps)", "lr_scheduler_type": "scheduler",
    "output_dir": "output", "model_name_or_path": "model", "model_id_or_path": "model", "model_path": "model",
    "dataset": "data", "dataset_dir": "data", "data_path": "data", "train_file": "data",
    "cutoff_len": "max_length", "max_seq_length": "max_length", "model_max_length": "max_length",
    "max_len": "max_length",
    "finetuning_type": "strategy", "train_type": "strategy", "tuner_type": "strategy", "sft_type": "strategy",
    "freeze_vision_tower": "strategy: frozen-vision", "freeze_vit": "strategy: frozen-vision",
    "lora_rank": "lora.rank", "lora_r": "lora.rank", "r": "lora.rank", "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout", "lora_target": "lora.targets", "lora_target_modules": "lora.targets",
    "target_modules": "lora.targets", "save_steps": "save_every", "save_total_limit": "keep_last",
    "logging_steps": "log_every", "resume_from_checkpoint": "resume", "overwrite_output_dir": "overwrite",
    "bf16": "precision: bf16", "fp16": "precision: fp16", "torch_dtype": "precision", "dtype": "precision",
    "attn_implementation": "attention", "flash_attn": "attention: flash_attention_2",
    "dataloader_num_workers": "workers", "preprocessing_num_workers": "workers", "num_workers": "workers",
    "report_to": "tensorboard", "grad_clip": "max_grad_norm", "clip_grad_norm": "max_grad_norm",
    "gradient_checkpointing_enable": "gradient_checkpointing", "max_steps_per_epoch": "max_steps",
    "val_split": "eval_split", "eval_dataset": "eval_split", "do_eval": "eval_after",
}


def _setting_names() -> list[str]:
    names = [name for name in TrainConfig.model_fields if name != "lora"]
    return names + [f"lora.{name}" for name in LoraSettings.model_fields]


def suggest_setting(key: str) -> str | None:
    """What an unknown setting probably meant, as ``'lr' (--lr)``; None when nothing is close.

    >>> suggest_setting("learning_rate"), suggest_setting("lora.rnak")
    ("'lr' (--lr)", "'lora.rank' (--lora.rank)")
    """
    import difflib  # noqa: PLC0415 - only on the error path

    last = key.rsplit(".", 1)[-1].lower().lstrip("-").replace("-", "_")
    alias = SETTING_ALIASES.get(key.lower()) or SETTING_ALIASES.get(last)
    if alias is not None:
        name, _, note = alias.partition(" ")
        name = name.rstrip(":")
        flag = flag_name(tuple(name.split(".")))
        return (f"{name!r} ({flag}{', ' + note.strip('()') if note else ''})" if ":" not in alias
                else f"{alias!r} ({flag})")
    names = _setting_names() + list(SETTING_ALIASES)  # a typo of another tool's name maps through the table
    match = difflib.get_close_matches(key.replace("-", "_"), names, n=1, cutoff=0.6) or difflib.get_close_matches(
        last, names, n=1, cutoff=0.6)
    if match and match[0] in SETTING_ALIASES:
        return suggest_setting(match[0])
    return f"{match[0]!r} ({flag_name(tuple(match[0].split('.')))})" if match else None


def load_config(yaml_path: Path | None = None, *, flags: dict[str, Any] | None = None) -> TrainConfig:
    """Validate YAML settings overlaid with ``flags`` (nested dicts, ``None`` = not given), or raise ConfigError.

    >>> load_config(flags={"data": "d", "model": "m", "output": "o", "lora": {"rank": 8}}).lora.rank
    8
    """
    flags = _drop_unset(flags or {})
    raw = _merge(_read_yaml(yaml_path) if yaml_path else {}, flags)
    if isinstance(raw.get("recipe"), str):  # the preset sits under the YAML and the flags: both override it
        raw = _merge(_recipe_settings(raw["recipe"]), raw)
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(e, flags=flags, yaml_path=yaml_path) for e in exc.errors()]) from None
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def _recipe_settings(name: str) -> dict[str, Any]:
    from phi3v_train.recipes import RecipeError, get_recipe  # noqa: PLC0415 - recipes import this module

    try:
        return get_recipe(name).settings
    except RecipeError as exc:
        raise ConfigError([f"--recipe {name}: {exc}"]) from None


def _drop_unset(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags left at ``None`` (not given on the command line) must not override the YAML file."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if isinstance(value, dict):
            value = _drop_unset(value)
            if value:
                out[key] = value
        elif value is not None and value != ():
            out[key] = value
    return out


CONFIG_HEADER = "# Resolved configuration of this run; rerun with: phi3v-train run --config <this file>"
"""First line of every config.yaml a run writes: how ``--config RUN/config.yaml`` knows the file belongs to RUN."""


def write_config(config: TrainConfig, path: Path) -> None:
    """Save the resolved configuration atomically; ``--config`` accepts it back unchanged."""
    # --resume and --overwrite are actions of one invocation, not settings: kept here, `--config RUN/config.yaml`
    # would silently resume (or delete checkpoints) on a later run.
    data = config.model_dump(mode="json", exclude={"resume", "overwrite"})
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(CONFIG_HEADER + "\n")
        yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True)
