"""Word-level surprisal: whitespace-separated words of a text, and the scored tokens that make them up."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\S+")
_SPACE = re.compile(r"\s")
_SLICE = 1 << 20  # tokens at a time
_TEXT_SLICE = 1 << 20  # characters at a time


@dataclass
class Words:
    """The words of a document that hold scored tokens, and which word each scored token belongs to."""

    starts: np.ndarray
    ends: np.ndarray
    token_word: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def word_spans(text: str, spans: tuple[tuple[int, int], ...] | None = None, reach: int | None = None) -> np.ndarray:
    """Character spans [n, 2] of the whitespace-separated words of `text` (within `spans` where given).

    With `reach` (where the scored tokens end, in a truncated text), only the words up to the one that
    holds or follows that position: no later word can get a token.
    """
    regions = [(0, len(text))] if spans is None else spans
    if reach is not None:
        after = _WORD.search(text, reach)
        limit = after.end() if after else len(text)
        regions = [(start, min(end, limit)) for start, end in regions if start < limit]
    # Straight into arrays of int32 (where every offset fits), a slice of the text at a time: a list of
    # (start, end) tuples costs about 15 times as much for a huge text, and one array grown as words come
    # would take up to twice its final size.
    dtype = np.int32 if len(text) < 2**31 else np.int64
    pieces = []
    for start, end in regions:
        while start < end:
            stop = min(start + _TEXT_SLICE, end)
            if stop < end:
                # Cut at the next whitespace (or the region's end), so that no word is split.
                space = _SPACE.search(text, stop, end)
                stop = space.start() if space else end
            pieces.append(np.fromiter((i for m in _WORD.finditer(text, start, stop) for i in m.span()), dtype=dtype))
            start = stop
    return joined(pieces).reshape(-1, 2) if pieces else np.zeros((0, 2), dtype)


def joined(pieces: list[np.ndarray]) -> np.ndarray:
    """The arrays of `pieces` joined into one, each let go as it is copied (the list is emptied)."""
    out = np.empty((sum(len(p) for p in pieces), *pieces[0].shape[1:]), pieces[0].dtype)
    at = 0
    pieces.reverse()
    while pieces:
        piece = pieces.pop()
        out[at : at + len(piece)] = piece
        at += len(piece)
    return out


def assign_words(spans: np.ndarray, token_offsets: np.ndarray) -> Words:
    """Give each token to the word where its last non-space character is; keep the words that get a token.

    A token of whitespace alone belongs to the next word (it is that word's leading space), or to the last
    word where none follows. So, in a text with any word, every token has exactly one word and the word
    surprisals sum to the document's; in a text of whitespace alone no token has a word (index -1).
    """
    if not len(spans) or not len(token_offsets):
        return Words(np.zeros(0, np.int64), np.zeros(0, np.int64), np.full(len(token_offsets), -1, np.int64))
    # A huge document's tokens are taken a slice at a time, so that the intermediate arrays stay small.
    index = np.empty(len(token_offsets), dtype=np.int64 if len(spans) >= 2**31 else np.int32)
    for first in range(0, len(token_offsets), _SLICE):
        index[first : first + _SLICE] = _word_of(spans, token_offsets[first : first + _SLICE])
    if len(index) > 1 and not (index[1:] >= index[:-1]).all():
        used, token_word = np.unique(index, return_inverse=True)
        return Words(spans[used, 0], spans[used, 1], token_word.astype(np.int64))
    # Tokens in text order have non-decreasing words: numbering the distinct ones needs no sort, which for
    # millions of tokens would take several times their own memory.
    new_word = np.empty(len(index), dtype=bool)
    new_word[:1] = True
    np.not_equal(index[1:], index[:-1], out=new_word[1:])
    used = index[new_word]
    token_word = np.cumsum(new_word, out=index)  # the word indices are not needed any more
    token_word -= 1
    if len(used) == len(spans):  # every word got a token (tokens cover the text): views, not copies
        return Words(spans[:, 0], spans[:, 1], token_word)
    return Words(spans[used, 0], spans[used, 1], token_word)


def _word_of(spans: np.ndarray, token_offsets: np.ndarray) -> np.ndarray:
    """The index of the word each token goes to (see assign_words), among all the `spans`."""
    starts, ends = token_offsets[:, 0], token_offsets[:, 1]
    # The last word that starts before the token ends holds its last non-space character if the two overlap;
    # if they do not, the token is whitespace between words and goes to the next one.
    last = np.searchsorted(spans[:, 0], ends, side="left") - 1
    overlaps = (last >= 0) & (spans[np.maximum(last, 0), 1] > starts)
    return np.minimum(np.where(overlaps, last, last + 1), len(spans) - 1)


def word_stats(words: Words, logprobs: np.ndarray, entropies: np.ndarray) -> dict[str, np.ndarray]:
    """Per word: scored tokens, surprisal (nats, Σ -log-prob of its tokens) and its first token's entropy."""
    n = len(words)
    if not n:  # a text of whitespace alone: its tokens belong to no word
        return {"n_tokens": np.zeros(0, np.int64), "surprisal": np.zeros(0), "entropy": np.zeros(0, np.float32)}
    token_word = words.token_word
    counts = np.zeros(n, np.int64)
    surprisal = np.zeros(n)
    entropy = np.empty(n, entropies.dtype)
    # A slice of tokens at a time: float64 and platform-integer copies of a huge document's log-probs and
    # word indices would take up to 16 bytes a token. A word cut by a slice's edge gets its two partial sums
    # added, where one bincount adds token by token: the same float64 sum wherever it is exact (as it is for
    # the float32 log-probs of a word of a few tokens), else at most a rounding apart.
    previous = -1
    for first in range(0, len(token_word), _SLICE):
        part = token_word[first : first + _SLICE]
        low, high = int(part.min()), int(part.max()) + 1
        local = part - low
        counts[low:high] += np.bincount(local, minlength=high - low)
        surprisal[low:high] += np.bincount(local, weights=-logprobs[first : first + _SLICE], minlength=high - low)
        # Tokens are in text order, so words' are sorted: a word's first token is where the word changes.
        starts = np.empty(len(part), dtype=bool)
        starts[0] = part[0] != previous
        np.not_equal(part[1:], part[:-1], out=starts[1:])
        entropy[part[starts]] = entropies[first : first + _SLICE][starts]
        previous = part[-1]
    return {"n_tokens": counts, "surprisal": surprisal, "entropy": entropy}
