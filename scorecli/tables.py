"""The Parquet schemas of scorecli's outputs and the Arrow tables of document scores."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from scorecli.kept import KeptTypes, part_arrays, part_fields
from scorecli.scores import DEFAULT_STATS, SEQUENCE_COLUMNS, TOKEN_COLUMNS, DocScore

# The token columns every run has, around its statistics (TOKEN_COLUMNS), which go before is_response.
_TOKEN_FIELDS = [
    ("doc", pa.int64()),
    ("id", pa.string()),
    ("position", pa.int32()),
    ("token_id", pa.int32()),
    ("token", pa.string()),
    ("start", pa.int32()),
    ("end", pa.int32()),
]


def token_schema(stats: Iterable[str] = DEFAULT_STATS) -> pa.Schema:
    """The schema of tokens.parquet for a run that computes the token columns `stats`."""
    stats = set(stats)
    named = [(name, kind) for name, kind in TOKEN_COLUMNS.items() if name in stats]
    return pa.schema([*_TOKEN_FIELDS, *named, ("is_response", pa.bool_())])


def sequence_schema(stats: Iterable[str] = DEFAULT_STATS, kept: KeptTypes | None = None) -> pa.Schema:
    """The schema of sequences.parquet's parts for a run that computes the token columns `stats`.

    The kept input fields `kept` follow scorecli's own columns.
    """
    stats = set(stats)
    own = [pa.field(c.name, c.type) for c in SEQUENCE_COLUMNS if c.present(stats)]
    return pa.schema(own + part_fields(kept or {}))


TOKEN_SCHEMA = token_schema()
SEQUENCE_SCHEMA = sequence_schema()
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


def sequence_table(
    scores: list[DocScore], stats: Iterable[str] = DEFAULT_STATS, kept: KeptTypes | None = None
) -> pa.Table:
    """The sequence rows of several documents as one Arrow table, with their kept fields `kept`."""
    schema = sequence_schema(stats)
    table = pa.Table.from_pylist([s.sequence_row() for s in scores], schema)
    if not kept:
        return table
    arrays = [*table.columns, *part_arrays([s.kept for s in scores], kept)]
    return pa.Table.from_arrays(arrays, schema=sequence_schema(stats, kept))


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


def token_table(scores: list[DocScore], stats: Iterable[str] = DEFAULT_STATS) -> pa.Table:
    """The token rows of several documents as one Arrow table."""
    schema = token_schema(stats)
    counts = [s.n_rows for s in scores]
    fixed = {
        "doc": np.repeat([s.doc for s in scores], counts).astype(np.int64),
        "id": [s.id for s, n in zip(scores, counts) for _ in range(n)],
        "position": _cat([s.positions for s in scores], np.int32),
        "token_id": _cat([s.token_ids for s in scores], np.int32),
        "token": [t for s in scores for t in s.tokens],
        "start": _cat([s.starts for s in scores], np.int32),
        "end": _cat([s.ends for s in scores], np.int32),
        "is_response": _cat([s.is_response for s in scores], np.bool_),
    }
    arrays = [
        pa.array(fixed[f.name], f.type) if f.name in fixed else _column([s.stats[f.name] for s in scores], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _column(arrays: list[np.ndarray], kind: pa.DataType) -> pa.Array:
    """One token column of several documents: [n] arrays, or [n, K] arrays as a column of lists of K."""
    if not pa.types.is_list(kind):
        return pa.array(_cat(arrays, kind.to_pandas_dtype()), kind)
    width = arrays[0].shape[1] if arrays else 0
    items = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    rows = sum(len(a) for a in arrays)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(items, kind.value_type))


def _cat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate arrays (possibly none) into one of `dtype`."""
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
