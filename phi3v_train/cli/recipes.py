"""``phi3v-train recipes``: the original recipe's rows, as presets for ``run --recipe``."""

from __future__ import annotations

import click

from phi3v_train.recipes import all_recipes, get_recipe


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("name", required=False)
def recipes(name: str | None) -> None:
    """List the original Phi-3(.5)-vision recipe's presets, or show one in full (settings, original command,
    result and where phi3v differs).

    \b
    Example:
        phi3v-train recipes
        phi3v-train recipes docvqa-lora
        phi3v-train run --recipe docvqa-lora --data data/docvqa --out runs/docvqa-lora
        phi3v-train run --recipe docvqa-lora --data data/docvqa --out runs/x --dry-run   # resolved settings only
    """
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 160))  # one line per row, even when piped; nothing cut to "Phi-3…"
    if name:
        from phi3v_train.recipes import RecipeError

        try:
            recipe = get_recipe(name)
        except RecipeError as exc:
            raise click.UsageError(f"recipe {name!r}: {exc}") from None
        import yaml

        console.print(f"[bold]{recipe.name}[/]: {recipe.title}", highlight=False)
        console.print(yaml.safe_dump(recipe.model_dump(mode="json", exclude={"name", "title"}), sort_keys=False,
                                     allow_unicode=True, width=110), markup=False, highlight=False)
        return
    table = Table(title="Recipes (phi3v-train run --recipe NAME …; flags override any setting)")
    for column in ("name", "strategy", "precision", "attention", "crops", "batch", "lr", "epochs", "LoRA r/α",
                   "original result", "measured on"):  # batch: global, per optimizer step
        table.add_column(column, no_wrap=True)
    for recipe in all_recipes():
        s = recipe.settings
        lora = s.get("lora")
        result = recipe.original.result
        table.add_row(
            recipe.name, s["strategy"], s["precision"],
            "flash" if s["attention"] == "flash_attention_2" else s["attention"],
            str(s["num_crops"]), str(s["global_batch_size"]), f"{s['lr']:.0e}", f"{s['epochs']:g}",
            f"{lora['rank']}/{lora['alpha']:g}" if lora else "-",
            f"{result.metric} {result.value:g}" if result else "-", _model_name(result.model) if result else "-",
        )
    console.print(table)


def _model_name(hub_id: str) -> str:
    return "Phi-3-vision" if "Phi-3-vision" in hub_id else "Phi-3.5-vision" if "Phi-3.5-vision" in hub_id else hub_id
