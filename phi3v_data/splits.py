"""Split names and split carving shared by the converters.

Training and evaluation look for ``train``, ``val`` and ``test``; releases call them otherwise (``dev_seen``,
``dev``, ``validation``, ``test1``). Converters write the canonical name and keep the release's name in each record's
``source_split`` and in the manifest, so nothing is lost and ``--eval-split val`` works on every dataset.

Carving (``--val-ratio``) moves whole groups (clips of one actor, rows about one image) out of train, spread over
the strata (classes) in proportion to their size, and as close to the requested share as whole groups allow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

CANONICAL = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
"""Release split names (as ``datasets`` reads them from file names) → the names training and evaluation use."""


def canonical_split(name: str) -> str:
    """``validation`` → ``val``; a name with no canonical meaning stays as it is (``test_seen``)."""
    return CANONICAL.get(name.lower(), name)


def output_names(present: Sequence[str], preferred: Mapping[str, str] = CANONICAL) -> dict[str, str]:
    """Output split of each release split: the first of ``present`` that ``preferred`` maps to a name takes it;
    the others keep their own name (Hateful Memes: ``dev_seen`` → ``val`` while ``dev_unseen`` stays).
    """
    def wanted(name: str) -> str:
        return preferred.get(name, preferred.get(name.lower(), name))

    names = {name: name for name in present if wanted(name) == name}  # a release's own "val" keeps it
    claimed = set(names)
    for name in present:
        if name not in names:
            names[name] = wanted(name) if wanted(name) not in claimed else name
            claimed.add(names[name])
    return {name: names[name] for name in present}


@dataclass(frozen=True, slots=True)
class Carved:
    """What a ``--val-ratio``/``--test-ratio`` carve moved: ``count`` of the ``total`` items of ``source``."""

    split: str
    count: int
    total: int
    requested: float
    source: str = "train"
    note: str | None = None

    @property
    def ratio(self) -> float:
        return self.count / self.total if self.total else 0.0

    def describe(self) -> str:
        """``val: 3 of 30 train items (10.0%, asked 10%)`` plus the note."""
        text = (f"{self.split}: {self.count} of {self.total} {self.source} items "
                f"({self.ratio:.1%}, asked {self.requested:.0%})")
        return f"{text} — {self.note}" if self.note else text


def carve_groups(
    groups: Mapping[tuple[str, str], Sequence[K]],
    ratio: float,
    *,
    seed: int,
    split: str,
    total: int | None = None,
    source: str = "train",
) -> tuple[set[K], Carved]:
    """Choose whole groups to move out of ``source``: their members and a :class:`Carved` saying what was taken.

    ``groups`` maps (stratum, group) → members. The target is ``round(ratio × total)`` members (``total`` defaults
    to all members), at least 1 when ``ratio`` > 0. Groups are taken one at a time from the stratum furthest below
    its share (``ratio × its size``): the first, in an order fixed by ``seed``, that brings the count closer to the
    target, until none does; every stratum keeps at least one group. ``ratio`` 0 takes nothing.
    """
    size = {key: len(members) for key, members in groups.items()}
    total = sum(size.values()) if total is None else total
    strata: dict[str, list[str]] = {}
    for stratum, group in sorted(groups, key=lambda key: _rank(seed, *key)):
        strata.setdefault(stratum, []).append(group)
    stratum_size = {s: sum(size[s, g] for g in names) for s, names in strata.items()}
    target = max(1, int(ratio * total + 0.5)) if ratio > 0 else 0
    taken: dict[str, int] = dict.fromkeys(strata, 0)
    moved: set[K] = set()
    count = 0
    while count < target:
        open_strata = [s for s, names in strata.items() if len(names) > 1]  # one group always stays
        order = sorted(open_strata, key=lambda s: (taken[s] - ratio * stratum_size[s], _rank(seed, s)))
        closer = ((s, g) for s in order for g in strata[s] if abs(count + size[s, g] - target) < abs(count - target))
        pick = next(closer, None)
        if pick is None and count == 0 and open_strata:  # nothing comes closer, but an empty split helps no one
            pick = min(((s, g) for s in open_strata for g in strata[s]), key=lambda sg: (size[sg], _rank(seed, *sg)))
        if pick is None:
            break
        pick, group = pick
        strata[pick].remove(group)
        moved.update(groups[pick, group])
        taken[pick] += size[pick, group]
        count += size[pick, group]
    want = int(ratio * total + 0.5)
    note = None
    if target and not count:
        note = (f"nothing to carve: no {source} items" if not total
                else f"no {split}: each class has one {source} group, which stays in {source}")
    elif count and not want:
        note = f"{ratio:.0%} of {total} rounds to 0; {count} taken so that {split} is not empty"
    elif count != want:
        note = f"whole groups: the closest to {want} they allow"
    return moved, Carved(split, count, total, ratio, source, note)


def carve_splits(
    groups: Mapping[tuple[str, str], Sequence[K]],
    ratios: Mapping[str, float],
    *,
    seed: int,
    source: str = "train",
) -> tuple[dict[K, str], list[Carved]]:
    """Carve each split of ``ratios`` (in order: ``{"val": 0.1, "test": 0.1}``) out of ``source`` with
    :func:`carve_groups`: the split of every member moved, and one :class:`Carved` per split asked for (ratio > 0).

    Every share is of all the members (so val and test of 10% each are 10% of the whole), and a later split chooses
    only among the groups an earlier one left. The converters' one carving loop (video: clips by actor group; folder:
    single images), so ``--val-ratio``/``--test-ratio`` mean the same everywhere.
    """
    total = sum(len(members) for members in groups.values())
    moved: dict[K, str] = {}
    carved: list[Carved] = []
    for split, ratio in ratios.items():
        if ratio <= 0:
            continue
        left = {key: members for key, members in groups.items() if not any(m in moved for m in members)}
        keys, info = carve_groups(left, ratio, seed=seed, split=split, total=total, source=source)
        moved.update(dict.fromkeys(keys, split))
        carved.append(info)
    return moved, carved


def _rank(seed: int, *parts: str) -> str:
    return hashlib.sha256("/".join((str(seed), *parts)).encode()).hexdigest()
