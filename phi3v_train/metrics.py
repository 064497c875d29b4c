"""Evaluation metrics, pure Python: normalised exact match, ANLS and AUROC.

The original recipe scored ANLS case-sensitively, so "Paris" against "paris" counted as a miss; here every text
metric compares normalised strings. No sklearn: AUROC is the Mann-Whitney U statistic with average ranks for ties.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ANLS_THRESHOLD = 0.5
"""Biten et al. 2019: a normalised edit distance at or above τ scores 0 (the answer is judged wrong, not close)."""

_TRAILING_PUNCTUATION = ".,!?;:"


def normalize_text(text: str) -> str:
    """Lower case with runs of whitespace collapsed to one space and the ends trimmed (ANLS' normalisation).

    >>> normalize_text("  Hello \\n World ")
    'hello world'
    """
    return " ".join(text.split()).lower()


def normalize_answer(text: str) -> str:
    """:func:`normalize_text` plus trailing sentence punctuation removed, so "Yes." matches "yes".

    >>> normalize_answer(" Basketball Dunk. ")
    'basketball dunk'
    """
    return normalize_text(text).rstrip(_TRAILING_PUNCTUATION + " ")


def exact_match(prediction: str, references: Iterable[str]) -> bool:
    """Whether the normalised prediction equals any normalised reference."""
    predicted = normalize_answer(prediction)
    return any(predicted == normalize_answer(ref) for ref in references)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def nls(prediction: str, reference: str, *, threshold: float = ANLS_THRESHOLD) -> float:
    """Normalised Levenshtein similarity of one pair after :func:`normalize_text`, 0 when the distance reaches τ.

    >>> nls("Helo", "hello")
    0.8
    """
    a, b = normalize_text(prediction), normalize_text(reference)
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    distance = levenshtein(a, b) / longest
    return 0.0 if distance >= threshold else 1.0 - distance


def anls(prediction: str, references: Sequence[str], *, threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS of one question: the best :func:`nls` over all accepted answers (0 when there are none)."""
    return max((nls(prediction, ref, threshold=threshold) for ref in references), default=0.0)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive); ``None`` with only one class.

    Equals the probability that a random positive scores above a random negative, ties counting one half.

    >>> auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1])
    0.875
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    positives = sum(1 for label in labels if label == 1)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(scores)
    rank_sum = sum(rank for rank, label in zip(ranks, labels) if label == 1)
    u_statistic = rank_sum - positives * (positives + 1) / 2
    return u_statistic / (positives * negatives)


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values`` where tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        shared = (start + end) / 2 + 1
        for position in range(start, end + 1):
            ranks[order[position]] = shared
        start = end + 1
    return ranks


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean, ``None`` for no values (a metric with nothing to score is absent, not zero)."""
    return sum(values) / len(values) if values else None
