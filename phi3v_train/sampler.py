"""Length-grouped sample order: batches of similar real length, so little compute is spent on padding.

A sample's length is what the model sees — text tokens plus image tokens from each image's size (see
:func:`phi3v_train.dataset.sample_length`) — so a short question about a 16-crop document is known to be long.

The order is a pure function of (seed, epoch): shuffle everything, cut into mega-batches, sort each mega-batch by
length and cut it into *groups* of one global batch (the samples of one optimizer step), then shuffle the groups.
Because a group is a global batch — not a per-device one — the order does not depend on how many devices share it:
one process accumulating 4 micro-batches and 4 DDP ranks see the same samples at each step. The Trainer's data
loader cuts the order into per-device batches (each a slice of one sorted group, so of similar lengths) and, under
DDP, accelerate's ``BatchSamplerShard`` deals them round-robin, so each rank gets its own disjoint share and the
ranks of one micro-step get neighbouring slices: none waits long for a slower one. The group holding the longest
sample goes first, so an out-of-memory error shows up at step 1 rather than hours in.

A mixture of datasets (:class:`MixtureSampler`) first draws each epoch's samples — every dataset its weight's share
of an epoch as long as all datasets together, a smaller dataset repeated whole and topped up at random, a larger
one sampled without repeats — from the same (seed, epoch) generator, then groups them exactly as above, so batches
mix datasets and still hold similar lengths, and resume stays exact.

``order="file"`` (``run --order file``) gives the records in file order every epoch (a mixture: each dataset's draw,
dataset after dataset), to reproduce another tool's run or to debug one record; ``order="random"`` a plain shuffle
per (seed, epoch) without grouping. Both keep the global-batch cut, so the ranks share them as above.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator, Sequence
from typing import Literal

from torch.utils.data import Sampler

Order = Literal["length", "file", "random"]

MEGABATCH_GROUPS = 64
"""Groups per mega-batch: large enough to find similar lengths, small enough to keep the order random."""


class LengthGroupedSampler(Sampler[int]):
    """Deterministic per (seed, epoch) order of dataset indices, grouped by length (see module docstring).

    >>> sampler = LengthGroupedSampler([5, 50, 6, 49], batch_size=2, global_batch_size=2, seed=0)
    >>> sampler.batches(0)  # the longest group first
    [[1, 3], [2, 0]]
    """

    def __init__(
        self, lengths: Sequence[int], *, batch_size: int, global_batch_size: int, seed: int = 0,
        megabatch_groups: int = MEGABATCH_GROUPS, order: Order = "length",
    ) -> None:
        if order not in ("length", "file", "random"):
            raise ValueError(f"order must be length, file or random, got {order!r}")
        if batch_size < 1 or global_batch_size % batch_size:
            raise ValueError(f"global_batch_size {global_batch_size} must be a multiple of "
                             f"batch_size {batch_size} >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_size = global_batch_size
        self.seed = seed
        self.megabatch = self.group_size * megabatch_groups
        self.epoch = 0
        self.mode = order

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch, including the one a resume lands in."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def order(self, epoch: int) -> list[int]:
        """All indices in the order of ``epoch``."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        indices = self._draw(rng)
        if self.mode == "file":
            return indices
        rng.shuffle(indices)
        if self.mode == "random":
            return indices
        groups: list[list[int]] = []
        for start in range(0, len(indices), self.megabatch):
            chunk = sorted(indices[start : start + self.megabatch], key=lambda i: -self.lengths[i])
            groups += [chunk[k : k + self.group_size] for k in range(0, len(chunk), self.group_size)]
        # A short group in the middle would shift every later batch off its group; keep it last.
        tail = [groups.pop()] if groups and len(groups[-1]) < self.group_size else []
        rng.shuffle(groups)
        if groups:
            longest = max(range(len(groups)), key=lambda g: self.lengths[groups[g][0]])
            groups.insert(0, groups.pop(longest))
        return [i for group in groups + tail for i in group]

    def _draw(self, rng: random.Random) -> list[int]:
        """The dataset indices of one epoch, before shuffling: each sample once."""
        return list(range(len(self.lengths)))

    def ungrouped(self) -> "LengthGroupedSampler":
        """The same sampler without length grouping (random batches), to show what grouping saves."""
        plain = copy.copy(self)
        plain.group_size, plain.megabatch = self.batch_size, self.batch_size
        return plain

    def batches(self, epoch: int) -> list[list[int]]:
        """Per-device batches of ``epoch`` in the order the data loader cuts them."""
        order = self.order(epoch)
        return [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]

    def padding_fraction(self, epoch: int = 0) -> float:
        """Fraction of the token slots of ``epoch``'s batches that are padding."""
        return padding_fraction(self.lengths, self.batches(epoch))


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padding slots / all slots when each batch is right-padded to its longest sample.

    >>> padding_fraction([3, 5, 6], [[0, 1], [2]])  # (10 + 6 - 14) / 16
    0.125
    """
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    real = sum(lengths[i] for batch in batches for i in batch)
    return (slots - real) / slots if slots else 0.0


def rank_batches(batches: Sequence[Sequence[int]], *, world_size: int, rank: int) -> list[list[int]]:
    """The batches one rank trains on: accelerate's ``BatchSamplerShard`` gives rank r batches r, r+W, r+2W, …"""
    return [list(batch) for batch in batches[rank::world_size]]


def mixture_quotas(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Samples each dataset contributes to an epoch of ``sum(sizes)`` samples, in proportion to ``weights``.

    Rounded by largest remainder (ties to the earlier dataset), so the quotas add up to the epoch exactly.

    >>> mixture_quotas([1000, 200], [0.7, 0.3])
    [840, 360]
    """
    total, weight_sum = sum(sizes), float(sum(weights))
    exact = [total * weight / weight_sum for weight in weights]
    quotas = [int(share) for share in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas


class MixtureSampler(LengthGroupedSampler):
    """Length-grouped order over several datasets concatenated in ``sizes`` blocks, each drawn by its weight.

    An epoch has ``sum(sizes)`` samples; dataset k contributes ``mixture_quotas(sizes, weights)[k]`` of them: whole
    passes over it, then a random subset without repeats for the rest, drawn afresh every epoch.

    >>> sampler = MixtureSampler([5, 6, 7, 50], sizes=[3, 1], weights=[1, 1], batch_size=2, global_batch_size=2)
    >>> len(sampler), sorted(sampler.order(0)).count(3)  # the one-sample dataset fills half of the epoch
    (4, 2)
    """

    def __init__(
        self, lengths: Sequence[int], *, sizes: Sequence[int], weights: Sequence[float], batch_size: int,
        global_batch_size: int, seed: int = 0, megabatch_groups: int = MEGABATCH_GROUPS, order: Order = "length",
    ) -> None:
        super().__init__(lengths, batch_size=batch_size, global_batch_size=global_batch_size, seed=seed,
                         megabatch_groups=megabatch_groups, order=order)
        if sum(sizes) != len(self.lengths) or len(sizes) != len(weights) or min(sizes, default=0) < 1:
            raise ValueError(f"sizes {list(sizes)} must be positive, one per weight, and add up to {len(self.lengths)}")
        self.sizes, self.weights = list(sizes), list(weights)
        self.quotas = mixture_quotas(self.sizes, self.weights)

    def __len__(self) -> int:
        return sum(self.quotas)

    def _draw(self, rng: random.Random) -> list[int]:
        indices: list[int] = []
        offset = 0
        for size, quota in zip(self.sizes, self.quotas):
            passes, rest = divmod(quota, size)
            indices += list(range(offset, offset + size)) * passes
            indices += [offset + i for i in sorted(rng.sample(range(size), rest))]
            offset += size
        return indices
