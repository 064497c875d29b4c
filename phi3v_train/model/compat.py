"""The names that changed between the transformers 5.x releases phi3v runs on, read from the installed one.

The lock installs a recent 5.x, but a GPU image (or a user's environment) may hold an older one: transformers 5.17,
for one, still calls the key/value cache ``past_key_values`` where later releases call it ``cache``, and its
``TrainingArguments`` know ``gradient_checkpointing`` but not ``activation_checkpointing``. Each difference is looked
up once, from the classes themselves rather than from version numbers, so a release that renames back still works.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import TrainingArguments
from transformers.modeling_outputs import CausalLMOutputWithPast


def _fields(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


# The key/value cache's keyword and output field: "cache" (later 5.x) or "past_key_values" (5.17 and before).
CACHE = "cache" if "cache" in _fields(CausalLMOutputWithPast) else "past_key_values"


def output_cache(outputs: Any) -> Any:
    """The cache a model output carries, under either name."""
    return getattr(outputs, CACHE, None)


# What checkpointing is called: "activation" (later 5.x) or "gradient" (5.17 and before), in TrainingArguments and in
# the model's ``*_checkpointing_enable`` method alike.
CHECKPOINTING = "activation" if "activation_checkpointing" in _fields(TrainingArguments) else "gradient"


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """``TrainingArguments`` keywords that turn activation (gradient) checkpointing on, non-reentrant."""
    return {f"{CHECKPOINTING}_checkpointing": enabled,
            f"{CHECKPOINTING}_checkpointing_kwargs": {"use_reentrant": False}}


def enable_checkpointing(model: Any) -> None:
    """Turn on non-reentrant activation checkpointing with the method the installed release names."""
    enable = getattr(model, f"{CHECKPOINTING}_checkpointing_enable")
    enable(**{f"{CHECKPOINTING}_checkpointing_kwargs": {"use_reentrant": False}})
