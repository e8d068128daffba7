"""Write scores: tokens.parquet and sequences.parquet with run metadata, or JSON lines to a stream."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorecli.engine import DocScore
from scorecli.errors import OutputError

TOKENS_FILE = "tokens.parquet"
SEQUENCES_FILE = "sequences.parquet"
SUMMARY_FILE = "summary.json"
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
        ("truncated", pa.bool_()),
    ]
)
_ROW_GROUP_TOKENS = 1 << 16
_PARTIAL = ".partial"


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create the output folder, refusing one that already holds files unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputError(f"--out {out_dir}: the folder is not empty; pass --overwrite to replace its results")
        for name in (TOKENS_FILE, SEQUENCES_FILE, SUMMARY_FILE):
            # An old result must not survive next to a new run that fails.
            (out_dir / name).unlink(missing_ok=True)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out_dir}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"--out {out_dir}: the folder is not writable")


class ParquetOutput:
    """Stream DocScores into tokens.parquet and sequences.parquet; the files appear complete on close."""

    def __init__(self, out_dir: Path, metadata: dict[str, str]) -> None:
        """Open both files (under temporary names) in a prepared folder, with `metadata` in their footers."""
        self.out_dir = Path(out_dir)
        meta = {k.encode(): str(v).encode() for k, v in metadata.items()}
        self._targets = [self.out_dir / TOKENS_FILE, self.out_dir / SEQUENCES_FILE]
        try:
            self._tokens = pq.ParquetWriter(self._partial(0), TOKEN_SCHEMA.with_metadata(meta))
            self._sequences = pq.ParquetWriter(self._partial(1), SEQUENCE_SCHEMA.with_metadata(meta))
        except OSError as e:
            raise OutputError(f"--out {out_dir}: cannot write ({e})") from None
        self._pending: list[DocScore] = []
        self._pending_tokens = 0

    def _partial(self, i: int) -> Path:
        """Temporary name of output file i while it is being written."""
        return self._targets[i].with_name(self._targets[i].name + _PARTIAL)

    def write(self, score: DocScore) -> None:
        """Add one document's rows; rows are flushed in row groups of about 65k tokens."""
        self._pending.append(score)
        self._pending_tokens += score.n_tokens
        if self._pending_tokens >= _ROW_GROUP_TOKENS:
            self._flush()

    def _flush(self) -> None:
        """Write the pending documents as one row group of each file."""
        if not self._pending:
            return
        self._tokens.write_table(token_table(self._pending))
        self._sequences.write_table(pa.Table.from_pylist([s.sequence_row() for s in self._pending], SEQUENCE_SCHEMA))
        self._pending, self._pending_tokens = [], 0

    def close(self) -> list[Path]:
        """Flush, finish both files and give them their final names."""
        self._flush()
        self._tokens.close()
        self._sequences.close()
        for i, target in enumerate(self._targets):
            os.replace(self._partial(i), target)
        return self._targets

    def abort(self) -> None:
        """Close the writers after a failure and remove their unfinished files."""
        for i, writer in enumerate((self._tokens, self._sequences)):
            writer.close()
            self._partial(i).unlink(missing_ok=True)


def token_table(scores: list[DocScore]) -> pa.Table:
    """The token rows of several documents as one Arrow table."""
    counts = [s.n_tokens for s in scores]
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
        ],
        schema=TOKEN_SCHEMA,
    )


def _cat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate arrays (possibly none) into one of `dtype`."""
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


class JsonlOutput:
    """Write each document's sequence row as one JSON object per line (non-finite numbers as null)."""

    def __init__(self, stream: TextIO) -> None:
        """Write to `stream`."""
        self.stream = stream

    def write(self, score: DocScore) -> None:
        """Write one document's line."""
        self.stream.write(json.dumps(_finite(score.sequence_row()), ensure_ascii=False) + "\n")

    def close(self) -> list[Path]:
        """Flush the stream; nothing is written to disk."""
        self.stream.flush()
        return []

    def abort(self) -> None:
        """Flush what was written."""
        self.stream.flush()


def write_summary(out_dir: Path, figures: dict, metadata: dict[str, str]) -> Path:
    """Write the run's headline figures and metadata as summary.json, for scripts; return its path."""
    path = Path(out_dir) / SUMMARY_FILE
    partial = path.with_name(path.name + _PARTIAL)
    text = json.dumps({"summary": _finite(figures), "metadata": metadata}, indent=2, ensure_ascii=False)
    try:
        partial.write_text(text + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as e:
        raise OutputError(f"--out {out_dir}: cannot write {SUMMARY_FILE} ({e.strerror or e})") from None
    return path


def _finite(row: dict) -> dict:
    """A row with non-finite floats as None, since JSON has no infinity or NaN."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The key/value metadata scorecli wrote into a Parquet output file."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:")}
