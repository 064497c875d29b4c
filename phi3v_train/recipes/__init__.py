"""The original Phi-3(.5)-vision finetuning recipe as data: one YAML file per dataset × strategy row of its tables.

Each ``<name>.yaml`` opens with the command that applies it and holds three things: ``settings`` (TrainConfig keys;
``phi3v-train run --recipe NAME`` lays them under the YAML and the flags, so anything given explicitly still wins),
``original`` (the script, the command line and the result the original reports, with the model it was measured on)
and ``shape`` (a typical sample's sequence length and CLIP crops, used by ``phi3v-train plan``).

Source: microsoft/Phi-3CookBook, ``code/04.Finetuning/vision_finetuning/finetune_hf_trainer_*.py`` and the guide
``md/03.FineTuning/FineTuning_Vision.md`` ("Suggested hyperparameters and expected accuracy").
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import UserError, validation_lines

Metric = Literal["anls", "accuracy"]


class RecipeError(UserError, ValueError):
    """Unknown recipe name, or a recipe file that does not parse (a packaging bug)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Result(_Strict):
    """What the original reports for this row, and on which model and data it was measured."""

    metric: Metric
    value: float = Field(description="Percent (ANLS × 100 or accuracy × 100), as the guide prints it.")
    model: str = Field(description="The model the number was measured on (Phi-3-vision for DocVQA/Memes).")
    evaluated_on: str


class Original(_Strict):
    script: str
    command: str = Field(description="The original command line this row corresponds to.")
    result: Result | None = None
    notes: list[str] = Field(default_factory=list, description="Where phi3v cannot or does not match it, and why.")


class Shape(_Strict):
    """One typical sample, for memory planning."""

    seq_len: int = Field(gt=0, description="Tokens per sample (text + image tokens) at the recipe's num_crops.")
    crops: int = Field(gt=0, description="336-px crops through CLIP per sample (global views included).")
    source: str = Field(description="Where the numbers come from.")


class Recipe(_Strict):
    name: str
    dataset: str
    title: str
    settings: dict[str, Any]
    original: Original
    shape: Shape


def _files() -> dict[str, Any]:
    folder = resources.files(__name__)
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


@cache
def all_recipes() -> tuple[Recipe, ...]:
    """Every shipped recipe, in the order of the original's tables."""
    recipes = []
    for name, entry in sorted(_files().items()):
        try:
            recipe = Recipe.model_validate(yaml.safe_load(entry.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe file {entry.name} is broken: {exc}") from None
        except ValidationError as exc:
            raise RecipeError(f"recipe file {entry.name} is broken: {'; '.join(validation_lines(exc))}") from None
        if recipe.name != name:
            raise RecipeError(f"recipe file {entry.name} names itself {recipe.name!r}")
        recipes.append(recipe)
    order = {"docvqa": 0, "hateful-memes": 1, "nlvr2": 2, "ucf101": 3}
    return tuple(sorted(recipes, key=lambda r: (order.get(r.dataset, 9), _row_order(r))))


def _row_order(recipe: Recipe) -> tuple[int, int]:
    strategies = ["full", "frozen-vision", "lora", "qlora"]
    settings = recipe.settings
    return strategies.index(settings["strategy"]), 0 if settings.get("precision", "bf16") == "bf16" else 1


def recipe_names() -> list[str]:
    return [recipe.name for recipe in all_recipes()]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; RecipeError with the closest names when there is none.

    >>> get_recipe("docvqa-lora").settings["lora"]["rank"]
    32
    """
    for recipe in all_recipes():
        if recipe.name == name:
            return recipe
    close = difflib.get_close_matches(name, recipe_names(), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise RecipeError(f"no such recipe; {hint}`phi3v-train recipes` lists them")


def describe_settings(config: Any) -> str:
    """The resolved settings as YAML, preceded by the recipe's origin when one was applied (printed at start)."""
    data = config.model_dump(mode="json")
    lines = []
    if config.recipe:
        recipe = get_recipe(config.recipe)
        lines.append(f"# recipe {recipe.name}: {recipe.title}")
        lines.append(f"# original: {recipe.original.command}")
        if recipe.original.result:
            result = recipe.original.result
            lines.append(f"# original result: {result.metric} {result.value:g} ({result.model})")
        overridden = _overridden(recipe.settings, data)
        if overridden:
            lines.append(f"# changed from the recipe: {', '.join(overridden)}")
    lines.append(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
    return "\n".join(lines)


def _overridden(settings: dict[str, Any], resolved: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key, value in settings.items():
        if isinstance(value, dict):
            changed += _overridden(value, resolved.get(key) or {}, f"{prefix}{key}.")
        elif resolved.get(key) != value:
            changed.append(f"{prefix}{key}")
    return changed
