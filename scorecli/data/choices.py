"""Choices: a record's per-choice scores as choice rows, and the document's predictions under each normalisation.

A record with choices (`--choices-field`) is scored as one document per choice (inputs.Choice), all with
the record's doc. This module groups them back (`group`) and makes the rows of choices.parquet (one per
choice) and of a choice run's sequences.parquet (one per record): the choice each normalisation predicts,
whether it is the label, and the margin. Ties go to the lowest index (numpy's argmax). Needs numpy and
pyarrow, not torch.

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from scorecli.data.critical import CRITICAL_FIELDS, critical_columns
from scorecli.data.scores import DocScore
from scorecli.inputs.kept import KeptTypes, part_arrays, part_fields

if TYPE_CHECKING:
    from scorecli.data.options import ScoreOptions  # data/options.py imports this module for its column names

# Each normalisation: the choices.parquet column it compares, and lm-evaluation-harness's name for its accuracy.
NORMALISATIONS: dict[str, tuple[str, str | None]] = {
    "sum": ("sum_logprob", "acc"),
    "per_token": ("mean_logprob", None),
    "per_char": ("logprob_per_char", "acc_norm"),
    "per_byte": ("logprob_per_byte", "acc_bytes"),
    "pmi": ("pmi", "acc_mutual_info"),
}

_CHOICE_FIELDS = [
    ("doc", pa.int64()),
    ("id", pa.string()),
    ("choice", pa.int32()),
    ("name", pa.string()),
    ("text", pa.string()),
    ("n_tokens", pa.int64()),
    ("n_chars", pa.int64()),
    ("n_bytes", pa.int64()),
    ("sum_logprob", pa.float64()),
    ("mean_logprob", pa.float64()),
    ("logprob_per_char", pa.float64()),
    ("logprob_per_byte", pa.float64()),
    ("is_greedy", pa.bool_()),
]
_UNCONDITIONAL_FIELDS = [("unconditional_sum_logprob", pa.float64()), ("pmi", pa.float64())]
_REFERENCE_FIELDS = [("ref_sum_logprob", pa.float64()), ("log_ratio", pa.float64())]


@dataclass(frozen=True)
class ChoiceLayout:
    """What a choice run's tables hold besides the plain columns: pmi, reference sums, the critical word (`words`)."""

    unconditional: bool = False
    ref: bool = False
    words: bool = False

    @property
    def normalisations(self) -> list[str]:
        """The normalisations this run predicts with."""
        return [n for n in NORMALISATIONS if n != "pmi" or self.unconditional]

    def choice_schema(self) -> pa.Schema:
        """The schema of choices.parquet."""
        extra = (_UNCONDITIONAL_FIELDS if self.unconditional else []) + (_REFERENCE_FIELDS if self.ref else [])
        extra += CRITICAL_FIELDS if self.words else []
        return pa.schema(_CHOICE_FIELDS + extra)

    def sequence_schema(self, kept: KeptTypes | None = None) -> pa.Schema:
        """The schema of a choice run's sequences.parquet parts (kept JSON fields as JSON text, last)."""
        own = [pa.field(name, kind) for name, kind in sequence_fields(self.normalisations)]
        return pa.schema(own + part_fields(kept or {}))


def choice_layout(options: ScoreOptions) -> ChoiceLayout | None:
    """The layout of a run's choice tables (None: a run without choices)."""
    if options.choices_field is None:
        return None
    return ChoiceLayout(unconditional=options.unconditional, ref=options.ref_model is not None, words=options.words)


def sequence_fields(normalisations: Iterable[str]) -> list[tuple[str, pa.DataType]]:
    """The columns of a choice run's sequences.parquet for these normalisations."""
    fields = [
        ("doc", pa.int64()),
        ("id", pa.string()),
        ("n_choices", pa.int32()),
        ("label", pa.int32()),
        # Over all the record's choices: the corpus figures (perplexity, bits per byte) and their intervals.
        ("n_tokens", pa.int64()),
        ("sum_logprob", pa.float64()),
        ("n_bytes", pa.int64()),
    ]
    for name in normalisations:
        fields += [(f"predicted_{name}", pa.int32()), (f"correct_{name}", pa.bool_())]
    return [*fields, ("margin", pa.float64())]


# Every column name a choice run's sequences.parquet may have: kept fields must take none of them.
SEQUENCE_NAMES = tuple(name for name, _ in sequence_fields(NORMALISATIONS))


@dataclass
class ChoiceDoc:
    """A record with choices, scored: a DocScore per choice, and per choice alone after BOS where asked."""

    choices: list[DocScore]
    unconditional: list[DocScore] | None = None

    @property
    def first(self) -> DocScore:
        """The document of the first choice, which carries what all of them share (doc, id, label, kept fields)."""
        return self.choices[0]

    def columns(self) -> dict[str, np.ndarray | list]:
        """The record's rows of choices.parquet, as columns (those of the layout it was scored with)."""
        texts = [d.choice.text for d in self.choices]
        n_tokens = np.array([d.n_tokens for d in self.choices], dtype=np.int64)
        sums = np.array([d.sum_logprob if d.n_tokens else math.nan for d in self.choices])
        n_chars = np.array([len(t) for t in texts], dtype=np.int64)
        n_bytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            columns = {
                "doc": np.full(len(texts), self.first.doc, dtype=np.int64),
                "id": [self.first.id] * len(texts),
                "choice": np.arange(len(texts), dtype=np.int32),
                "name": [d.choice.name for d in self.choices],
                "text": texts,
                "n_tokens": n_tokens,
                "n_chars": n_chars,
                "n_bytes": n_bytes,
                "sum_logprob": sums,
                "mean_logprob": sums / n_tokens,
                "logprob_per_char": sums / n_chars,
                "logprob_per_byte": sums / n_bytes,
                "is_greedy": np.array([_greedy(d) for d in self.choices], dtype=bool),
            }
        if self.unconditional is not None:
            alone = np.array([d.sum_logprob if d.n_tokens else math.nan for d in self.unconditional])
            columns |= {"unconditional_sum_logprob": alone, "pmi": sums - alone}
        if self.choices and "ref_logprob" in self.first.stats:
            ref = np.array([d.response_sum("ref_logprob") if d.n_tokens else math.nan for d in self.choices])
            columns |= {"ref_sum_logprob": ref, "log_ratio": sums - ref}
        return columns

    def sequence_row(self, normalisations: Sequence[str]) -> dict:
        """The record's row of sequences.parquet: each normalisation's predicted choice and whether it is right."""
        columns = self.columns()
        label = self.first.choice.label
        row = {
            "doc": self.first.doc,
            "id": self.first.id,
            "n_choices": len(self.choices),
            "label": label,
            "n_tokens": int(columns["n_tokens"].sum()),
            "sum_logprob": float(np.nansum(columns["sum_logprob"])),
            "n_bytes": int(sum(d.n_bytes for d in self.choices)),
        }
        for name in normalisations:
            predicted = predict(columns[NORMALISATIONS[name][0]])
            row[f"predicted_{name}"] = predicted
            row[f"correct_{name}"] = None if label is None or predicted is None else predicted == label
        row["margin"] = margin(columns["sum_logprob"], label)
        return row


def predict(scores: np.ndarray) -> int | None:
    """The index of the highest score, the lowest index among ties; a choice without a score (NaN) never wins."""
    if not len(scores) or np.isnan(scores).all():
        return None
    return int(np.argmax(np.where(np.isnan(scores), -np.inf, scores)))


def margin(scores: np.ndarray, label: int | None) -> float | None:
    """The label's score minus the best other choice's; without a label, the best minus the second best."""
    if len(scores) < 2 or np.isnan(scores).any():
        return None
    if label is None:
        best, second = np.sort(scores)[::-1][:2]
        return float(best - second)
    return float(scores[label] - np.delete(scores, label).max())


def _greedy(d: DocScore) -> bool:
    """Whether every scored token of a choice is the model's most likely next token (lm-eval's is_greedy)."""
    return bool(d.n_tokens) and bool((d.response_values("rank") == 1).all())


def group(docs: Iterable[DocScore]) -> Iterator[ChoiceDoc]:
    """The documents of a choice run's records (each record's consecutive, as they are scored), record by record."""
    current: list[DocScore] = []
    for d in docs:
        if current and d.doc != current[0].doc:
            yield _choice_doc(current)
            current = []
        current.append(d)
    if current:
        yield _choice_doc(current)


def _choice_doc(docs: list[DocScore]) -> ChoiceDoc:
    """One record's documents as a ChoiceDoc."""
    choices = [d for d in docs if not d.choice.unconditional]
    alone = [d for d in docs if d.choice.unconditional]
    return ChoiceDoc(choices, alone if alone else None)


def scored(docs: Iterable[DocScore]) -> list[DocScore]:
    """The documents whose token (and word) rows are written: the choices after their context, not those alone."""
    return [d for d in docs if d.choice is None or not d.choice.unconditional]


def choice_table(docs: Iterable[ChoiceDoc], layout: ChoiceLayout) -> pa.Table:
    """The rows of choices.parquet of several records."""
    schema = layout.choice_schema()
    parts = [d.columns() | (critical_columns(d.choices) if layout.words else {}) for d in docs]
    arrays = []
    for f in schema:
        values = [v for p in parts for v in (p[f.name].tolist() if isinstance(p[f.name], np.ndarray) else p[f.name])]
        if pa.types.is_floating(f.type):
            values = [None if v is None or v != v else v for v in values]
        arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def choice_sequence_table(docs: Sequence[ChoiceDoc], layout: ChoiceLayout, kept: KeptTypes | None = None) -> pa.Table:
    """The rows of a choice run's sequences.parquet of several records, with their kept fields."""
    schema = layout.sequence_schema()
    table = pa.Table.from_pylist([d.sequence_row(layout.normalisations) for d in docs], schema)
    if not kept:
        return table
    arrays = [*table.columns, *part_arrays([d.first.kept for d in docs], kept)]
    return pa.Table.from_arrays(arrays, schema=layout.sequence_schema(kept))
