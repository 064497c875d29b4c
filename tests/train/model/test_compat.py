"""phi3v_train.model.compat: the names that differ between transformers releases match the installed release.

`make test` runs this folder twice: over the lock's transformers, and over the GPU image's older one
(requirements/gpu-image.txt, with PHI3V_GPU_IMAGE set), so both sides of each difference are exercised.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

import transformers
from transformers import TrainingArguments
from transformers.models.phi3.modeling_phi3 import Phi3Model

from phi3v_train.model.compat import CACHE, checkpointing_arguments

REQUIREMENTS = Path(__file__).resolve().parents[3] / "requirements"


def _pin(requirements: Path, name: str) -> str:
    match = re.search(rf"^{name}==(\S+)", requirements.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{name} is not pinned in {requirements}"
    return match.group(1).removesuffix("+cpu")


def test_the_installed_transformers_is_the_one_this_run_means_to_test() -> None:
    if os.environ.get("PHI3V_GPU_IMAGE"):
        expected = _pin(REQUIREMENTS / "gpu-image.txt", "transformers")
    else:
        major, minor = sys.version_info[:2]
        expected = _pin(REQUIREMENTS / f"lock-py{major}{minor}.txt", "transformers")
    assert transformers.__version__ == expected


def test_the_cache_keyword_is_the_one_phi3_takes() -> None:
    assert CACHE in inspect.signature(Phi3Model.forward).parameters


def test_checkpointing_arguments_turn_checkpointing_on_in_training_arguments(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                             **checkpointing_arguments(True))
    on = getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
    assert (on, kwargs) == (True, {"use_reentrant": False})
