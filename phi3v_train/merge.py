"""Merge a LoRA/QLoRA adapter into its base and save an ordinary checkpoint anyone can load.

The merge always happens on the full-precision base, also for QLoRA: folding LoRA deltas into NF4 weights would
re-quantise them and lose most of what was learned. The result is written in the official format (parameter names
without peft's ``base_model.model.`` prefix, no ``lora_`` tensors, the base's dtype, ``config.json`` with the fields
the official configuration reads) together with the official processor files (``preprocessor_config.json``,
``processor_config.json``, the tokenizer files), so ``Phi3VForCausalLM.from_pretrained(out)`` loads it directly and so
does the official remote code (``trust_remote_code=True`` on transformers 4.4x): its ``*.py`` files are copied along
when the base checkpoint has them (a Hub download does), otherwise put them beside the output.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from phi3v_train.loading import (
    LoadError, adapter_base, is_adapter, load_model, load_processor, resolve_model_dir, torch_dtype,
)
from phi3v_train.model.files import plain_permissions

MERGE_DTYPE = "fp32"
"""Deltas are added in fp32 so that a bf16 base does not lose the small LoRA updates to rounding."""


def merge_adapter(
    adapter: str | Path, *, out: str | Path, base: str | Path | None = None, dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``base + adapter`` to ``out`` as a full checkpoint; returns ``out``.

    ``dtype`` (``fp32``/``bf16``/``fp16``) is the precision saved; by default the base checkpoint's own. The
    directory appears only when complete (written beside it, then renamed).

    >>> merge_adapter("runs/docvqa-qlora/final", out="models/docvqa-merged")  # doctest: +SKIP
    """
    adapter_dir = resolve_model_dir(adapter)
    if not is_adapter(adapter_dir):
        full = " (a full checkpoint already: give it to eval/predict as --model, or copy it)" \
            if (adapter_dir / "config.json").is_file() else ""
        raise LoadError(f"{adapter_dir}: no adapter_config.json; it is not a LoRA/QLoRA adapter, so there is nothing "
                        f"to merge{full}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LoadError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    base_source = adapter_base(adapter_dir, base=base)
    saved_dtype = torch_dtype(dtype or _declared_dtype(base_source))
    model, _ = load_model(adapter_dir, base=base_source, dtype=MERGE_DTYPE)
    processor = load_processor(adapter_dir, base_source)
    model.to(saved_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        processor.save_pretrained(str(staging))
        plain_permissions(staging)  # mkdtemp makes it 0700: others (a serving container) could not read it
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _declared_dtype(base: str) -> str:
    """The dtype the base checkpoint's config declares (``dtype`` or the older ``torch_dtype``), else fp32."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(base)
    declared = config.get("dtype") or config.get("torch_dtype")
    return declared if isinstance(declared, str) and declared != "auto" else MERGE_DTYPE
