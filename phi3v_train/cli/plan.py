"""``phi3v-train plan``: which strategy fits this machine, how much memory each needs, and the command to run."""

from __future__ import annotations

import click

from phi3v_train.plan import GPUS, STRATEGIES


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs in total (all nodes).")
@click.option("--gpu-memory", type=click.FloatRange(min=1), help="GB per GPU [the --gpu class's].")
@click.option("--gpu", "gpu_name", type=click.Choice(sorted(GPUS)), default="a100", show_default=True,
              help="GPU class: decides bf16/flash attention and the guide's advice.")
@click.option("--recipe", help="A recipe (`phi3v-train recipes`): its settings and dataset shape.")
@click.option("--strategy", type=click.Choice(STRATEGIES), help="The strategy you want (when it fits).")
@click.option("--seq-len", type=click.IntRange(min=1), help="Tokens per sample [the recipe's; DocVQA's 2443].")
@click.option("--crops", type=click.IntRange(min=1), help="336-px crops per sample [the recipe's; DocVQA's 17].")
@click.option("--data", default="DATA", show_default=True, help="Dataset directory to put in the command.")
def plan(gpus: int, gpu_memory: float | None, gpu_name: str, recipe: str | None, strategy: str | None,
         seq_len: int | None, crops: int | None, data: str) -> None:
    """Estimate per-GPU memory of every strategy on this machine and recommend one, as the original guide does
    (A100/H100: full finetuning, bf16 + flash attention; V100: full in fp16 without flash attention; no data-center
    GPU: LoRA; Turing: QLoRA). Estimates are per GPU in GB; see benchmarks/plan_vs_original.md for their accuracy.

    \b
    Example:
        phi3v-train plan --gpus 8 --gpu a100 --gpu-memory 80 --recipe docvqa-full
        phi3v-train plan --gpus 2 --gpu rtx4090 --strategy lora --seq-len 3000 --crops 17
    """
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from phi3v_train.plan import make_plan
    from phi3v_train.recipes import RecipeError

    gpu = GPUS[gpu_name] if gpu_memory is None else replace(GPUS[gpu_name], memory_gb=gpu_memory)
    try:
        report = make_plan(gpus=gpus, gpu=gpu, recipe=recipe, strategy=strategy, seq_len=seq_len, crops=crops,
                           data=data)
    except RecipeError as exc:
        raise click.UsageError(f"--recipe {recipe}: {exc}") from None
    console = Console(width=max(Console().width, 130))
    table = Table(title=f"{gpus}× {gpu.name} {gpu.memory_gb:g} GB — {report.seq_len} tokens, {report.crops} crops "
                        "per sample, micro-batch 1 (GB per GPU)")
    for column in ("strategy", "runs as", "weights", "grads", "optimizer", "buffers", "activations", "total",
                   "verdict"):
        table.add_column(column, no_wrap=column in ("strategy", "verdict"))
    for row in report.rows:
        s, parts = row.settings, row.estimate.parts
        attention = "flash" if s["attention"] == "flash_attention_2" else s["attention"]
        runs_as = f"{s.get('recipe') or 'defaults'}: {s['precision']}, {attention}, {s.get('deepspeed') or 'no ZeRO'}"
        total = f"{row.estimate.total:.1f}" + (f" → {row.fallback.total:.1f}" if row.fallback else "")
        style = {"fits": "green", "does not fit": "red"}.get(row.verdict, "yellow")
        table.add_row(row.strategy, runs_as, *(f"{parts[key]:.1f}" for key in (
            "weights", "gradients", "optimizer", "buffers", "activations")), total, f"[{style}]{row.verdict}[/]")
    console.print(table)
    console.print(f"guide for {gpu.name}: {report.guide}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    if report.command is None:
        raise click.ClickException("no strategy fits: add GPUs, lower --seq-len/--crops (fewer --num-crops), or use "
                                   "GPUs with more memory")
    console.print(f"recommended: {report.recommended.strategy}", highlight=False)
    console.print(report.command, markup=False, highlight=False, soft_wrap=True)
