"""``phi3v-train predict``: answer one question about images, or every record of a file, without scoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from phi3v_train.cli.inputs import data_inputs, load_failures, model_inputs, read_split
from phi3v_train.cli.options import attention_option, precision_option, prompt_options


@click.command("predict")
@click.argument("question", required=False)
@click.option("--model", "model_source", required=True,
              help="RUN/final (checkpoint or LoRA adapter), a run dir, a merged export, or a Hub id.")
@click.option("--base", default=None, help="Base model of an adapter [default: the one it records].")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image the question is about; repeat for several (numbered <|image_1|>, … in order).")
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              help="Answer every record of a converted .jsonl file (or dataset directory, with --split) instead.")
@click.option("--split", default="test", show_default=True, help="With --data DIR: which <name>_<split>.jsonl.")
@click.option("--out", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="With --data: predictions .jsonl.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="With --data: only the first N records.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@prompt_options
@click.option("--do-sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=click.FloatRange(min=0), default=None, help="Sampling temperature (> 0 samples).")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=None, help="Nucleus sampling.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@precision_option(default=None, help="[default: bf16 on GPU, fp32 on CPU]")
@attention_option(default="sdpa", show_default=True, help="flash = flash_attention_2")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option("--json", "as_json", is_flag=True, help="Print {answer, p_yes} as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def predict(question: str | None, model_source: str, base: str | None, images: tuple[Path, ...], data: Path | None,
            split: str, output: Path | None, limit: int | None, batch_size: int, num_crops: int | None,
            max_new_tokens: int, image_tags: str | None, turns: str | None, do_sample: bool, temperature: float | None,
            top_p: float | None, seed: int, precision: str | None, attention: str, device: str | None, as_json: bool,
            quiet: bool) -> None:
    """Answer QUESTION about --image files, or every record of --data into --out (no scoring).

    Greedy by default; --do-sample / --temperature / --top-p sample (reproducibly, with --seed). Each answer has
    p_yes, P(yes) against P(no) at its first token: for binary tasks the score to rank by (a Hateful Memes
    submission's probability). Exits 1 when a record could not be answered (its row holds the error).

    \b
    Example:
        phi3v-train predict --model runs/docvqa-lora/final --image page.png --num-crops 16 "What is the total?"
        phi3v-train predict --model models/memes-merged --data data/memes/memes_test.jsonl --out preds.jsonl
    """
    if (question is None) == (data is None):
        raise click.UsageError("give either a QUESTION (with --image files) or --data FILE.jsonl --out FILE")
    if data is not None and (images or output is None):
        raise click.UsageError("--data answers the records' own images into --out: drop --image, give --out")
    from phi3v_data.cli.errors import is_verbose
    from phi3v_train.cli.quiet import quiet_libraries

    quiet_libraries(verbose=is_verbose(click.get_current_context()))  # the answer, not loading bars and deprecations
    import torch  # not transformers.set_seed: its module imports peft, and so bitsandbytes (3 s)

    from phi3v_train.loading import LoadError, device_and_precision
    from phi3v_train.predict import Predictor, generation_settings

    try:  # the defaults first: flash attention with the GPU's default bf16 is fine
        device, precision = device_and_precision(device, precision, attention)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    console = Console(stderr=True, soft_wrap=True)
    if data is not None:
        records, images_root, problems = _read_records(data, split, limit, console, output=output, model=model_source,
                                                       base=base)
    with load_failures(f"--model {model_source}", LoadError, OSError):  # OSError: a file transformers could not read
        predictor = Predictor.load(model_source, base=base, device=device, precision=precision, attention=attention,
                                   num_crops=num_crops, max_new_tokens=max_new_tokens, image_tags=image_tags,
                                   turns=turns,
                                   generation=generation_settings(do_sample=do_sample, temperature=temperature,
                                                                  top_p=top_p))
    torch.manual_seed(seed)  # sampling draws from torch's generator only (every device)
    if data is None:
        _answer_question(predictor, question, images, as_json=as_json)
        return
    rows = predictor.predict_records(records, images_root=images_root, batch_size=batch_size, progress=not quiet)
    _write_rows(rows, output, console)
    if problems:
        raise SystemExit(1)


def _answer_question(predictor: Any, question: str, images: tuple[Path, ...], *, as_json: bool) -> None:
    try:
        answer = predictor.answer(question, images=images)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"answer": answer.text, "p_yes": answer.p_yes}) if as_json else answer.text)


def _write_rows(rows: list[dict[str, Any]], output: Path, console: Console) -> None:
    """--out, atomically; exit 1 when a record could not be answered (its row holds the error)."""
    from phi3v_data.io import write_jsonl

    write_jsonl(output, rows)
    failed = sum("error" in row for row in rows)
    console.print(f"wrote {len(rows)} predictions to {output}" + (f" ({failed} failed: see 'error')" if failed else ""))
    if failed:
        raise SystemExit(1)


def _read_records(data: Path, split: str, limit: int | None, console: Console, *, output: Path, model: str,
                  base: str | None) -> tuple[list, Path, list[str]]:
    """(records, images root, skipped lines) of --data, with --out checked apart from everything read."""
    from phi3v_data.cli.errors import check_apart

    files, records, images_root, problems = read_split(data, split, limit, console, purpose="answer")
    inputs, may_hold = model_inputs(model, base)
    check_apart("--out", output, [*data_inputs(data, files, images_root), *inputs], may_hold=may_hold)
    return records, images_root, problems
