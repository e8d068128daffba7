"""Word-level surprisal: whitespace-separated words of a text, and the scored tokens that make them up."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\S+")


@dataclass
class Words:
    """The words of a document that hold scored tokens, and which word each scored token belongs to."""

    starts: np.ndarray
    ends: np.ndarray
    token_word: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def word_spans(text: str, spans: tuple[tuple[int, int], ...] | None = None) -> np.ndarray:
    """Character spans [n, 2] of the whitespace-separated words of `text` (within `spans` where given)."""
    regions = [(0, len(text))] if spans is None else spans
    found = [(m.start(), m.end()) for start, end in regions for m in _WORD.finditer(text, start, end)]
    return np.asarray(found, dtype=np.int64).reshape(-1, 2)


def assign_words(spans: np.ndarray, token_ends: np.ndarray) -> Words:
    """Give each token to the word where it ends; keep only the words that receive a token.

    A token that ends in whitespace belongs to the next word (its space is that word's prefix, as in
    " word"); one that ends after the last word belongs to the last. So every token has exactly one word
    and the words' surprisals sum to the document's.
    """
    if not len(spans) or not len(token_ends):
        return Words(np.zeros(0, np.int64), np.zeros(0, np.int64), np.full(len(token_ends), -1, np.int64))
    # The first word whose end is at or after the token's end: the token ends inside it or before it.
    index = np.minimum(np.searchsorted(spans[:, 1], token_ends, side="left"), len(spans) - 1)
    used, token_word = np.unique(index, return_inverse=True)
    return Words(spans[used, 0], spans[used, 1], token_word.astype(np.int64))


def word_stats(words: Words, logprobs: np.ndarray, entropies: np.ndarray) -> dict[str, np.ndarray]:
    """Per word: scored tokens, surprisal (nats, Σ -log-prob of its tokens) and its first token's entropy."""
    n = len(words)
    counts = np.bincount(words.token_word, minlength=n)
    surprisal = np.bincount(words.token_word, weights=-logprobs.astype(np.float64), minlength=n)
    first = np.searchsorted(words.token_word, np.arange(n))  # tokens are in text order, so words' are sorted
    return {"n_tokens": counts, "surprisal": surprisal, "entropy": entropies[first] if n else np.zeros(0)}
