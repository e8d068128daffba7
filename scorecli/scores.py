"""Document scores: a row per scored token and the document's totals. Needs numpy, not torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scorecli.words import Words, word_stats


def perplexity(mean_logprob: float) -> float:
    """exp(-mean log-prob), infinite where that overflows a float."""
    return math.exp(-mean_logprob) if -mean_logprob < 709.0 else math.inf


@dataclass
class DocScore:
    """The scores of one document: a row per scored token, and the document's totals.

    Statistics count the response rows only (every row of a plain text is one); prompt rows are present
    only when asked for, as context that was scored but not counted.
    """

    doc: int
    id: str | None
    text: str
    token_ids: np.ndarray
    positions: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    logprobs: np.ndarray
    entropies: np.ndarray
    tokens: list[str]
    is_response: np.ndarray
    n_bytes: int
    truncated: bool
    words: Words
    sum_logprob: float = field(init=False)

    def __post_init__(self) -> None:
        """Total the response log-probs in float64."""
        self.sum_logprob = float(self.logprobs[self.is_response].sum(dtype=np.float64))

    @property
    def n_tokens(self) -> int:
        """Number of scored response tokens."""
        return int(self.is_response.sum())

    @property
    def n_rows(self) -> int:
        """Number of token rows (response tokens, plus prompt tokens where asked for)."""
        return len(self.logprobs)

    @property
    def sum_entropy(self) -> float:
        """Total entropy over the response tokens, in nats."""
        return float(self.entropies[self.is_response].sum(dtype=np.float64))

    def sequence_row(self) -> dict:
        """The document's row of sequences.parquet; statistics are None where no token was scored."""
        n, n_words = self.n_tokens, len(self.words)
        mean = self.sum_logprob / n if n else None
        return {
            "doc": self.doc,
            "id": self.id,
            "n_tokens": n,
            "sum_logprob": self.sum_logprob if n else None,
            "mean_logprob": mean,
            "perplexity": perplexity(mean) if n else None,
            "mean_entropy": self.sum_entropy / n if n else None,
            "n_bytes": self.n_bytes,
            "bits_per_byte": -self.sum_logprob / (self.n_bytes * math.log(2)) if n and self.n_bytes else None,
            "n_words": n_words,
            "word_perplexity": perplexity(self.sum_logprob / n_words) if n_words else None,
            "truncated": self.truncated,
        }

    def word_rows(self) -> dict[str, np.ndarray | list]:
        """The document's rows of words.parquet, as columns."""
        response = self.is_response
        stats = word_stats(self.words, self.logprobs[response], self.entropies[response])
        return {
            "word": np.arange(len(self.words)),
            "text": [self.text[a:b] for a, b in zip(self.words.starts.tolist(), self.words.ends.tolist())],
            "start": self.words.starts,
            "end": self.words.ends,
            **stats,
        }
