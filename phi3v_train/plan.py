"""``phi3v-train plan``: the original guide's hardware advice as code, with a memory estimate per strategy.

For a machine (``--gpus``, ``--gpu-memory``, ``--gpu`` class) and a dataset shape (a recipe's, or ``--seq-len`` /
``--crops``), every strategy gets the settings it would run with, a per-GPU estimate from :mod:`phi3v_train.memory`
and a verdict: fits; fits with zero2 (the shipped ZeRO-2 config, whose small buckets save the ~9 GB the original's
5e8-element buckets take); needs ZeRO-3 (fits only with the parameters sharded too); or does not fit. The
recommendation is the strategy asked for (``--strategy`` or the recipe's) when it fits, else the guide's for the GPU
class when it fits, else the first that does in the order full → frozen vision → LoRA → QLoRA; the report ends with
the command that runs it.
"""

from __future__ import annotations

import shlex

from dataclasses import dataclass
from typing import Literal

from phi3v_train.memory import Architecture, Estimate, Strategy, estimate, setup_for

def fits(total_gb: float, gpu_memory_gb: float) -> bool:
    """A 5 % margin: an estimate this close to the limit is a coin toss."""
    return total_gb <= 0.95 * gpu_memory_gb


# ---------------------------------------------------------------------------------------------------------------------
# The guide's hardware advice (FineTuning_Vision.md, "Azure Compute GPU machine SKU suggestions" and "Installation"):
# A100/H100: full finetuning with flash attention and bf16; V100: full finetuning in fp16 without flash attention;
# no data-center GPU: LoRA; Turing (flash attention and bf16 need Ampere): QLoRA.


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    family: Literal["hopper", "ampere", "ada", "volta", "turing"]
    datacenter: bool

    @property
    def bf16(self) -> bool:
        """bf16 and flash attention both need Ampere or newer."""
        return self.family in ("hopper", "ampere", "ada")


GPUS = {
    "h200": Gpu("H200", 141, "hopper", True), "h100": Gpu("H100", 80, "hopper", True),
    "a100": Gpu("A100", 80, "ampere", True), "a100-40": Gpu("A100-40GB", 40, "ampere", True),
    "a10": Gpu("A10", 24, "ampere", True), "l40s": Gpu("L40S", 48, "ada", True), "l4": Gpu("L4", 24, "ada", True),
    "v100": Gpu("V100", 32, "volta", True), "t4": Gpu("T4", 16, "turing", True),
    "rtx8000": Gpu("Quadro RTX 8000", 48, "turing", False), "rtx2080ti": Gpu("RTX 2080 Ti", 11, "turing", False),
    "rtx3090": Gpu("RTX 3090", 24, "ampere", False), "rtx4090": Gpu("RTX 4090", 24, "ada", False),
}
STRATEGIES: tuple[Strategy, ...] = ("full", "frozen-vision", "lora", "qlora")


def guide_strategy(gpu: Gpu) -> Strategy:
    """What the original guide tells this GPU class to run."""
    if gpu.family == "turing":
        return "qlora"
    if not gpu.datacenter:
        return "lora"
    return "full"  # A100/H100 (bf16 + flash attention) and V100 (fp16, no flash attention)


def precision_for(gpu: Gpu) -> tuple[str, str]:
    """(precision, attention): bf16 + flash attention from Ampere on; fp16 + sdpa before (the original: eager)."""
    return ("bf16", "flash_attention_2") if gpu.bf16 else ("fp16", "sdpa")


DEFAULT_SHAPE = (2443, 17)  # DocVQA at num_crops 16: the original's benchmark shape (2443 tokens, 4x4 grid + global)


@dataclass
class Row:
    strategy: Strategy
    settings: dict  # TrainConfig keys this row runs with
    estimate: Estimate
    verdict: Literal["fits", "fits with zero2", "needs ZeRO-3", "does not fit"]
    fallback: Estimate | None = None  # the estimate under the settings that fit, when they are not the first tried


@dataclass
class PlanReport:
    gpus: int
    gpu: Gpu
    seq_len: int
    crops: int
    rows: list[Row]
    guide: Strategy
    recommended: Row | None
    command: str | None
    notes: list[str]


def official_architecture() -> Architecture:
    """Phi-3.5-vision-instruct's sizes (its config.json: hidden 3072, 32 layers, MLP 8192, vocabulary 32064)."""
    return Architecture()


def make_plan(*, gpus: int, gpu: Gpu, recipe: str | None = None, strategy: Strategy | None = None,
              seq_len: int | None = None, crops: int | None = None, data: str = "DATA",
              arch: Architecture | None = None) -> PlanReport:
    """Estimate every strategy on this machine and pick what to run; see the module docstring."""
    from phi3v_train.recipes import all_recipes, get_recipe  # noqa: PLC0415

    arch = arch or official_architecture()
    base = get_recipe(recipe) if recipe else None
    shape = (base.shape.seq_len, base.shape.crops) if base else DEFAULT_SHAPE
    seq_len, crops = seq_len or shape[0], crops or shape[1]
    precision, attention = precision_for(gpu)
    notes = []
    if base and base.settings["precision"] == "bf16" and not gpu.bf16:
        notes.append(f"{gpu.name} has no bf16 or flash attention: fp16 with sdpa attention instead of the recipe's "
                     "bf16 + flash attention (the guide's V100 advice)")
    rows = []
    for name in STRATEGIES:
        settings = _row_settings(name, base, all_recipes(), gpus=gpus, precision=precision, attention=attention)
        rows.append(_row(arch, name, settings, gpus=gpus, gpu=gpu, seq_len=seq_len, crops=crops))
    guide = guide_strategy(gpu)
    wanted = strategy or (base.settings["strategy"] if base else None)
    order = ([wanted] if wanted else []) + [guide] + list(STRATEGIES)
    recommended = next((row for name in order for row in rows
                        if row.strategy == name and row.verdict != "does not fit"), None)
    command = _command(recommended, gpus=gpus, data=data) if recommended else None
    if wanted and recommended and recommended.strategy != wanted:
        notes.append(f"{wanted} does not fit {gpus}×{gpu.memory_gb:g} GB; {recommended.strategy} does")
    return PlanReport(gpus, gpu, seq_len, crops, rows, guide, recommended, command, notes)


def _row_settings(name: Strategy, base, recipes, *, gpus: int, precision: str, attention: str) -> dict:
    """The recipe's own row, else the same dataset's recipe for this strategy, else phi3v's defaults."""
    candidates = [r for r in recipes if base and r.dataset == base.dataset and r.settings["strategy"] == name]
    if base and base.settings["strategy"] == name:
        candidates.insert(0, base)
    if candidates:
        settings = dict(candidates[0].settings, recipe=candidates[0].name)
    else:
        settings = {"strategy": name, "num_crops": base.settings["num_crops"] if base else 16}
        if name in ("full", "frozen-vision") and gpus > 1:
            settings["deepspeed"] = "zero2"
    if settings.get("precision") != precision:
        settings.update(precision=precision, attention=attention)
    return settings


def _row(arch: Architecture, name: Strategy, settings: dict, *, gpus: int, gpu: Gpu, seq_len: int, crops: int) -> Row:
    """Try the settings as they are, then smaller DeepSpeed buckets (the original's 5e8 cost 9 GB), then ZeRO-3."""
    from phi3v_train.config import load_config  # noqa: PLC0415

    attempts = [(settings, "fits")]
    if settings.get("deepspeed") == "zero2-original":
        attempts.append(({**settings, "deepspeed": "zero2"}, "fits with zero2"))
    if name != "qlora" and gpus > 1:  # bitsandbytes' 4-bit weights cannot be sharded
        attempts.append(({**settings, "deepspeed": "zero3"}, "needs ZeRO-3"))
    first = None
    for attempt, verdict in attempts:
        config = load_config(flags={**attempt, "data": ".", "model": attempt.get("model", "m"), "output": "."})
        result = estimate(arch, setup_for(config, gpus=gpus, seq_len=seq_len, crops=crops))
        first = first or result
        if fits(result.total, gpu.memory_gb):
            return Row(name, attempt, first, verdict, None if result is first else result)
    return Row(name, settings, first, "does not fit")


def _command(row: Row, *, gpus: int, data: str) -> str:
    """The command line to run, shell-quoted (``shlex.join``): ``--data 'my data/docvqa'`` pastes as one argument."""
    settings = row.settings
    argv = ["phi3v-train", "run"]
    if gpus > 1:
        several = gpus > 8 and gpus % 8 == 0
        nodes = ["--nnodes", str(gpus // 8), "--node_rank", "R", "--master_addr", "MASTER"] if several else []
        argv = ["torchrun", *nodes, "--nproc_per_node", str(min(gpus, 8)), "-m", "phi3v_train.cli.run"]
    recipe = settings.get("recipe")
    if recipe:
        argv += ["--recipe", recipe]
        from phi3v_train.recipes import get_recipe  # noqa: PLC0415

        recipe_settings = get_recipe(recipe).settings
        for key in ("precision", "attention", "deepspeed"):
            if settings.get(key) != recipe_settings.get(key):
                argv += [f"--{key}", str(settings[key])]
    else:
        argv += ["--strategy", row.strategy, "--model", "microsoft/Phi-3.5-vision-instruct"]
        argv += ["--precision", settings["precision"], "--attention", settings["attention"]]
        argv += ["--num-crops", str(settings["num_crops"])]
        if settings.get("deepspeed"):
            argv += ["--deepspeed", settings["deepspeed"]]
    argv += ["--data", data, "--out", f"runs/{recipe or row.strategy}"]
    return shlex.join(argv)
