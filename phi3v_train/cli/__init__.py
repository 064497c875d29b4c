"""``phi3v-train``: create a tiny model, finetune, evaluate, merge/export and benchmark.

Each command lives in its own module and is imported only when used (torch is slow to import).
"""

from __future__ import annotations

import click

from phi3v_data.cli import GuardedGroup, verbose_option

COMMANDS = {
    "init-tiny": "phi3v_train.cli.init_tiny:init_tiny",
    "run": "phi3v_train.cli.run:run",
    "eval": "phi3v_train.cli.eval:eval_",
    "predict": "phi3v_train.cli.predict:predict",
    "export": "phi3v_train.cli.export:export",
    "bench": "phi3v_train.cli.bench:bench",
    "recipes": "phi3v_train.cli.recipes:recipes",
    "plan": "phi3v_train.cli.plan:plan",
    "report": "phi3v_train.cli.report:report",
}


@click.group(cls=GuardedGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="phi3v")
@verbose_option
def main() -> None:
    """Finetune Phi-3.5-vision on a converted dataset.

    \b
    Example:
        phi3v-train init-tiny models/tiny
        phi3v-train run --data data/ucf101 --model models/tiny --strategy lora --out runs/ucf101-lora
    """
