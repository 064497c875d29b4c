"""Metrics on cases computed by hand."""

from __future__ import annotations

import pytest

from phi3v_train.metrics import (
    anls,
    auroc,
    binary_label,
    exact_match,
    levenshtein,
    mean,
    nls,
    normalize_answer,
    normalize_text,
    references_of,
    score_turn,
    summarize,
)
from schemas import Reference, Turn


def test_levenshtein_classic_pairs() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2


def test_normalisation() -> None:
    assert normalize_text("  The \t Cat\n") == "the cat"
    assert normalize_answer("Basketball  Dunk!") == "basketball dunk"
    assert normalize_answer("Yes. ") == "yes"
    assert normalize_answer("C++") == "c++"  # only sentence punctuation goes


def test_exact_match_normalises_case_space_and_trailing_punctuation() -> None:
    assert exact_match("Yes.", ["yes"])
    assert exact_match(" basketball   DUNK ", ["Archery", "Basketball Dunk"])
    assert not exact_match("no", ["yes"])
    assert not exact_match("C", ["C++"])
    assert not exact_match("yes", [])


def test_anls_takes_best_reference() -> None:
    # "hello" vs "hello world": distance 6/11 >= 0.5 -> 0; vs "helo": distance 1/5 -> 1 - 0.2 = 0.8
    assert nls("Hello", "hello world") == 0.0
    assert anls("Hello", ["hello world", "helo"]) == pytest.approx(0.8)


def test_anls_threshold_edge() -> None:
    assert nls("ab", "ac") == 0.0  # distance exactly 0.5 scores 0
    assert nls("abc", "abd") == pytest.approx(2 / 3)  # distance 1/3 is below 0.5
    assert nls("abcd", "abce") == pytest.approx(0.75)


def test_anls_is_case_and_whitespace_insensitive() -> None:
    assert anls("  PARIS  france", ["paris france"]) == 1.0
    assert nls("Paris", "paris") == 1.0


def test_anls_empty_strings() -> None:
    assert nls("", "") == 1.0
    assert nls("", "abc") == 0.0
    assert nls("   ", "") == 1.0
    assert anls("x", []) == 0.0


def test_auroc_with_ties_is_mann_whitney() -> None:
    # positive 0.3 ties both negatives (0.5 + 0.5), positive 0.6 beats both (2) -> 3 / 4
    assert auroc([0.3, 0.3, 0.6, 0.3], [0, 1, 1, 0]) == 0.75
    assert auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == 0.875


def test_auroc_extremes_and_one_class() -> None:
    assert auroc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    assert auroc([0.9, 0.2, 0.1], [0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5], [0, 1]) == 0.5
    assert auroc([0.1, 0.2], [1, 1]) is None
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        auroc([0.1, 0.2], [1])


def test_mean_of_nothing_is_absent() -> None:
    assert mean([]) is None
    assert mean([1.0, 0.0, 0.5]) == 0.5


# ---- metric selection by task ------------------------------------------------------------------------------------


def test_references_gather_assistant_answers_and_label() -> None:
    turn = Turn(user="q", assistant="Yes", reference=Reference(answers=["Yes", "yep"], label=1))
    assert references_of(turn, task="binary") == ["Yes", "yep", "yes"]
    assert references_of(turn, task="vqa") == ["Yes", "yep"]
    assert references_of(Turn(user="q"), task="vqa") == []


def test_binary_label_from_reference_or_answer() -> None:
    assert binary_label(Turn(user="q", assistant="No.")) == 0
    assert binary_label(Turn(user="q", assistant="no", reference=Reference(label=1))) == 1
    assert binary_label(Turn(user="q", assistant="maybe")) is None


def test_score_turn_picks_metrics_by_task() -> None:
    vqa = Turn(user="q", assistant="helo", reference=Reference(answers=["hello world"]))
    assert score_turn("Hello", vqa, task="vqa") == {"references": ["helo", "hello world"], "correct": False,
                                                    "anls": pytest.approx(0.8)}
    cls = Turn(user="q", assistant="Archery")
    assert score_turn("archery.", cls, task="classification") == {"references": ["Archery"], "correct": True}
    binary = Turn(user="q", assistant="no")
    assert score_turn("yes", binary, task="binary", p_yes=0.7) == {"references": ["no"], "correct": False, "label": 0,
                                                                   "p_yes": 0.7}
    assert score_turn("a cat", Turn(user="q", assistant="a dog"), task="caption") == {"references": ["a dog"]}
    assert score_turn("Archery", Turn(user="q"), task="classification") == {"references": []}


def test_summarize_per_task() -> None:
    rows = [
        {"task": "binary", "correct": True, "label": 1, "p_yes": 0.9},
        {"task": "binary", "correct": False, "label": 0, "p_yes": 0.6},
        {"task": "binary", "correct": True, "label": 0, "p_yes": 0.2},
        {"task": "binary"},  # unlabeled: counted, not scored
        {"task": "vqa", "correct": True, "anls": 1.0},
        {"task": "vqa", "correct": False, "anls": 0.5},
        {"task": "chat"},
    ]
    assert summarize(rows) == {
        "binary": {"turns": 4, "scored": 3, "accuracy": pytest.approx(2 / 3), "auroc": 1.0},
        "chat": {"turns": 1, "scored": 0},
        "vqa": {"turns": 2, "scored": 2, "accuracy": 0.5, "anls": 0.75},
    }


def test_summarize_unlabeled_only_has_no_values() -> None:
    assert summarize([{"task": "classification"}]) == {"classification": {"turns": 1, "scored": 0, "accuracy": None}}
