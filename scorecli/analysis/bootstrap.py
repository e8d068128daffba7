"""Bootstrap confidence intervals over documents for corpus figures. Needs numpy and pyarrow, not torch.

Tokens of one document move together, so the unit resampled is the document: each resample draws the
scored documents with replacement and recomputes the token-weighted figure from their sums. Corpora of
more than MAX_UNITS scored documents are resampled in MAX_UNITS buckets of documents instead (a fixed hash
of the document number decides the bucket), which keeps the cost flat however large the corpus.

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
MAX_UNITS = 1 << 14  # beyond, bucket noise (about sqrt(2/MAX_UNITS) of the variance) is below the resampling's
_DRAWS_PER_CHUNK = 1 << 20  # resample indices held at once: 8 MB of int64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: neighbouring documents land in distant buckets
CORPUS_COLUMNS = ("n_tokens", "sum_logprob", "n_bytes")


class DocSums:
    """Per-document sums for the bootstrap: one row per scored document, or per bucket beyond `max_units`."""

    def __init__(self, width: int, max_units: int = MAX_UNITS) -> None:
        """Gather rows of `width` sums; `max_units` must be a power of two."""
        if max_units & (max_units - 1):
            raise ValueError("max_units must be a power of two")
        self.width, self.max_units = width, max_units
        self._docs: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._held = 0
        self._buckets: np.ndarray | None = None
        self.documents = 0

    def add(self, docs: np.ndarray, rows: np.ndarray) -> None:
        """Add the sums (`rows`, [n, width]) of documents numbered `docs`."""
        docs = np.asarray(docs, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.float64).reshape(len(docs), self.width)
        self.documents += len(docs)
        if self._buckets is None:
            self._docs.append(docs)
            self._rows.append(rows)
            self._held += len(docs)
            if self._held <= self.max_units:
                return
            docs, rows = np.concatenate(self._docs), np.concatenate(self._rows)
            self._docs, self._rows = [], []
            self._buckets = np.zeros((self.max_units, self.width))
        bucket = self.bucket(docs)
        for j in range(self.width):
            self._buckets[:, j] += np.bincount(bucket, weights=rows[:, j], minlength=self.max_units)

    def bucket(self, docs: np.ndarray) -> np.ndarray:
        """The bucket of each document number: a fixed function of the number alone."""
        shift = np.uint64(64 - int(math.log2(self.max_units)))
        return ((docs.astype(np.uint64) * _GOLDEN) >> shift).astype(np.int64)

    @property
    def bucketed(self) -> bool:
        """Whether the documents are resampled in buckets rather than one by one."""
        return self._buckets is not None

    def units(self) -> np.ndarray:
        """The resampled units' sums, [units, width]: documents in document order, or non-empty buckets."""
        if self._buckets is not None:
            return self._buckets[np.any(self._buckets != 0, axis=1)]
        if not self._docs:
            return np.zeros((0, self.width))
        docs, rows = np.concatenate(self._docs), np.concatenate(self._rows)
        return rows[np.argsort(docs, kind="stable")]


def resample_sums(units: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Column sums of `resamples` bootstrap resamples of the rows of `units`, [resamples, width].

    Resample b draws len(units) row indices with `numpy.random.default_rng(seed).integers`, in order.
    """
    n, width = units.shape
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, width))
    step = max(1, _DRAWS_PER_CHUNK // max(n, 1))
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        counts = np.bincount((idx + np.arange(k)[:, None] * n).ravel(), minlength=k * n).reshape(k, n)
        out[start : start + k] = counts.astype(np.float64) @ units
    return out


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The central `level` percentile interval of bootstrap values, [low, high] (None if undefined)."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return [float(low), float(high)]


def corpus_ratios(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Corpus perplexity and bits per byte from sums of (n_tokens, sum_logprob, n_bytes), row by row."""
    n_tokens, sum_logprob, n_bytes = sums[:, 0], sums[:, 1], sums[:, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return {
            "perplexity": np.exp(-sum_logprob / n_tokens),
            "bits_per_byte": -sum_logprob / (n_bytes * math.log(2)),
        }


def corpus_intervals(sums: DocSums, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """95% bootstrap intervals of corpus perplexity and bits per byte, as summary.json keys."""
    units = sums.units()
    figures = {"perplexity_ci": None, "bits_per_byte_ci": None}
    if len(units) >= 2:
        ratios = corpus_ratios(resample_sums(units, resamples, seed))
        figures = {f"{name}_ci": percentile_interval(values) for name, values in ratios.items()}
    return {
        **figures,
        "bootstrap_resamples": resamples,
        "bootstrap_seed": seed,
        "bootstrap_units": "buckets of documents" if sums.bucketed else "documents",
    }


def add_sequence_batches(sums: DocSums, batches: Iterable[pa.RecordBatch]) -> DocSums:
    """Add the scored documents of sequences.parquet batches (doc, n_tokens, sum_logprob, n_bytes)."""
    for batch in batches:
        scored = batch.filter(pc.greater(batch.column("n_tokens"), 0))
        if scored.num_rows:
            cols = [scored.column(c).to_numpy(zero_copy_only=False) for c in CORPUS_COLUMNS]
            sums.add(scored.column("doc").to_numpy(), np.stack(cols, axis=1))
    return sums


def sequence_sums(paths: Iterable[Path]) -> DocSums:
    """The per-document corpus sums of sequences Parquet files, read a row group at a time."""
    sums = DocSums(len(CORPUS_COLUMNS))
    for path in paths:
        batches = pq.ParquetFile(path).iter_batches(columns=["doc", *CORPUS_COLUMNS])
        add_sequence_batches(sums, batches)
    return sums


def add_choice_batches(sums: DocSums, batches: Iterable[pa.RecordBatch], normalisations: Iterable[str]) -> DocSums:
    """Add the labelled records of a choice run's sequences batches: whether each normalisation is right, and 1.

    A record none of whose choices has a score counts as wrong.
    """
    names = [f"correct_{n}" for n in normalisations]
    for batch in batches:
        labelled = batch.filter(pc.is_valid(batch.column("label")))
        if labelled.num_rows:
            cols = [pc.fill_null(labelled.column(c), False).to_numpy(zero_copy_only=False) for c in names]
            rows = np.stack([*cols, np.ones(labelled.num_rows)], axis=1).astype(np.float64)
            sums.add(labelled.column("doc").to_numpy(), rows)
    return sums


def accuracy_intervals(sums: DocSums, resamples: int = RESAMPLES, seed: int = SEED) -> list[list[float] | None]:
    """95% bootstrap intervals of each accuracy of `sums` (add_choice_batches's), records resampled."""
    units = sums.units()
    if len(units) < 2:
        return [None] * (sums.width - 1)
    resampled = resample_sums(units, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        return [percentile_interval(resampled[:, j] / resampled[:, -1]) for j in range(sums.width - 1)]
