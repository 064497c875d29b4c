"""Padding of the length-grouped sampler vs random batching, on realistic length mixes (target: ≤ 5% at batch 8).

Each mix draws sample shapes the way the original recipes' datasets look — image sizes, image counts, question and
answer lengths — and measures lengths exactly as training does: :func:`phi3v_data.prompt.encode_record` with each
image's token count from :func:`phi3v_data.tokens.num_image_tokens`. Text is counted at ~4 characters per token
(the usual BPE rule of thumb for English; the real tokenizer only shifts the text part, a small share of each
sequence). Padding = padded token slots / all token slots, each batch right-padded to its longest sample, over one
epoch of per-device batches (``phi3v_train.sampler.padding_fraction``). Run::

    .venv/bin/python benchmarks/bench_padding.py [--samples 4000] [--batch 8] [--global-batch 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from phi3v_data.prompt import encode_record
from phi3v_data.tokens import num_image_tokens
from phi3v_train.sampler import LengthGroupedSampler, padding_fraction
from schemas import Record

TARGET = 0.05
WORDS = "the of and what is this document page form total date name amount shown in picture which left right".split()


@dataclass(frozen=True)
class Shape:
    """One synthetic sample: image sizes, question and answer word counts."""

    images: list[tuple[int, int]]
    question_words: int
    answer_words: int


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(words, 1)))


def length_of(shape: Shape, *, num_crops: int, rng: random.Random) -> int:
    """Sequence length of a sample of this shape, as the collator will build it."""
    record = Record.model_validate({
        "id": "x", "conversations": [{
            "images": [f"{k}.jpg" for k in range(len(shape.images))],
            "user": _text(rng, shape.question_words), "assistant": _text(rng, shape.answer_words),
        }],
    })
    tokens = [num_image_tokens(w, h, num_crops) for w, h in shape.images]
    return len(encode_record(record, encode=lambda s: [0] * max(1, round(len(s) / 4)), image_tokens=tokens, bos_id=1))


def docvqa(rng: random.Random) -> Shape:
    """Scanned pages: mostly letter/A4 portrait at 100–300 dpi, some odd crops and landscape sheets."""
    width = rng.randint(750, 2550)
    aspect = rng.choices([1.294, 1.414, rng.uniform(0.6, 2.2)], weights=[50, 25, 25])[0]
    return Shape([(width, int(width * aspect))], rng.randint(4, 20), rng.choice([1, 1, 2, 2, 3, 5, 8]))


def hateful_memes(rng: random.Random) -> Shape:
    """Meme images of assorted sizes and aspect ratios; the prompt carries the meme text; yes/no answers."""
    width = rng.randint(300, 1100)
    return Shape([(width, int(width * rng.uniform(0.5, 1.6)))], rng.randint(15, 60), 1)


def nlvr2(rng: random.Random) -> Shape:
    """Two photos per sample (web images, varied sizes) and a statement to judge true/false."""
    images = [(rng.randint(250, 1200), rng.randint(200, 1000)) for _ in range(2)]
    return Shape(images, rng.randint(8, 30), 1)


def ucf101(rng: random.Random) -> Shape:
    """Eight 320×240 frames of a clip and a fixed class-list prompt: lengths hardly vary."""
    return Shape([(320, 240)] * 8, rng.randint(300, 310), rng.randint(1, 4))


def instruction_mix(rng: random.Random) -> Shape:
    """Chat-style instruction data: 0–3 images of any size, answers from one word to long paragraphs."""
    images = [(rng.randint(200, 2000), rng.randint(200, 2000)) for _ in range(rng.choice([0, 1, 1, 1, 2, 3]))]
    return Shape(images, rng.randint(5, 120), int(rng.lognormvariate(3.5, 1.0)))


MIXES: dict[str, tuple[Callable[[random.Random], Shape], int]] = {
    "DocVQA (num_crops 16)": (docvqa, 16),
    "hateful memes (num_crops 16)": (hateful_memes, 16),
    "NLVR2 (num_crops 4)": (nlvr2, 4),
    "UCF-101, 8 frames (num_crops 4)": (ucf101, 4),
    "instruction mix (num_crops 4)": (instruction_mix, 4),
}


def measure(lengths: list[int], *, batch: int, global_batches: list[int], seed: int) -> list[float]:
    """Padding fractions over one epoch: random batching, then length-grouped at each global batch size.

    The sampler sorts within groups of one global batch (one optimizer step) and the loader cuts those into
    per-device batches of ``batch``, so a larger global batch can only help.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    shuffled = [order[k : k + batch] for k in range(0, len(order), batch)]
    grouped = [LengthGroupedSampler(lengths, batch_size=batch, global_batch_size=size, seed=seed).padding_fraction(0)
               for size in global_batches]
    return [padding_fraction(lengths, shuffled), *grouped]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="Samples per mix (one epoch).")
    parser.add_argument("--batch", type=int, default=8, help="Per-device batch size.")
    parser.add_argument("--global-batch", type=int, action="append", default=None,
                        help="Global batch sizes (samples per optimizer step) to try [default: batch and 8×batch].")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    global_batches = args.global_batch or [args.batch, 8 * args.batch]

    table = Table(title=f"padding at per-device batch {args.batch}, {args.samples} samples per mix")
    grouped_columns = [f"grouped, global {size}" for size in global_batches]
    for column in ("length mix", "mean len", "p95 len", "max len", "random batches", *grouped_columns,
                   f"≤{TARGET:.0%}"):
        table.add_column(column, justify="left" if column == "length mix" else "right")
    worst = 0.0
    for name, (draw, num_crops) in MIXES.items():
        rng = random.Random(args.seed)
        lengths = [length_of(draw(rng), num_crops=num_crops, rng=rng) for _ in range(args.samples)]
        shuffled, *grouped = measure(lengths, batch=args.batch, global_batches=global_batches, seed=args.seed)
        worst = max(worst, *grouped)
        p95 = statistics.quantiles(lengths, n=20)[-1]
        table.add_row(name, f"{statistics.fmean(lengths):,.0f}", f"{p95:,.0f}", f"{max(lengths):,}",
                      f"{shuffled:.1%}", *(f"{g:.2%}" for g in grouped), "yes" if max(grouped) <= TARGET else "NO")
    Console(width=120).print(table)
    print(f"worst length-grouped padding {worst:.2%} (target ≤ {TARGET:.0%}); per-device batch {args.batch}, "
          f"global batch {'/'.join(map(str, global_batches))}, {args.samples} samples per mix")


if __name__ == "__main__":
    main()
