"""Metrics on cases computed by hand."""

from __future__ import annotations

import pytest

from phi3v_train.metrics import anls, auroc, exact_match, levenshtein, mean, nls, normalize_answer, normalize_text


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
