"""Minimal pairs at the critical word: the first word where a record's choices differ, and its surprisal in each.

A record with choices scored with `--words` has each choice's words (its rows of words.parquet: the word's
index among the choice's words, its text, its surprisal plain and corrected). The critical word is the first
word index at which the choices' word sequences do not all agree: some choice's word there has another text,
or some choice has no word there (it ended before). Where every choice has the same words (identical
choices, or a single one) there is none. Each choice's row of choices.parquet then carries that index and
its own word there, which is null where the choice has no word at that index. The words before it are the
same in every choice, so the critical word's surprisal is taken after the same context in each: the number
a minimal-pair study compares. Needs numpy and pyarrow, not torch.

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorecli.data.scores import DocScore

# The columns of choices.parquet that a --words run adds, after the others.
CRITICAL_FIELDS = [
    ("critical_word", pa.int32()),
    ("critical_text", pa.string()),
    ("critical_surprisal", pa.float64()),
    ("critical_surprisal_corrected", pa.float64()),
]


def critical_index(indices: Sequence[Sequence[int]], texts: Sequence[Sequence[str]]) -> int | None:
    """The first word index at which the choices' words (`indices`, `texts`: per choice) do not all agree.

    A choice with no word at an index (it ended before, or that word holds no scored token) disagrees with
    one that has a word there. None where every choice has the same words at every index.
    """
    words = [dict(zip(list(i), t)) for i, t in zip(indices, texts)]
    end = max((max(w) + 1 for w in words if w), default=0)
    for index in range(end):
        first = words[0].get(index)
        if any(w.get(index) != first for w in words):
            return index
    return None


def critical_columns(choices: Sequence[DocScore]) -> dict[str, list]:
    """A record's critical-word columns of choices.parquet, one value per choice (null: no word there)."""
    rows = [d.word_rows() for d in choices]
    indices = [np.asarray(r["word"]).tolist() for r in rows]
    index = critical_index(indices, [r["text"] for r in rows])
    columns: dict[str, list] = {name: [] for name, _ in CRITICAL_FIELDS}
    for row, words in zip(rows, indices):
        at = words.index(index) if index is not None and index in words else None
        columns["critical_word"].append(index)
        columns["critical_text"].append(None if at is None else row["text"][at])
        for name in ("surprisal", "surprisal_corrected"):
            value = math.nan if at is None else float(row[name][at])  # NaN: a truncated text's last word
            columns[f"critical_{name}"].append(None if math.isnan(value) else value)
    return columns


def critical_pairs(batches: Iterable[pa.RecordBatch]) -> tuple[np.ndarray, np.ndarray]:
    """The records of two choices among choices.parquet's rows, and their critical surprisals.

    Returns the records' doc numbers [n] and their values [n, 2, 2]: (first choice, second choice) by
    (surprisal, corrected surprisal), NaN where unknown.
    """
    docs, choices, values = [], [], []
    for batch in batches:
        docs.append(batch.column("doc").to_numpy())
        choices.append(batch.column("choice").to_numpy())
        values.append(
            np.stack(
                [
                    pc.fill_null(batch.column(c), np.nan).to_numpy(zero_copy_only=False)
                    for c in ("critical_surprisal", "critical_surprisal_corrected")
                ],
                axis=1,
            )
        )
    if not docs:
        return np.zeros(0, np.int64), np.zeros((0, 2, 2))
    doc, choice, value = np.concatenate(docs), np.concatenate(choices), np.concatenate(values)
    order = np.lexsort((choice, doc))
    doc, value = doc[order], value[order]
    records, first, counts = np.unique(doc, return_index=True, return_counts=True)
    two = first[counts == 2]
    return records[counts == 2], np.stack([value[two], value[two + 1]], axis=1)
