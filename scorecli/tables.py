"""The Parquet schemas of scorecli's outputs and the Arrow tables of document scores."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scorecli.scores import DocScore

TOKEN_SCHEMA = pa.schema(
    [
        ("doc", pa.int64()),
        ("id", pa.string()),
        ("position", pa.int32()),
        ("token_id", pa.int32()),
        ("token", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("logprob", pa.float32()),
        ("entropy", pa.float32()),
        ("is_response", pa.bool_()),
    ]
)
SEQUENCE_SCHEMA = pa.schema(
    [
        ("doc", pa.int64()),
        ("id", pa.string()),
        ("n_tokens", pa.int64()),
        ("sum_logprob", pa.float64()),
        ("mean_logprob", pa.float64()),
        ("perplexity", pa.float64()),
        ("mean_entropy", pa.float64()),
        ("n_bytes", pa.int64()),
        ("bits_per_byte", pa.float64()),
        ("n_words", pa.int64()),
        ("word_perplexity", pa.float64()),
        ("truncated", pa.bool_()),
    ]
)
WORD_SCHEMA = pa.schema(
    [
        ("doc", pa.int64()),
        ("id", pa.string()),
        ("word", pa.int32()),
        ("text", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("n_tokens", pa.int32()),
        ("surprisal", pa.float64()),
        ("entropy", pa.float32()),
    ]
)


def sequence_table(scores: list[DocScore]) -> pa.Table:
    """The sequence rows of several documents as one Arrow table."""
    return pa.Table.from_pylist([s.sequence_row() for s in scores], SEQUENCE_SCHEMA)


def word_table(scores: list[DocScore]) -> pa.Table:
    """The word rows of several documents as one Arrow table."""
    rows = [s.word_rows() for s in scores]
    counts = [len(s.words) for s in scores]
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat([s.doc for s in scores], counts).astype(np.int64)),
            pa.array([s.id for s, n in zip(scores, counts) for _ in range(n)], pa.string()),
            pa.array(_cat([r["word"] for r in rows], np.int32)),
            pa.array([t for r in rows for t in r["text"]], pa.string()),
            pa.array(_cat([r["start"] for r in rows], np.int32)),
            pa.array(_cat([r["end"] for r in rows], np.int32)),
            pa.array(_cat([r["n_tokens"] for r in rows], np.int32)),
            pa.array(_cat([r["surprisal"] for r in rows], np.float64)),
            pa.array(_cat([r["entropy"] for r in rows], np.float32)),
        ],
        schema=WORD_SCHEMA,
    )


def token_table(scores: list[DocScore]) -> pa.Table:
    """The token rows of several documents as one Arrow table."""
    counts = [s.n_rows for s in scores]
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat([s.doc for s in scores], counts).astype(np.int64)),
            pa.array([s.id for s, n in zip(scores, counts) for _ in range(n)], pa.string()),
            pa.array(_cat([s.positions for s in scores], np.int32)),
            pa.array(_cat([s.token_ids for s in scores], np.int32)),
            pa.array([t for s in scores for t in s.tokens], pa.string()),
            pa.array(_cat([s.starts for s in scores], np.int32)),
            pa.array(_cat([s.ends for s in scores], np.int32)),
            pa.array(_cat([s.logprobs for s in scores], np.float32)),
            pa.array(_cat([s.entropies for s in scores], np.float32)),
            pa.array(_cat([s.is_response for s in scores], np.bool_)),
        ],
        schema=TOKEN_SCHEMA,
    )


def _cat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate arrays (possibly none) into one of `dtype`."""
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
