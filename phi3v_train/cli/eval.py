"""``phi3v-train eval``: answer a split greedily, score it by task, write predictions and metrics."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from phi3v_data.cli.errors import check_apart, check_writable, is_verbose, weights_problem
from phi3v_train.cli.options import attention_option, precision_option, prompt_options
from phi3v_train.cli.run_checks import quiet_libraries



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
def eval_(model_path: Path, base: str | None, datas: tuple[Path, ...], split: str, limit: int | None, batch_size: int, num_crops: int | None,
          max_new_tokens: int, image_tags: str | None, turns: str | None, precision: str | None, attn: str, device: str | None, output: Path,
          quiet: bool) -> None:
    """Evaluate a model on a converted split: accuracy, ANLS and AUROC by each record's task.

    Writes OUTPUT/predictions.jsonl (one row per turn) and OUTPUT/metrics.json. With several --data (a run's
    mixture), each dataset is scored on its own: OUTPUT/<name>/{predictions.jsonl,metrics.json}, and
    OUTPUT/metrics.json by dataset. Exits 1 when a record or turn could not be evaluated (each is reported and
    skipped).

    \b
    Example:
        phi3v-train eval --model runs/docvqa-lora/final --data data/docvqa --split val --num-crops 16 --out runs/docvqa-lora/eval
        phi3v-train eval --model runs/mix/final --data data/docvqa --data data/llava --num-crops 16 --out runs/mix/eval
    """
    check_writable("--out", output, directory=True)
    quiet_libraries(verbose=is_verbose(click.get_current_context()))
    from phi3v_train.data import source_names
    from phi3v_train.evaluate import datasets_table, evaluate, evaluate_datasets
    from phi3v_train.loading import LoadError, recorded_prompt_format
    from phi3v_train.predict import device_and_precision, load_model

    console = Console(stderr=True, soft_wrap=True)
    if len(set(datas)) != len(datas):
        raise click.UsageError("--data: the same dataset was given twice")
    problems: list[str] = []
    datasets = {}  # name → (files, records, images root, skipped lines), every one checked before the model loads
    inputs, may_hold = model_inputs(model_path, base)
    check_apart("--out", output, inputs, may_hold=may_hold)
    for name, data in zip(source_names(datas), datas):
        files, records, images_root, skipped = read_split(data, split, limit, console, purpose="evaluate")
        check_apart("--out", output, data_inputs(data, files, images_root))
        problems += skipped
        datasets[name] = (files, records, images_root, len(skipped))
    try:
        device, precision = device_and_precision(device, precision, attn)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        model, processor = load_model(model_path, base=base, device=device, precision=precision, attention=attn,
                                      num_crops=num_crops)
    except (LoadError, OSError) as exc:  # OSError: a checkpoint file transformers could not read
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        problem = weights_problem(exc)
        if problem is None:
            raise
        raise click.ClickException(f"--model {model_path}: {problem}") from None
    settings = {"num_crops": processor.image_processor.num_crops, "batch_size": batch_size,
                "max_new_tokens": max_new_tokens, "progress": not quiet,
                "fmt": recorded_prompt_format(model_path, image_tags=image_tags, turns=turns)}
    if len(datasets) == 1:
        [(files, records, images_root, _)] = datasets.values()
        result = evaluate(model, processor, records, images_root=images_root, output_dir=output, **settings,
                          meta={"model": str(model_path), "data": [str(f) for f in files], "skipped_lines": len(problems)})
        if not quiet:
            Console().print(result.table(title=escape(f"{datas[0]} [{split}] · {model_path}")))
        console.print(f"wrote {output / 'predictions.jsonl'} and {output / 'metrics.json'}")
        failed = result.metrics["failed"]
    else:
        results = evaluate_datasets(
            model, processor, {name: (records, root) for name, (_, records, root, _) in datasets.items()},
            output_dir=output, meta={"model": str(model_path), "split": split},
            dataset_meta={name: {"data": [str(f) for f in files], "skipped_lines": skipped}
                          for name, (files, _, _, skipped) in datasets.items()}, **settings)
        if not quiet:
            Console().print(datasets_table(results, title=escape(f"[{split}] · {model_path}")))
        console.print(f"wrote {output}/<dataset>/predictions.jsonl and metrics.json for "
                      f"{', '.join(results)}, and {output / 'metrics.json'} by dataset")
        failed = sum(result.metrics["failed"] for result in results.values())
    if problems or failed:
        raise SystemExit(1)


def read_split(
    data: Path, split: str, limit: int | None, console: Console, *, purpose: str
) -> tuple[list[Path], list, Path, list[str]]:
    """(files, records, images root, skipped lines) of one dataset's split for eval and predict: the lines that
    cannot be read are printed and returned, a missing split or no usable record is a message naming the files."""
    from phi3v_train.evaluate import find_split, load_records

    try:
        files, images_root = find_split(data, split)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    skipped: list[str] = []
    records = load_records(files, limit=limit, on_error=skipped.append)
    for problem in skipped:
        console.print(f"[yellow]skipped[/] {escape(problem)}")
    if not records:
        names = " ".join(map(str, files))
        raise click.ClickException(f"{names}: no valid records to {purpose}; run `phi3v-data validate {names}`")
    return files, records, images_root, skipped


def data_inputs(data: Path, files: list[Path], images_root: Path) -> list[tuple[str, Path]]:
    """What eval and predict read of one --data, for the output rule (the split files named first: the likeliest
    mistake is an --out that is one of them)."""
    return [*(("the split file", file) for file in files), ("--data", data), ("the images folder", images_root)]


def model_inputs(model: str | Path, base: str | None) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(inputs, may_hold) of --model and --base for the output rule: the checkpoint or adapter read and a local
    base; a run directory given as --model may hold the output (RUN/eval beside RUN/final), never be or contain it.
    A Hub id is no local input."""
    from phi3v_train.loading import LoadError, adapter_base, is_adapter, resolve_model_dir

    path = Path(model)
    if not path.exists():
        return [], []
    try:
        model_dir = resolve_model_dir(path)
    except LoadError:
        return [("--model", path)], []
    if model_dir == path:
        inputs, may_hold = [("--model", path)], []
    else:
        inputs, may_hold = [("the checkpoint", model_dir)], [("--model", path)]
    if base is not None or is_adapter(model_dir):
        try:
            base_path = Path(adapter_base(model_dir, base=base))
        except LoadError:
            return inputs, may_hold  # loading reports it
        if base_path.exists():
            inputs.append(("the base model directory", base_path))
    return inputs, may_hold
