"""Load what a run produced for inference: a full checkpoint or a peft adapter over its base model.

``RUN/final`` is a full checkpoint for full/frozen-vision runs and an adapter directory (``adapter_config.json`` +
processor files) for lora/qlora runs; evaluation and export accept either, so users never have to know which.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import UserError

if TYPE_CHECKING:
    import torch

    from phi3v_data.prompt import PromptFormat

    from phi3v_train.model import Phi3VForCausalLM, Phi3VProcessor

ADAPTER_CONFIG = "adapter_config.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json")


class LoadError(UserError, ValueError):
    """A model directory that cannot be loaded; the message says which file is wrong and what to pass instead."""


def resolve_model_dir(path: str | Path) -> Path:
    """The checkpoint inside ``path``: ``path`` itself, or ``path/final`` when given a run directory."""
    path = Path(path)
    if not path.is_dir():
        raise LoadError(f"{path}: no such model directory")
    if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file() and (path / "final").is_dir():
        return path / "final"
    return path


def recorded_prompt_format(model: str | Path, *, image_tags: str | None = None,
                           turns: str | None = None) -> PromptFormat:
    """The prompt format (``image_tags``, ``turns``) of the run that trained ``model``, read from ``RUN/config.yaml``
    when ``model`` is a run, its ``final/`` or a ``checkpoint-N/`` (the defaults for anything else), so a
    recipe-trained model is prompted the way it was trained; ``image_tags``/``turns`` given here win."""
    import yaml  # noqa: PLC0415

    from phi3v_data.prompt import PromptFormat  # noqa: PLC0415

    saved: dict[str, Any] = {}
    path = Path(model)
    for config in (path / "config.yaml", path.parent / "config.yaml"):
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            saved = loaded
            break
    tags = image_tags or saved.get("image_tags")
    layout = turns or saved.get("turns")
    return PromptFormat(image_tags=tags if tags in ("lines", "joined") else "lines",
                        turns=layout if layout in ("together", "separate") else "together")


def is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: Path, *, base: str | Path | None = None) -> str:
    """The base model an adapter was trained on: ``base`` when given, else its ``base_model_name_or_path``.

    A local directory must hold a checkpoint; anything shaped like ``org/name`` that is not a local path is passed on
    as a Hub id. A relative recorded path is taken from the working directory, as training recorded it.
    """
    if base is None:
        config_path = adapter_dir / ADAPTER_CONFIG
        try:
            base = json.loads(config_path.read_text()).get("base_model_name_or_path")
        except (OSError, json.JSONDecodeError) as exc:
            raise LoadError(f"{config_path}: cannot read the adapter config ({exc})") from None
        if not base:
            raise LoadError(f"{config_path}: field base_model_name_or_path is empty; "
                            "pass the base model with --base DIR")
    base_dir = Path(base)
    if (base_dir / "config.json").is_file() or _HUB_ID.fullmatch(str(base)) and not base_dir.exists():
        return str(base)
    raise LoadError(
        f"base model {str(base)!r} of adapter {adapter_dir} is not a checkpoint directory (no config.json there); "
        "pass the base model with --base DIR"
    )


def torch_dtype(name: str) -> "torch.dtype":
    """``fp32``/``bf16``/``fp16`` (the CLI's names) or a config's torch dtype name as a ``torch.dtype``."""
    import torch

    from phi3v_train.strategies import DTYPES

    value = DTYPES.get(name) or getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise LoadError(f"unknown precision {name!r}; use one of {', '.join(DTYPES)}")
    return value


def refuse_quantized(base: str) -> None:
    """Merging needs real weights; a pre-quantised checkpoint has none to merge into."""
    config_path = Path(base, "config.json")
    if not config_path.is_file():
        return  # a Hub id: transformers reads (and checks) its config itself
    config = json.loads(config_path.read_text())
    if config.get("quantization_config"):
        raise LoadError(
            f"{config_path}: the base checkpoint is quantised (quantization_config); "
            "pass the full-precision base model with --base DIR"
        )


def load_processor(model_dir: Path, base: str, *, num_crops: int | None = None) -> "Phi3VProcessor":
    """The processor saved with the run (``model_dir``) or, when it has none, the base model's."""
    from phi3v_train.model import Phi3VProcessor

    kwargs: dict[str, Any] = {} if num_crops is None else {"num_crops": num_crops}
    has_files = all((model_dir / name).is_file() for name in _PROCESSOR_FILES)
    return Phi3VProcessor.from_pretrained(str(model_dir) if has_files else base, **kwargs)


def load_model(
    path: Path, *, base: str | Path | None = None, dtype: str = "fp32", attn_implementation: str = "sdpa",
    merge: bool = True,
) -> tuple[Any, str]:
    """The model at ``path`` (full checkpoint or adapter over its base) and the base it came from.

    An adapter is merged into its base when ``merge`` is true (faster generation, same outputs); otherwise the
    peft-wrapped model comes back.
    """
    from phi3v_train.model import Phi3VForCausalLM

    kwargs = {"dtype": torch_dtype(dtype), "attn_implementation": attn_implementation}
    if not is_adapter(path):
        if not (path / "config.json").is_file():
            raise LoadError(f"{path}: neither config.json (a full checkpoint) nor {ADAPTER_CONFIG} (a LoRA adapter)")
        return Phi3VForCausalLM.from_pretrained(str(path), **kwargs), str(path)
    from peft import PeftModel

    base_source = adapter_base(path, base=base)
    refuse_quantized(base_source)
    model = PeftModel.from_pretrained(Phi3VForCausalLM.from_pretrained(base_source, **kwargs), str(path))
    return (model.merge_and_unload() if merge else model), base_source


def load_for_inference(
    path: str | Path,
    *,
    base: str | Path | None = None,
    dtype: str = "fp32",
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    num_crops: int | None = None,
) -> tuple["Phi3VForCausalLM", "Phi3VProcessor"]:
    """(model in eval mode on ``device``, processor) for a full checkpoint, an adapter dir, a run dir or a Hub id.

    ``flash_attention_2`` falls back to sdpa, with a warning, where flash-attn cannot run.

    >>> model, processor = load_for_inference("runs/docvqa-lora/final", dtype="bf16", device="cuda")  # doctest: +SKIP
    """
    from phi3v_train.strategies import resolve_attention

    attn_implementation = resolve_attention(attn_implementation)
    if not Path(path).is_dir():
        model, processor = _load_hub_model(str(path), dtype=dtype, attn_implementation=attn_implementation,
                                           num_crops=num_crops)
        return model.to(device).eval(), processor
    model_dir = resolve_model_dir(path)
    model, base_source = load_model(model_dir, base=base, dtype=dtype, attn_implementation=attn_implementation)
    processor = load_processor(model_dir, base_source, num_crops=num_crops)
    return model.to(device).eval(), processor


def _load_hub_model(
    source: str, *, dtype: str, attn_implementation: str, num_crops: int | None
) -> tuple["Phi3VForCausalLM", "Phi3VProcessor"]:
    """A model and processor by Hub id, from the local cache when offline; LoadError for anything else."""
    if not _HUB_ID.fullmatch(source):
        raise LoadError(f"{source}: no such model directory, and not a Hub id (org/name)")
    from phi3v_train.model import Phi3VForCausalLM, Phi3VProcessor

    try:
        model = Phi3VForCausalLM.from_pretrained(source, dtype=torch_dtype(dtype),
                                                 attn_implementation=attn_implementation)
        processor = Phi3VProcessor.from_pretrained(source, **({} if num_crops is None else {"num_crops": num_crops}))
    except OSError as exc:
        raise LoadError(f"{source}: cannot load this Hub model ({str(exc).splitlines()[0]}); without network it must "
                        "be in the local Hugging Face cache, or pass a local directory") from None
    return model, processor


def device_and_precision(device: str | None, precision: str | None, attention: str) -> tuple[str, str]:
    """The device and precision inference runs with: cuda when available, bf16 there and fp32 on CPU.

    Raises ValueError when ``attention`` is flash attention and the precision is not bf16 (a usage error).
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = precision or ("bf16" if device.startswith("cuda") else "fp32")
    if attention == "flash_attention_2" and precision != "bf16":
        raise ValueError(f"--attention flash_attention_2 needs --precision bf16 (got {precision}); "
                         "or use --attention sdpa")
    return device, precision
