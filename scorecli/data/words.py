"""Word-level surprisal: the words of a text, the scored tokens that make them up, and the correction.

Words are whitespace-separated, or given by the input; the correction is the beginning-of-word correction
of their surprisal (Pimentel & Meister 2024; see engine/wordstart.py).

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

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
    """The words of a document that hold scored tokens, and which word each scored token belongs to.

    `index` is each word's index among all the text's words (None: 0, 1, 2, … where every word holds a
    scored token); `correction` each word's beginning-of-word correction in nats, to add to its surprisal
    (NaN where unknown; None where it was not computed): see `word_corrections`.
    """

    starts: np.ndarray
    ends: np.ndarray
    token_word: np.ndarray
    index: np.ndarray | None = None
    correction: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def indices(self, first: int = 0, end: int | None = None) -> np.ndarray:
        """The indices among all the text's words of words `first` to `end`."""
        end = len(self) if end is None else min(end, len(self))
        return np.arange(first, end) if self.index is None else self.index[first:end]


def word_spans(
    text: str,
    spans: tuple[tuple[int, int], ...] | None = None,
    reach: int | None = None,
    given: tuple[tuple[int, int], ...] | None = None,
) -> np.ndarray:
    """Character spans [n, 2] of the whitespace-separated words of `text` (within `spans` where given).

    `given` are the words' spans where the input gives the words (a region may hold spaces): they are the
    words then. With `reach` (where the scored tokens end, in a truncated text), only the words up to the
    one that holds or follows that position: no later word can get a token.
    """
    if given is not None:
        limit = next((end for _, end in given if reach is not None and end > reach), None)
        kept = [span for span in given if limit is None or span[0] < limit]
        return np.array(kept, dtype=np.int64).reshape(-1, 2)
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
        return Words(spans[used, 0], spans[used, 1], token_word.astype(np.int64), _index(used, len(spans)))
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
    return Words(spans[used, 0], spans[used, 1], token_word, _index(used, len(spans)))


def _index(used: np.ndarray, n: int) -> np.ndarray | None:
    """The indices of the words that got a token, None where they are all n of them."""
    return None if len(used) == n else used.astype(np.int64)


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


def word_corrections(
    words: Words,
    token_ids: np.ndarray,
    positions: np.ndarray,
    starts_word: np.ndarray,
    word_start_logprob: np.ndarray,
    stretch_ends: np.ndarray,
    ended: np.ndarray,
) -> np.ndarray:
    """Each word's beginning-of-word correction, in nats: its surprisal plus this is −log P(word | context).

    P(word | context) = P(its tokens | context) · P(a word starts after it) / P(a word starts at it), where
    "a word starts" is "the next token is a word-start token" (`starts_word`, a mask over the vocabulary):
    the correction is log P(a word starts at it) − log P(a word starts after it). The first term counts
    only where the word's first token is a word-start token (a text's first word, with no space before it,
    starts a word by being first); the second is taken at the token after the word's last, where that one
    is a word-start token, else nowhere (the two terms of every boundary cancel or are both absent). After
    the last word of a stretch of scored tokens it is `ended`, the log-probability of a word end there (the
    text's end counts as one: the caller includes the EOS), NaN where unknown (a truncated text).

    The arrays are per scored (response) row, in text order: its token id, its position among the text's
    tokens, and the log-probability of a word-start token there (stats.WordStart); `stretch_ends` are the
    positions of each stretch's last token (sorted), `ended` the value after each.
    """
    n = len(words)
    if not n:
        return np.zeros(0)
    # Tokens are in text order, so each word's tokens are a run of rows: its first and its last row.
    first = np.searchsorted(words.token_word, np.arange(n), side="left")
    last = np.searchsorted(words.token_word, np.arange(n), side="right") - 1
    before = np.where(starts_word[token_ids[first]], word_start_logprob[first].astype(np.float64), 0.0)
    following = np.minimum(last + 1, len(token_ids) - 1)
    # A word's last row ends its stretch where no row follows it at the next position (prompt tokens, or none).
    closes = (last + 1 >= len(token_ids)) | (positions[following] != positions[last] + 1)
    after = np.where(starts_word[token_ids[following]], word_start_logprob[following].astype(np.float64), 0.0)
    stretch = np.minimum(np.searchsorted(stretch_ends, positions[last]), len(stretch_ends) - 1)
    after = np.where(closes, ended[stretch] if len(ended) else np.nan, after)
    return before - after


def ended_logprob(
    token_ids: np.ndarray, logprob: np.ndarray, word_start_logprob: np.ndarray, starts_word: np.ndarray
) -> np.ndarray:
    """The log-probability of a word end after each stretch of scored tokens, in float64 (NaN stays NaN).

    A word ends where a word-start token follows, or the token that does follow the stretch (`token_ids`:
    the EOS after a text's last token, say), whose log-probability there is `logprob`.
    """
    starts, logprob = word_start_logprob.astype(np.float64), logprob.astype(np.float64)
    with np.errstate(invalid="ignore"):  # NaN where unknown
        return np.where(starts_word[token_ids], starts, np.logaddexp(starts, logprob))
