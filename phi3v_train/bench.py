"""Training speed on a synthetic DocVQA-shaped workload, reported the way the original Phi-3.5-vision recipe did.

Workload: one document page per sample (default 1320×2200, a white page with dark text-like lines, which the HD
transform at ``num_crops`` 16 turns into a 5×3 grid + global view = 16 crops and 2,377 image tokens) and a question
padded with text so each sequence is ``seq_len`` tokens (default 2,443, the average the original benchmark reported).
Each (strategy, attention) pair runs ``warmup`` untimed and ``steps`` timed optimizer steps on the same batch.

MFU and the FLOP count are defined in :mod:`phi3v_train.flops` (the formula is printed with every table).
"""

from __future__ import annotations

import gc
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from phi3v_data.io import atomic_write
from phi3v_data.prompt import Encoded, encode_record
from phi3v_data.tokens import CROP, num_image_tokens
from phi3v_train.flops import (
    FORMULA, count_params, device_peak_flops, flop_parts, mfu, training_flops,
)
from schemas import Record
from schemas.errors import UserError

Strategy = Literal["full", "frozen-vision", "lora", "qlora"]
Attention = Literal["sdpa", "flash_attention_2"]
STRATEGIES: tuple[Strategy, ...] = ("full", "frozen-vision", "lora", "qlora")
DOCVQA_MEAN_TOKENS = 2443


class BenchOptions(BaseModel):
    """What to measure; every field is a ``phi3v-train bench`` flag."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["tiny", "phi-3.5-vision"] = "tiny"
    model: Path | None = Field(default=None, description="Existing checkpoint to use instead of building the preset.")
    strategies: list[Strategy] = Field(default_factory=lambda: list(STRATEGIES))
    attention: list[Attention] = Field(default_factory=lambda: ["sdpa", "flash_attention_2"])
    batch: int = Field(default=1, ge=1)
    steps: int = Field(default=3, ge=1)
    warmup: int = Field(default=1, ge=0)
    num_crops: int = Field(default=16, ge=1)
    seq_len: int = Field(default=DOCVQA_MEAN_TOKENS, ge=16)
    page: tuple[int, int] = (1320, 2200)
    gradient_checkpointing: bool = False
    peak_flops: float | None = Field(default=None, gt=0)
    seed: int = 0


def synthetic_page(width: int, height: int, *, seed: int = 0) -> Image.Image:
    """A white page with rows of dark word-like bars: compresses and resizes like a scanned document."""
    import random

    rng = random.Random(seed)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    margin, line = width // 12, max(height // 60, 8)
    for top in range(margin, height - margin, line * 2):
        x = margin
        while x < width - margin:
            word = rng.randint(line, line * 5)
            draw.rectangle([x, top, min(x + word, width - margin), top + line], fill=(rng.randint(0, 60),) * 3)
            x += word + line
    return page


def fit_prompt(record_for: Callable[[str], Record], *, encode: Callable[[str], list[int]], image_tokens: list[int],
               bos_id: int | None, target: int) -> Encoded:
    """Encoding of the longest ``record_for(filler)`` that is at most ``target`` tokens (binary search on words)."""
    words = "the invoice total date page form number amount address".split()
    filler = lambda n: " ".join(words[i % len(words)] for i in range(n))  # noqa: E731
    length = lambda n: len(encode_record(record_for(filler(n)), encode=encode,  # noqa: E731
                                         image_tokens=image_tokens, bos_id=bos_id))
    low, high = 0, max(target, 1)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if length(mid) <= target else (low, mid - 1)
    return encode_record(record_for(filler(low)), encode=encode, image_tokens=image_tokens, bos_id=bos_id)


def docvqa_record(filler: str) -> Record:
    """One synthetic DocVQA question about one page; ``filler`` pads the prompt to the target length."""
    user = f"<|image_1|>\n{filler}\nWhat is the total amount due on this invoice?".lstrip()
    return Record.model_validate({
        "id": "bench", "source": "bench", "task": "vqa",
        "conversations": [{"images": ["page.png"], "user": user, "assistant": "$1,234.56"}],
    })


@dataclass
class Workload:
    """One synthetic batch and what it contains."""

    inputs: dict
    crops: int
    seq_len: int
    image_tokens: int


@dataclass
class BenchRow:
    strategy: str
    attention: str
    batch: int
    step_seconds: float | None = None
    images_per_s: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gb: float | None = None
    trainable: int = 0
    note: str = ""


@dataclass
class BenchReport:
    device: str
    gpus: int
    date: str
    preset: str
    workload: str
    peak_flops: float | None
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def make_workload(checkpoint: Path, options: BenchOptions, device: str) -> Workload:
    """Process ``batch`` synthetic pages and build prompts of ``seq_len`` tokens for them."""
    import torch

    from phi3v_train.model import Phi3VProcessor, text_encoding

    processor = Phi3VProcessor.from_pretrained(checkpoint, num_crops=options.num_crops)
    pages = [synthetic_page(*options.page, seed=options.seed + i) for i in range(options.batch)]
    images = processor.image_processor(pages, return_tensors="pt")
    n_tokens = num_image_tokens(*options.page, options.num_crops)
    encode, bos = text_encoding(processor.tokenizer)
    encoded = fit_prompt(docvqa_record, encode=encode, image_tokens=[n_tokens], bos_id=bos,
                         target=options.seq_len)
    input_ids = torch.tensor([encoded.input_ids] * options.batch, device=device)
    crops = sum(int(h) // CROP * (int(w) // CROP) + 1 for h, w in images["image_sizes"].tolist())
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": images["pixel_values"].to(device),
        "image_sizes": images["image_sizes"].to(device),
        "labels": torch.tensor([encoded.labels] * options.batch, device=device),
    }
    return Workload(inputs, crops, len(encoded), n_tokens)


def prepare_model(checkpoint: Path, strategy: Strategy, attention: Attention, *, device: str,
                  gradient_checkpointing: bool) -> object:
    """Load the checkpoint and choose its trainable parameters exactly as ``phi3v-train run`` does."""
    from phi3v_train.config import TrainConfig
    from phi3v_train.model.compat import enable_checkpointing
    from phi3v_train.strategies import apply_strategy, load_base_model

    config = TrainConfig(
        data=checkpoint, model=str(checkpoint), output=checkpoint, strategy=strategy, attention=attention,
        precision="bf16" if device.startswith("cuda") else "fp32", gradient_checkpointing=gradient_checkpointing,
    )
    model = load_base_model(config)
    if strategy != "qlora":  # a quantized model is placed by bitsandbytes when it loads
        model.to(device)
    model = apply_strategy(model, config)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model


def time_steps(model: object, inputs: dict, *, steps: int, warmup: int, device: str) -> float:
    """Seconds per optimizer step (AdamW over the trainable parameters), after ``warmup`` untimed steps.

    On CUDA the forward runs under bf16 autocast, as training does; on CPU in fp32.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # as the trainer's bf16 mixed precision
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - start) / steps


def measure(checkpoint: Path, strategy: Strategy, attention: Attention, work: Workload, options: BenchOptions, *,
            base: dict[str, int], config: object, device: str, peak: float | None) -> BenchRow:
    """Prepare one configuration, time it, and turn the time into throughput and MFU."""
    import torch

    from phi3v_train.distributed import peak_memory_gb

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = prepare_model(checkpoint, strategy, attention, device=device,
                          gradient_checkpointing=options.gradient_checkpointing)
    model.train()
    try:
        seconds = time_steps(model, work.inputs, steps=options.steps, warmup=options.warmup, device=device)
        trainable = count_params(model, trainable_only=True)
    finally:
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    parts = flop_parts(config, base, trainable, crops=work.crops, batch=options.batch, seq_len=work.seq_len)
    return BenchRow(
        strategy, attention, options.batch, seconds, options.batch / seconds, options.batch * work.seq_len / seconds,
        mfu(training_flops(parts), seconds, peak), peak_memory_gb(device), sum(trainable.values()),
    )


def attention_available(attention: Attention, device: str) -> str | None:
    """Why ``attention`` cannot run here, or None when it can."""
    if attention != "flash_attention_2":
        return None
    if not device.startswith("cuda"):
        return "flash-attention needs a CUDA device"
    try:
        import flash_attn  # noqa: F401  (only whether it imports matters)
    except ImportError:
        return "flash-attn is not installed (pip install 'phi3v[flash]')"
    return None


def configurations(options: BenchOptions, device: str) -> tuple[list[tuple[Strategy, Attention]], list[str]]:
    """The (strategy, attention) pairs to run, and a note for each one that cannot run on this machine."""
    skipped: list[str] = []
    usable: list[Attention] = []
    for attention in options.attention:
        reason = attention_available(attention, device)
        if reason:
            skipped.append(f"{attention}: {reason}")
        else:
            usable.append(attention)
    runnable = [(strategy, attention) for strategy in options.strategies for attention in usable]
    return runnable, skipped


def default_preset() -> str:
    """The real size where a GPU can run it, the tiny model elsewhere."""
    import torch

    return "phi-3.5-vision" if torch.cuda.is_available() else "tiny"


def write_markdown(report: BenchReport, path: Path) -> None:
    """Write the table atomically (a crash never leaves half a table behind)."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(render_markdown(report))


class BenchError(UserError, RuntimeError):
    """The benchmark cannot run as asked (e.g. the full-size preset without a GPU)."""


@contextmanager
def checkpoint_for(options: BenchOptions) -> Iterator[Path]:
    """The given checkpoint, or a freshly built one (random weights) in a temporary directory."""
    if options.model is not None:
        yield options.model
        return
    from phi3v_train.model import create_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="phi3v-bench-") as tmp:
        yield create_tiny_checkpoint(Path(tmp) / "model", preset=options.preset, seed=options.seed)


def run_bench(options: BenchOptions, *, on_row: Callable[[BenchRow], None] | None = None) -> BenchReport:
    """Run every configuration; one that fails (out of memory, no 4-bit kernels…) becomes a row with a note."""
    import torch

    from phi3v_train.model import Phi3VConfig, Phi3VForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and options.preset != "tiny" and options.model is None:
        raise BenchError("the phi-3.5-vision preset needs a CUDA GPU; use --preset tiny on CPU")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    peak = options.peak_flops or (device_peak_flops(name) if device == "cuda" else None)
    torch.manual_seed(options.seed)
    with checkpoint_for(options) as checkpoint:
        config = Phi3VConfig.from_pretrained(checkpoint)
        with torch.device("meta"):
            base = count_params(Phi3VForCausalLM(config))
        work = make_workload(checkpoint, options, device)
        report = BenchReport(name, 1 if device == "cuda" else 0, time.strftime("%Y-%m-%d %H:%M %Z"),
                             model_label(options), describe_workload(options, work), peak)
        runnable, report.skipped = configurations(options, device)
        for strategy, attention in runnable:
            try:
                row = measure(checkpoint, strategy, attention, work, options, base=base, config=config,
                              device=device, peak=peak)
            except Exception as exc:  # a configuration that cannot run is reported, the others still run
                row = BenchRow(strategy, attention, options.batch, note=f"{type(exc).__name__}: {str(exc)[:160]}")
            report.rows.append(row)
            if on_row:
                on_row(row)
    return report


def model_label(options: BenchOptions) -> str:
    if options.model is None:
        return f"{options.preset} preset (random weights)"
    return f"checkpoint {options.model}"


def describe_workload(options: BenchOptions, work: Workload) -> str:
    width, height = options.page
    return (
        f"synthetic DocVQA: {width}×{height} page at num_crops {options.num_crops} → {work.crops // options.batch} "
        f"crops, {work.image_tokens} image tokens; {work.seq_len} tokens per sequence; batch {options.batch}; "
        f"{options.steps} timed steps after {options.warmup} warm-up"
    )


COLUMNS = ("training method", "GPUs", "flash attention", "batch", "throughput (img/s)", "speed-up",
           "peak memory (GB)", "tokens/s", "MFU")
def table_rows(report: BenchReport) -> list[list[str]]:
    """The table's cells; speed-up is relative to the first configuration that ran."""
    baseline = next((row.images_per_s for row in report.rows if row.images_per_s), None)
    gpus = str(report.gpus) if report.gpus else "0 (CPU)"
    out = []
    for row in report.rows:
        flash = "yes" if row.attention == "flash_attention_2" else "no (sdpa)"
        if row.images_per_s is None:
            out.append([row.strategy, gpus, flash, str(row.batch), "failed", "—", "—", "—", row.note])
            continue
        speedup = f"{row.images_per_s / baseline:.2f}×" if baseline else "—"
        mfu_cell = f"{row.mfu * 100:.3g}%" if row.mfu is not None else "n/a"
        out.append([row.strategy, gpus, flash, str(row.batch), f"{row.images_per_s:.3g}", speedup,
                    f"{row.peak_memory_gb:.2f}", f"{row.tokens_per_s:,.0f}", mfu_cell])
    return out


def render_markdown(report: BenchReport) -> str:
    """The speed table as markdown, with the machine, date, workload and formula above it."""
    lines = [
        "# Phi-3.5-vision training speed",
        "",
        f"- device: {report.device}; date: {report.date}; model: {report.preset}",
        f"- workload: {report.workload}",
        f"- {FORMULA}; peak = {f'{report.peak_flops:.3g} FLOP/s' if report.peak_flops else 'unknown (MFU n/a)'}",
        "- speed-up: throughput relative to the first row; peak memory: "
        + ("torch.cuda.max_memory_allocated" if report.gpus else "process peak RSS (cumulative over the rows)"),
        *[f"- skipped {note}" for note in report.skipped],
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *["| " + " | ".join(cells) + " |" for cells in table_rows(report)],
    ]
    return "\n".join(lines) + "\n"


def rich_table(report: BenchReport) -> object:
    from rich.table import Table

    table = Table(title=f"training speed — {report.device}", caption=report.workload)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("training method", "flash attention") else "right")
    for cells in table_rows(report):
        table.add_row(*cells)
    return table
