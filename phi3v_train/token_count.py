"""How many ids a text gives, exactly as the tokenizer would, at a fraction of the tokenizer's cost.

Measuring a million records means counting the tokens of ~4M texts. The Rust tokenizer spends most of its time on
bookkeeping a count does not need (alignments of every normalised byte, offsets) and, for a SentencePiece-style BPE
(Llama, Phi-3: ``Metaspace`` without splitting), runs BPE over each text as one word, so its word cache never hits.
:class:`TokenCounter` reproduces that pipeline for the count alone: added tokens split the text (leftmost-longest,
with the whitespace an ``rstrip`` token takes), spaces become ``▁`` and the first piece gets one in front, and the BPE
model counts each word — the text cut before every run of ``▁`` — once, remembered after.

Cutting the text into words is exact only when no merge joins a token that ends in a non-``▁`` character to one
that starts with ``▁`` (then no merge ever crosses a cut, and BPE inside each word runs as it would in the whole).
:meth:`TokenCounter.of` checks that on the merges, and every other assumption on the tokenizer's JSON, and returns
None for a tokenizer of another shape: the caller then uses the tokenizer itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""Rust's ``char::is_whitespace`` (what an added token's ``rstrip`` strips), as a regex class body."""
SPACE = "\u2581"  # ▁
MAX_WORDS = 1_000_000
"""Words whose counts a counter remembers (emptied when full)."""


class _Words(dict):
    """word → number of tokens the BPE model makes of it, computed on first use."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def __missing__(self, word: str) -> int:
        if len(self) >= MAX_WORDS:
            self.clear()
        count = self[word] = len(self.model.tokenize(word))
        return count


class TokenCounter:
    """``len(tokenizer(text, add_special_tokens=False)["input_ids"])`` for the tokenizers :meth:`of` accepts."""

    def __init__(self, model: Any, added: list[dict[str, Any]]) -> None:
        patterns = [re.escape(token["content"]) + (f"[{WHITESPACE}]*" if token["rstrip"] else "")
                    for token in sorted(added, key=lambda token: -len(token["content"]))]  # longest first
        self._added = re.compile(f"({'|'.join(patterns)})").split if patterns else None
        self._words = _Words(model)
        self._runs = re.compile(f"{SPACE}+[^{SPACE}]*|[^{SPACE}]+").findall

    @classmethod
    def of(cls, tokenizer: Any) -> TokenCounter | None:
        """A counter for ``tokenizer`` (a transformers fast tokenizer or a ``tokenizers.Tokenizer``), or None when its
        pipeline is not one this counter reproduces exactly."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not hasattr(backend, "to_str") or getattr(backend, "encode_special_tokens", False):
            return None
        spec = json.loads(backend.to_str())
        model, added = spec.get("model") or {}, spec.get("added_tokens") or []
        shape_ok = (spec.get("normalizer") is None and spec.get("truncation") is None and spec.get("padding") is None
                    and spec.get("pre_tokenizer") == {"type": "Metaspace", "replacement": SPACE,
                                                      "prepend_scheme": "first", "split": False}
                    and model.get("type") == "BPE" and model.get("dropout") is None
                    and not model.get("ignore_merges") and not model.get("continuing_subword_prefix")
                    and not model.get("end_of_word_suffix") and SPACE in model.get("vocab", {}))
        if not shape_ok or not all(_plain_added(token) for token in added) or _crossing_merge(model["merges"]):
            return None
        return cls(backend.model, added)

    def __call__(self, text: str) -> int:
        """Tokens of ``text``: one per added token, plus each piece between them."""
        if self._added is None:
            return self._piece(text, first=True) if text else 0
        parts = self._added(text)  # piece, token, piece, token, …, piece
        count = len(parts) // 2
        if parts[0]:
            count += self._piece(parts[0], first=True)
        for piece in parts[2::2]:
            if piece:
                count += self._piece(piece, first=False)
        return count

    def _piece(self, piece: str, *, first: bool) -> int:
        """Tokens of text between added tokens; ``first``: it starts the text (Metaspace puts a ``▁`` in front)."""
        piece = piece.replace(" ", SPACE)
        if first and not piece.startswith(SPACE):
            piece = SPACE + piece
        return sum(map(self._words.__getitem__, self._runs(piece)))


def _plain_added(token: dict[str, Any]) -> bool:
    """An added token matched on the raw text as it is: not normalised, not only as a whole word, no whitespace in
    it and none stripped before it (then leftmost-longest matching is what a regex of the longest first does)."""
    content = token.get("content") or ""
    return (bool(content) and not any(char.isspace() for char in content) and not token.get("normalized")
            and not token.get("single_word") and not token.get("lstrip"))


def _crossing_merge(merges: list[Any]) -> bool:
    """Some merge joins a token ending in a non-``▁`` character to one starting with ``▁`` (a cut would split it)."""
    for merge in merges:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if right.startswith(SPACE) and not left.endswith(SPACE):
            return True
    return False
