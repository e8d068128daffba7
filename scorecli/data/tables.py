"""The Parquet schemas of scorecli's outputs and the Arrow tables of document scores.

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from scorecli.data.scores import DEFAULT_STATS, SEQUENCE_COLUMNS, TOKEN_COLUMNS, DocScore
from scorecli.inputs.kept import KeptTypes, part_arrays, part_fields

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


def token_schema(stats: Iterable[str] = DEFAULT_STATS, choices: bool = False) -> pa.Schema:
    """The schema of tokens.parquet for a run that computes the token columns `stats` (of choices: with `choice`)."""
    stats = set(stats)
    named = [(name, kind) for name, kind in TOKEN_COLUMNS.items() if name in stats]
    return pa.schema([*_with_choice(_TOKEN_FIELDS, choices), *named, ("is_response", pa.bool_())])


def word_schema(choices: bool = False) -> pa.Schema:
    """The schema of words.parquet (of a choice run: with `choice`)."""
    return pa.schema(_with_choice(list(zip(WORD_SCHEMA.names, WORD_SCHEMA.types)), choices))


def _with_choice(fields: list[tuple[str, pa.DataType]], choices: bool) -> list[tuple[str, pa.DataType]]:
    """A table's fields, with the `choice` column after `id` in a choice run."""
    return [*fields[:2], ("choice", pa.int32()), *fields[2:]] if choices else fields


def sequence_schema(
    stats: Iterable[str] = DEFAULT_STATS, kept: KeptTypes | None = None, words: bool = False
) -> pa.Schema:
    """The schema of sequences.parquet's parts for a run that computes the token columns `stats` (and word rows).

    The kept input fields `kept` follow scorecli's own columns.
    """
    stats = set(stats)
    own = [pa.field(c.name, c.type) for c in SEQUENCE_COLUMNS if c.present(stats, words)]
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
        ("surprisal_corrected", pa.float64()),
        ("entropy", pa.float32()),
    ]
)


# The numeric word columns after `text`, as DocScore.word_columns gives them.
WORD_COLUMNS = ("start", "end", "n_tokens", "surprisal", "surprisal_corrected", "entropy")
# Rows per record batch of token and word rows: a huge document's rows are built and written a slice at a
# time, never all at once.
BATCH_ROWS = 1 << 16


def sequence_table(
    scores: list[DocScore], stats: Iterable[str] = DEFAULT_STATS, kept: KeptTypes | None = None, words: bool = False
) -> pa.Table:
    """The sequence rows of several documents as one Arrow table, with their kept fields `kept`."""
    schema = sequence_schema(stats, words=words)
    table = pa.Table.from_pylist([s.sequence_row() for s in scores], schema)
    if not kept:
        return table
    arrays = [*table.columns, *part_arrays([s.kept for s in scores], kept)]
    return pa.Table.from_arrays(arrays, schema=sequence_schema(stats, kept, words))


def word_table(scores: list[DocScore], schema: pa.Schema = WORD_SCHEMA) -> pa.Table:
    """The word rows of several documents as one Arrow table."""
    return pa.Table.from_batches(list(word_batches(scores, schema=schema)), schema)


def word_batches(
    scores: list[DocScore], rows: int = BATCH_ROWS, schema: pa.Schema = WORD_SCHEMA
) -> Iterator[pa.RecordBatch]:
    """The word rows of several documents as record batches of at most `rows` rows, in order (of `schema`)."""
    columns: dict[int, dict[str, np.ndarray]] = {}
    for chunk in _slices(scores, [len(s.words) for s in scores], rows):
        parts = []
        for s, a, b in chunk:
            if a == 0:  # a document's numbers are computed once, however many batches it spans
                columns = {s.doc: s.word_columns()}
            parts.append((s, a, b, columns[s.doc]))
        choice = (
            [pa.array(_cat([np.full(b - a, s.choice.index, np.int32) for s, a, b, _ in parts], np.int32))]
            if "choice" in schema.names
            else []
        )
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(_cat([np.full(b - a, s.doc, np.int64) for s, a, b, _ in parts], np.int64)),
                pa.array([s.id for s, a, b, _ in parts for _ in range(b - a)], pa.string()),
                *choice,
                pa.array(_cat([s.words.indices(a, b) for s, a, b, _ in parts], np.int32)),
                pa.array([t for s, a, b, _ in parts for t in s.word_texts(a, b)], pa.string()),
                *(
                    # NaN (a correction not computed, or unknown) is written as null.
                    pa.array(
                        _cat([c[name][a:b] for _, a, b, c in parts], field.type.to_pandas_dtype()),
                        field.type,
                        from_pandas=True,
                    )
                    for name, field in ((n, WORD_SCHEMA.field(n)) for n in WORD_COLUMNS)
                ),
            ],
            schema=schema,
        )


def token_table(scores: list[DocScore], stats: Iterable[str] = DEFAULT_STATS, choices: bool = False) -> pa.Table:
    """The token rows of several documents as one Arrow table (of a choice run's choices: with `choice`)."""
    schema = token_schema(stats, choices)
    return pa.Table.from_batches(list(token_batches(scores, schema)), schema)


def token_batches(scores: list[DocScore], schema: pa.Schema, rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The token rows of several documents (`schema`'s columns) as record batches of at most `rows` rows."""
    for chunk in _slices(scores, [s.n_rows for s in scores], rows):
        fixed = {
            "doc": _cat([np.full(b - a, s.doc, np.int64) for s, a, b in chunk], np.int64),
            "id": [s.id for s, a, b in chunk for _ in range(b - a)],
            **(
                {"choice": _cat([np.full(b - a, s.choice.index, np.int32) for s, a, b in chunk], np.int32)}
                if "choice" in schema.names
                else {}
            ),
            "position": _cat([s.positions[a:b] for s, a, b in chunk], np.int32),
            "token_id": _cat([s.token_ids[a:b] for s, a, b in chunk], np.int32),
            "token": [t for s, a, b in chunk for t in s.tokens[a:b]],
            "start": _cat([s.starts[a:b] for s, a, b in chunk], np.int32),
            "end": _cat([s.ends[a:b] for s, a, b in chunk], np.int32),
            "is_response": _cat([s.is_response[a:b] for s, a, b in chunk], np.bool_),
        }
        arrays = [
            pa.array(fixed[f.name], f.type)
            if f.name in fixed
            else _column([s.stats[f.name][a:b] for s, a, b in chunk], f.type)
            for f in schema
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _slices(scores: list[DocScore], counts: list[int], rows: int) -> Iterator[list[tuple[DocScore, int, int]]]:
    """Group the documents' rows into runs of at most `rows` rows: (document, first row, end row) each."""
    chunk: list[tuple[DocScore, int, int]] = []
    size = 0
    for s, n in zip(scores, counts):
        for a in range(0, n, rows):
            b = min(a + rows, n)
            if chunk and size + b - a > rows:
                yield chunk
                chunk, size = [], 0
            chunk.append((s, a, b))
            size += b - a
    if chunk:
        yield chunk


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
