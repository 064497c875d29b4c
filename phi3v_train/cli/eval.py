"""``phi3v-train eval``: answer a split greedily, score it by task, write predictions and metrics."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from phi3v_data.cli.errors import check_apart, check_writable, is_verbose
from phi3v_train.cli.inputs import data_inputs, load_failures, model_inputs, read_split
from phi3v_train.cli.options import attention_option, precision_option, prompt_options
from phi3v_train.cli.quiet import quiet_libraries



def _datasets(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Path, ...]:
    """--data as ``run`` reads it (``DIR[:WEIGHT]``, same parser); a weight means nothing here, so it is dropped."""
    from phi3v_train.config import parse_data_spec

    paths = []
    for text in values:
        try:
            source = parse_data_spec(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        if source.path != Path(text):
            click.echo(f"note: --data {text}: eval scores each dataset on its own; weight {source.weight:g} ignored",
                       err=True)
        paths.append(click.Path(exists=True, path_type=Path).convert(str(source.path), param, ctx))
    return tuple(paths)


@click.command("eval")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A checkpoint, an adapter dir (RUN/final of a lora/qlora run) or a run dir.")
@click.option("--base", type=str, default=None, help="Base model of an adapter [default: the one it records].")
@click.option("--data", "datas", required=True, multiple=True, callback=_datasets, metavar="DIR[:WEIGHT]",
              help="Converted dataset directory (or one of its .jsonl files); repeat it to score each dataset "
                   "on its own (OUTPUT/<name>/). A run's DIR:WEIGHT is accepted; the weight is ignored.")
@click.option("--split", default="val", show_default=True, help="Which <name>_<split>.jsonl of --data to use.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N records.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@prompt_options
@precision_option(default=None, help="[default: bf16 on GPU, fp32 on CPU]")
@attention_option("attn", default="sdpa", show_default=True, help="flash = flash_attention_2")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option("--out", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for predictions.jsonl and metrics.json.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
def eval_(model_path: Path, base: str | None, datas: tuple[Path, ...], split: str, limit: int | None, batch_size: int,
          num_crops: int | None, max_new_tokens: int, image_tags: str | None, turns: str | None, precision: str | None,
          attn: str, device: str | None, output: Path, quiet: bool) -> None:
    """Evaluate a model on a converted split: accuracy, ANLS and AUROC by each record's task.

    Writes OUTPUT/predictions.jsonl (one row per turn) and OUTPUT/metrics.json. With several --data (a run's
    mixture), each dataset is scored on its own: OUTPUT/<name>/{predictions.jsonl,metrics.json}, and
    OUTPUT/metrics.json by dataset. Exits 1 when a record or turn could not be evaluated (each is reported and
    skipped).

    \b
    Example:
        phi3v-train eval --model runs/docvqa-lora/final --data data/docvqa --split val --num-crops 16 --out runs/docvqa-lora/eval
        phi3v-train eval --model runs/mix/final --data data/docvqa --data data/llava --num-crops 16 --out runs/mix/eval
    """  # noqa: E501
    check_writable("--out", output, directory=True)
    quiet_libraries(verbose=is_verbose(click.get_current_context()))
    from phi3v_train.evaluate import evaluate_datasets, results_table
    from phi3v_train.loading import LoadError, device_and_precision, load_for_inference, recorded_prompt_format

    console = Console(stderr=True, soft_wrap=True)
    datasets = _read_datasets(datas, split, limit, console, output=output, model_path=model_path, base=base)
    try:
        device, precision = device_and_precision(device, precision, attn)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with load_failures(f"--model {model_path}", LoadError, OSError):  # OSError: a file transformers could not read
        model, processor = load_for_inference(model_path, base=base, dtype=precision, attn_implementation=attn,
                                              device=device, num_crops=num_crops)
    mixture = len(datasets) > 1
    results = evaluate_datasets(
        model, processor, {name: (records, root) for name, (_, records, root, _) in datasets.items()},
        output_dir=output, meta={"model": str(model_path), **({"split": split} if mixture else {})},
        dataset_meta={name: {"data": [str(f) for f in files], "skipped_lines": len(skipped)}
                      for name, (files, _, _, skipped) in datasets.items()},
        num_crops=processor.image_processor.num_crops, batch_size=batch_size, max_new_tokens=max_new_tokens,
        progress=not quiet, fmt=recorded_prompt_format(model_path, image_tags=image_tags, turns=turns))
    if not quiet:
        shown = f"[{split}] · {model_path}" if mixture else f"{datas[0]} [{split}] · {model_path}"
        Console().print(results_table(results, title=escape(shown)))
    if mixture:
        console.print(f"wrote {output}/<dataset>/predictions.jsonl and metrics.json for "
                      f"{', '.join(results)}, and {output / 'metrics.json'} by dataset")
    else:
        console.print(f"wrote {output / 'predictions.jsonl'} and {output / 'metrics.json'}")
    failed = sum(result.metrics["failed"] for result in results.values())
    if failed or any(skipped for *_, skipped in datasets.values()):
        raise SystemExit(1)


def _read_datasets(
    datas: tuple[Path, ...], split: str, limit: int | None, console: Console, *, output: Path, model_path: Path,
    base: str | None,
) -> dict[str, tuple[list[Path], list, Path, list[str]]]:
    """name → (files, records, images root, skipped lines) of every --data, each checked against --out before the
    model loads (minutes)."""
    from phi3v_train.dataset import source_names

    if len(set(datas)) != len(datas):
        raise click.UsageError("--data: the same dataset was given twice")
    inputs, may_hold = model_inputs(model_path, base)
    check_apart("--out", output, inputs, may_hold=may_hold)
    datasets = {}
    for name, data in zip(source_names(datas), datas):
        files, records, images_root, skipped = read_split(data, split, limit, console, purpose="evaluate")
        check_apart("--out", output, data_inputs(data, files, images_root))
        datasets[name] = (files, records, images_root, skipped)
    return datasets
