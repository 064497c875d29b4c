"""Length-grouped sampler: deterministic, complete, grouped by global batch, DDP shards, padding it saves."""

from __future__ import annotations

import random

import pytest

from phi3v_train.sampler import LengthGroupedSampler, padding_fraction, rank_batches

LENGTHS = [10, 80, 20, 70, 30, 60, 40, 50, 90]  # index i has a distinct length


def test_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    lengths = [(i * 37) % 101 for i in range(40)]
    sampler = LengthGroupedSampler(lengths, batch_size=2, global_batch_size=4, seed=3, megabatch_groups=2)
    assert sorted(sampler.order(0)) == list(range(40))
    same = LengthGroupedSampler(lengths, batch_size=2, global_batch_size=4, seed=3, megabatch_groups=2)
    assert sampler.order(0) == same.order(0)
    assert sampler.order(0) != sampler.order(1)
    for k in range(0, 40, 4):  # each mega-batch of 8 is sorted, then cut into groups of 4: each descending
        group = [lengths[i] for i in sampler.order(0)[k : k + 4]]
        assert group == sorted(group, reverse=True)
    sampler.set_epoch(1)
    assert list(sampler) == sampler.order(1)


def test_groups_are_sorted_global_batches_longest_first_short_group_last() -> None:
    # 9 samples, global batch 4: after sorting by length (descending) the groups are
    # {8, 1, 3, 5} (90..60), {7, 6, 4, 2} (50..20) and the short tail {0} (10), which must stay last.
    for epoch in range(5):
        order = LengthGroupedSampler(LENGTHS, batch_size=2, global_batch_size=4, seed=0).order(epoch)
        assert order[:4] == [8, 1, 3, 5]  # the group holding the longest sample first: OOM shows at step 1
        assert order[4:8] == [7, 6, 4, 2]
        assert order[8:] == [0]


def test_order_does_not_depend_on_world_size() -> None:
    # 1 process x accumulation 2 and 2 ranks x accumulation 1 share one global batch of 4: same samples per step.
    single = LengthGroupedSampler(LENGTHS, batch_size=2, global_batch_size=4, seed=5)
    assert single.batches(0) == [[8, 1], [3, 5], [7, 6], [4, 2], [0]]
    ranks = [rank_batches(single.batches(0), world_size=2, rank=r) for r in (0, 1)]
    assert ranks == [[[8, 1], [7, 6], [0]], [[3, 5], [4, 2]]]  # disjoint shares, step by step the same samples
    assert sorted(i for batches in ranks for b in batches for i in b) == list(range(len(LENGTHS)))


def test_padding_fraction_by_hand() -> None:
    assert padding_fraction([3, 5, 6], [[0, 1], [2]]) == pytest.approx(2 / 16)
    sampler = LengthGroupedSampler([4, 8, 2, 6], batch_size=2, global_batch_size=2, seed=0)
    assert sampler.padding_fraction(0) == pytest.approx((2 + 2) / (16 + 8))  # [8,6] and [4,2]


def test_padding_on_a_realistic_length_mix() -> None:
    """Video frames (8 x 757 tokens) mixed with single documents at 16 crops and short photo questions."""
    rng = random.Random(0)
    lengths = [rng.choice([8 * 757 + rng.randint(40, 120), 2845 + rng.randint(20, 400), 757 + rng.randint(10, 60)])
               for _ in range(2000)]
    grouped = LengthGroupedSampler(lengths, batch_size=8, global_batch_size=64, seed=0).padding_fraction(0)
    shuffled = LengthGroupedSampler(lengths, batch_size=8, global_batch_size=8, seed=0, megabatch_groups=1)
    random_batches = shuffled.padding_fraction(0)
    print(f"padding: length-grouped {grouped:.2%}, random batches {random_batches:.2%}")
    assert grouped < 0.02 < 0.3 < random_batches
