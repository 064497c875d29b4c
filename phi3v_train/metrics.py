"""Evaluation metrics, pure Python: normalised exact match, ANLS and AUROC.

The original recipe scored ANLS case-sensitively, so "Paris" against "paris" counted as a miss; here every text
metric compares normalised strings. No sklearn: AUROC is the Mann-Whitney U statistic with average ranks for ties.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from schemas import BINARY_ANSWERS, Turn

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


# ---- which metrics a turn gets, from its record's task -----------------------------------------------------------

SCORED_TASKS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "binary": ("accuracy", "auroc"),
    "vqa": ("anls", "accuracy"),
}
"""Metrics per task; caption and chat get predictions only (no reference-based metric is meaningful for them)."""


def references_of(turn: Turn, *, task: str) -> list[str]:
    """Every accepted answer of a turn: the assistant reply, then ``reference.answers``, then a binary label's word."""
    answers = [turn.assistant] if turn.assistant is not None else []
    if turn.reference is not None:
        answers += turn.reference.answers or []
        if task == "binary" and turn.reference.label is not None:
            answers.append(BINARY_ANSWERS[turn.reference.label])
    return list(dict.fromkeys(answers))  # de-duplicated, first occurrence wins


def binary_label(turn: Turn) -> int | None:
    """Ground truth of a binary turn: ``reference.label`` or, failing that, a yes/no assistant reply."""
    if turn.reference is not None and turn.reference.label is not None:
        return turn.reference.label
    answer = normalize_answer(turn.assistant or "")
    return BINARY_ANSWERS.index(answer) if answer in BINARY_ANSWERS else None


def score_turn(prediction: str, turn: Turn, *, task: str, p_yes: float | None = None) -> dict[str, Any]:
    """Per-turn fields of ``predictions.jsonl``: references and the task's metrics (none for unlabeled turns)."""
    references = references_of(turn, task=task)
    row: dict[str, Any] = {"references": references}
    metrics = SCORED_TASKS.get(task, ())
    if not references or not metrics:
        return row
    row["correct"] = exact_match(prediction, references)
    if "anls" in metrics:
        row["anls"] = anls(prediction, references)
    if "auroc" in metrics:
        row["label"] = binary_label(turn)
        row["p_yes"] = p_yes
    return row


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-task metrics from ``predictions.jsonl`` rows (each with ``task`` and :func:`score_turn`'s fields)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    summary: dict[str, dict[str, Any]] = {}
    for task, task_rows in sorted(by_task.items()):
        scored = [row for row in task_rows if "correct" in row]
        entry: dict[str, Any] = {"turns": len(task_rows), "scored": len(scored)}
        metrics = SCORED_TASKS.get(task, ())
        if "accuracy" in metrics:
            entry["accuracy"] = mean([float(row["correct"]) for row in scored])
        if "anls" in metrics:
            entry["anls"] = mean([row["anls"] for row in scored])
        if "auroc" in metrics:
            pairs = [(row["p_yes"], row["label"]) for row in scored
                     if row.get("p_yes") is not None and row.get("label") is not None]
            entry["auroc"] = auroc([p for p, _ in pairs], [label for _, label in pairs]) if pairs else None
        summary[task] = entry
    return summary
