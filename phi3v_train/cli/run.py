"""``phi3v-train run``: parse flags, call :func:`phi3v_train.train.run`, turn its errors into messages."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from phi3v_data.cli.errors import GuardedCommand, set_verbose
from phi3v_train.cli.inputs import load_failures
from phi3v_train.cli.options import attention_option, precision_option

HELP = """Finetune Phi-3.5-vision on a converted dataset.

Settings come from --config YAML and/or flags (flags win); RUN/config.yaml keeps the resolved settings.
The dataset is validated first; a broken one is refused with a report. Output: RUN/checkpoint-<step>/ (each
complete one holds a COMPLETE marker), RUN/final/ (full checkpoint, or LoRA adapter, + processor files),
RUN/log.jsonl and RUN/tensorboard/; with --keep-best, RUN/best/ (the best evaluated step). `phi3v-train report RUN`
plots the run.

\b
Example:
    phi3v-train run --data data/ucf101 --model microsoft/Phi-3.5-vision-instruct \\
        --strategy lora --num-crops 4 --batch-size 2 --global-batch-size 32 --out runs/ucf101-lora
    phi3v-train run --config runs/ucf101-lora/config.yaml --resume latest
    phi3v-train run --data data/docvqa:0.7 --data data/llava:0.3 --model … --out runs/mix   # a mixture

\b
Several GPUs (DDP), one node:
    torchrun --nproc_per_node 8 -m phi3v_train.cli.run --data … --out …
Several nodes (run on each node, node_rank 0..N-1; MASTER is node 0's address):
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr MASTER --master_port 29500 \\
        -m phi3v_train.cli.run --data … --out … --deepspeed zero3
DeepSpeed: --deepspeed zero2 | zero3 (shipped configs) | my_config.json, launched with torchrun or deepspeed.
Pre-emption: SIGTERM saves a checkpoint and exits (code 1); rerun with --resume latest.
"""


def _flags(**given: Any) -> dict[str, Any]:
    """Flat click values → the nested dict :func:`load_config` overlays on the YAML (None = not given)."""
    lora = {key[5:]: given.pop(key) for key in list(given) if key.startswith("lora_")}
    data = given.pop("data", ())
    given["data"] = (data[0] if len(data) == 1 else list(data)) if data else None  # config.py parses DIR:WEIGHT
    if lora.get("targets"):
        lora["targets"] = [t for part in lora["targets"] for t in part.split(",") if t]
    return {**given, "lora": lora}


@click.command(cls=GuardedCommand, help=HELP,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file of settings.")
@click.option("--recipe", help="Start from a preset of the original recipe (`phi3v-train recipes`); "
              "YAML and flags win.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and write RUN/config.yaml "
              "(RUN/config.dry-run.yaml when RUN holds a run); load and train nothing.")
@click.option("--data", multiple=True, metavar="DIR[:WEIGHT]",
              help="Converted dataset directory; repeat it with weights to mix datasets (--data a:0.7 --data b:0.3).")
@click.option("--model", help="Base model: local checkpoint directory or Hub id.")
@click.option("--out", "--output", "output", type=click.Path(path_type=Path), help="Run directory.")
@click.option("--train-split", help="Train on <data>/*_<split>.jsonl [train].")
@click.option("--eval-split", help="Split for --eval-before/--eval-after/--eval-every [val].")
@click.option("--strategy", type=click.Choice(["full", "frozen-vision", "lora", "qlora"]), help="[lora]")
@click.option("--train-projector/--freeze-projector", default=None, help="frozen-vision: train the projector? [train]")
@click.option("--vision-freeze", type=click.Choice(["clip", "original"]), help="frozen-vision scope: the CLIP "
              "tower, or the original recipe's CLIP + projector + separators + token embeddings [clip].")
@click.option("--lora.rank", "lora_rank", type=int, help="[16]")
@click.option("--lora.alpha", "lora_alpha", type=float, help="[32]")
@click.option("--lora.dropout", "lora_dropout", type=float, help="[0.05]")
@click.option("--lora.targets", "lora_targets", multiple=True, help="Language-model linears, comma-separated "
              "[qkv_proj,o_proj,gate_up_proj,down_proj].")
@click.option("--lora.vision/--lora.no-vision", "lora_vision", default=None, help="Adapters on the vision tower too.")
@click.option("--lora.projector/--lora.no-projector", "lora_projector", default=None, help="Adapters on the projector.")
@click.option("--lora.lm-head/--lora.no-lm-head", "lora_lm_head", default=None, help="An adapter on lm_head [off].")
@click.option("--lora.init", "lora_init", type=click.Choice(["kaiming", "gaussian"]), help="Adapter A init [kaiming].")
@click.option("--lora.quantize-vision/--lora.no-quantize-vision", "lora_quantize_vision", default=None,
              help="qlora: CLIP linears in 4 bit too [off].")
@click.option("--lora.double-quant/--lora.no-double-quant", "lora_double_quant", default=None,
              help="qlora: quantize the quantization constants [on].")
@precision_option(help="[bf16]")
@attention_option()
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="[on]")
@click.option("--num-crops", type=int, help="HD crops per image: 4 video frames, 16 documents [4].")
@click.option("--image-tags", type=click.Choice(["lines", "joined"]), help="Untagged images: one '<|image_k|>\\n' "
              "each, or all tags then one '\\n' (the original recipe's) [lines].")
@click.option("--turns", type=click.Choice(["together", "separate"]), help="Multi-turn records: one conversation, or "
              "each turn its own chat with BOS and <|endoftext|> (the original NLVR2 script's) [together].")
@click.option("--order", type=click.Choice(["length", "file", "random"]),
              help="Sample order: length-grouped, file order, or a seeded shuffle [length].")
@click.option("--max-length", type=int, help="Drop (and count) longer samples [131072, the model's context].")
@click.option("--batch-size", type=int, help="Per device [1].")
@click.option("--global-batch-size", type=int, help="Per optimizer step over all devices [batch size × devices].")
@click.option("--epochs", type=float, help="[1]")
@click.option("--max-steps", type=int, help="Optimizer steps; overrides --epochs.")
@click.option("--lr", type=float, help="Peak learning rate [2e-4 lora/qlora, 2e-5 otherwise].")
@click.option("--weight-decay", type=float, help="[0]")
@click.option("--decay-exempt", type=click.Choice(["norms", "layernorm"]), help="No decay for biases and all norm "
              "weights, or biases and LayerNorm only (RMSNorm decayed, the original recipe's) [norms].")
@click.option("--loss-norm", type=click.Choice(["tokens", "micro-batch"]), help="Accumulated loss: per label token of "
              "the global batch, or the mean of micro-batch means (the original recipe's) [tokens].")
@click.option("--warmup", type=float, help="Warmup: a fraction of the steps if < 1, else a number of steps [0.03].")
@click.option("--adam-beta1", type=float, help="[0.9]")
@click.option("--adam-beta2", type=float, help="[0.999; the original recipe 0.95]")
@click.option("--adam-epsilon", type=float, help="[1e-8; the original recipe 1e-7]")
@click.option("--scheduler", type=click.Choice(["cosine", "linear", "constant"]), help="[cosine]")
@click.option("--max-grad-norm", type=float, help="Clip gradients; 0 = off [1.0].")
@click.option("--seed", type=int, help="[42]")
@click.option("--save-every", type=int, help="Checkpoint every N steps [500].")
@click.option("--keep-last", type=int, help="Complete checkpoints kept, besides the best one [2].")
@click.option("--save-dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
              help="Weights dtype of a full model in final/ [auto: the base checkpoint's].")
@click.option("--log-every", type=int, help="Steps per log line [10].")
@click.option("--resume", help="'latest' or a checkpoint directory.")
@click.option("--overwrite", is_flag=True, default=None, help="Start afresh: the earlier run's files in RUN are "
              "deleted once every input is checked.")
@click.option("--allow-changed-settings", is_flag=True, help="--resume with settings that change the run (each change "
              "is logged in log.jsonl).")
@click.option("--fresh-optimizer", is_flag=True, help="--resume a checkpoint that lacks its optimizer/scheduler state, "
              "with fresh ones (logged in log.jsonl).")
@click.option("--deepspeed", help="zero2, zero3, zero2-original (the original recipe's) or a DeepSpeed JSON file.")
@click.option("--workers", type=int, help="Data loader workers [2].")
@click.option("--preflight/--no-preflight", default=None, help="Validate the dataset first [on].")
@click.option("--eval-before/--no-eval-before", default=None, help="Evaluate --eval-split before training.")
@click.option("--eval-after/--no-eval-after", default=None, help="Evaluate --eval-split after training.")
@click.option("--eval-limit", type=int, help="At most this many eval records.")
@click.option("--eval-every", type=int, help="Evaluate --eval-split every N steps: val loss, accuracy/ANLS/AUROC.")
@click.option("--keep-best", type=click.Choice(["val_loss", "accuracy", "anls", "auroc"]),
              help="Keep the best checkpoint by this metric as RUN/best (needs --eval-every).")
@click.option("--patience", type=int, help="Stop after N evaluations without a better --keep-best metric [off].")
@click.option("--report-to", help="tensorboard,wandb,mlflow (comma-separated) [tensorboard via --tensorboard].")
@click.option("--tensorboard/--no-tensorboard", default=None, help="[on]")
@click.option("--verbose", "-v", is_flag=True, callback=set_verbose, help="Show library warnings and tracebacks.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings, errors and the closing lines.")
def run(config_path: Path | None, verbose: bool, quiet: bool, **given: Any) -> None:
    from phi3v_train.cli.quiet import quiet_libraries  # noqa: PLC0415 - keep --help fast
    from phi3v_train.cli.run_checks import check_inputs  # noqa: PLC0415

    dry_run = given.pop("dry_run")
    resume_flags = {"allow_changed_settings": given.pop("allow_changed_settings"),
                    "fresh_optimizer": given.pop("fresh_optimizer")}
    config = _settings(config_path, given, dry_run=dry_run)
    if dry_run:
        _write_dry_run(config)
        return
    config, notes = check_inputs(config)  # milliseconds, before torch is imported (seconds)
    for note in notes:
        click.echo(note, err=True)
    quiet_libraries(verbose=verbose)
    from phi3v_train.train import RunError, run as run_training  # noqa: PLC0415 - imports torch

    with load_failures(f"--model {config.model} (or the checkpoint resumed from)", RunError):
        result = run_training(config, verbosity=-1 if quiet else 1 if verbose else 0, **resume_flags)
    _report(result, config)


def _settings(config_path: Path | None, given: dict[str, Any], *, dry_run: bool) -> Any:
    """The resolved TrainConfig: YAML, flags, a run's own config.yaml followed; a recipe's settings described."""
    from phi3v_train.cli.run_checks import absolute_paths  # noqa: PLC0415
    from phi3v_train.config import ConfigError, load_config  # noqa: PLC0415
    from phi3v_train.run_dir import follow_run_config  # noqa: PLC0415

    try:
        config = load_config(config_path, flags=_flags(**given))
    except ConfigError as exc:
        raise click.UsageError("\n".join(exc.problems)) from None
    config, note = follow_run_config(config_path, config, out_given=given.get("output") is not None)
    if note:
        click.echo(note, err=True)
    if dry_run:  # config.yaml is read from anywhere later (--config RUN/config.yaml): absolute paths, as a run saves
        config = absolute_paths(config)
    if dry_run or (config.recipe and os.environ.get("RANK", "0") == "0"):
        from phi3v_train.recipes import describe_settings  # noqa: PLC0415

        click.echo(describe_settings(config), err=not dry_run)
    return config


def _write_dry_run(config: Any) -> None:
    from phi3v_train.config import write_config  # noqa: PLC0415
    from phi3v_train.run_dir import dry_run_config_path  # noqa: PLC0415

    target = dry_run_config_path(config.output)
    write_config(config, target)
    kept = f" ({config.output} holds a run: its config.yaml is left as it is)" if target.name != "config.yaml" else ""
    click.echo(f"dry run: settings written to {target}{kept}; nothing loaded or trained")


def _report(result: Any, config: Any) -> None:
    """The closing lines (the main process's), and exit 1 when pre-empted."""
    if result.status == "preempted":
        if result.main_process:
            click.echo(f"stopped by SIGTERM at step {result.global_step}; checkpoint {result.last_checkpoint}. "
                       f"Continue with: phi3v-train run --config {config.output / 'config.yaml'} --resume latest",
                       err=True)
        sys.exit(1)
    if result.main_process and result.skipped_samples:
        click.echo(f"warning: {result.skipped_samples} sample(s) were skipped because their images failed to decode "
                   f"(each is named above; counts per interval in {config.output / 'log.jsonl'})", err=True)
    if result.main_process and result.already_finished:
        click.echo(f"nothing to do: the run already finished at step {result.global_step}; final model in "
                   f"{result.final_dir} (to train further, start a new run with --model {result.final_dir})")
    elif result.main_process:
        click.echo(f"done: {result.global_step} steps; final model in {result.final_dir}")


if __name__ == "__main__":  # torchrun -m phi3v_train.cli.run …
    run()
