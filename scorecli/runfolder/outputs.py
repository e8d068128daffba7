"""Write scores as JSON lines to a stream, and read back the metadata scorecli writes into Parquet files.

Layer: run folder. It must not import the engine, the analysis, the executors or the front of scorecli, nor torch,
transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TextIO

import pyarrow.parquet as pq

from scorecli.base.errors import UsageError, reading
from scorecli.data.choices import ChoiceLayout, choice_sequence_table, choice_table, group, scored
from scorecli.data.scores import DEFAULT_STATS, DocScore
from scorecli.data.tables import sequence_table, token_table, word_schema, word_table
from scorecli.inputs.kept import JSON_MARK, json_default, json_value
from scorecli.inputs.records import Rejected

# The table whose rows each kind of JSON-lines output writes: the Parquet files' rows, column for column.
ROW_TABLES = {"sequences": sequence_table, "tokens": token_table, "words": word_table}


class JsonlOutput:
    """Write rows of scores as one JSON object per line (non-finite numbers as null).

    `rows` is "sequences" (a line per document), "tokens" (per scored token) or "words" (per word), with
    the columns of sequences.parquet, tokens.parquet or words.parquet for a run that computes the token
    columns `stats`. A line per document ends with the kept input fields `keep`, their values as read
    (a Parquet value as its Python value: dates and times as ISO 8601 text, binary as base64).
    """

    def __init__(
        self,
        stream: TextIO,
        rows: str = "sequences",
        stats: Iterable[str] = DEFAULT_STATS,
        keep: Iterable[str] = (),
        choices: ChoiceLayout | None = None,
    ) -> None:
        """Write `rows` with the token columns `stats` (and for sequences the kept fields `keep`) to `stream`.

        A run of records with choices (`choices`, its layout) writes a line per record with its choices
        (`choices`: their rows of choices.parquet), or (`rows` "choices") a line per choice.
        """
        kinds = [*ROW_TABLES, "choices"] if choices is not None else list(ROW_TABLES)
        if rows not in kinds:
            raise UsageError(f"must be one of {', '.join(kinds)}, not {rows!r}", arg="rows")
        self.stream = stream
        self.choices, self.rows = choices, rows
        self.table = (
            ROW_TABLES.get(rows) if rows in ("words", "choices") else partial(ROW_TABLES[rows], stats=tuple(stats))
        )
        if choices is not None and rows == "tokens":
            self.table = partial(token_table, stats=tuple(stats), choices=True)
        elif choices is not None and rows == "words":
            self.table = partial(word_table, schema=word_schema(True))
        self.keep = tuple(keep) if rows == "sequences" else ()
        self.rejected = 0

    def reject(self, rejected: Rejected) -> None:
        """Count a record that could not be scored (the stream has no place for it)."""
        self.rejected += 1

    def save(self, docs: list[DocScore], records_done: int, summary: dict) -> None:
        """Write the documents' lines and flush them downstream."""
        rows, kept = self._rows(docs)
        if self.keep:
            for row, doc in zip(rows, kept):
                row.update({name: json_value((doc.kept or {}).get(name)) for name in self.keep})
        for row in rows:
            self.stream.write(json.dumps(finite(row), ensure_ascii=False, default=json_default) + "\n")
        self.stream.flush()

    def _rows(self, docs: list[DocScore]) -> tuple[list[dict], list[DocScore]]:
        """The lines' rows, and the documents whose kept fields they end with (one per line of sequences)."""
        if self.choices is None:
            return self.table(docs).to_pylist(), docs
        records = list(group(docs))
        if self.rows == "choices":
            return choice_table(records, self.choices).to_pylist(), []
        if self.rows != "sequences":
            return self.table(scored(docs)).to_pylist(), []
        rows = choice_sequence_table(records, self.choices).to_pylist()
        for row, record in zip(rows, records):
            choices = choice_table([record], self.choices).to_pylist()
            row["choices"] = [{k: v for k, v in c.items() if k not in ("doc", "id")} for c in choices]
        return rows, [r.first for r in records]

    def finish(self, records_read: int, summary: dict, errors_file: bool) -> list[Path]:
        """Flush the stream; nothing is written to disk."""
        self.stream.flush()
        return []

    def abort(self) -> None:
        """Flush what was written."""
        self.stream.flush()


def write_result_lines(stream: TextIO, path: str | Path, choices: str | Path | None = None) -> None:
    """Write the rows of a scorecli Parquet file as JsonlOutput writes rows: kept JSON text as the values it holds.

    The sequence rows of a choice run hold their records' rows of the file `choices` under "choices".
    """
    nested: dict[int, list[dict]] = {}
    if choices is not None:
        for c in pq.read_table(choices).to_pylist():
            nested.setdefault(c.pop("doc"), []).append({k: v for k, v in c.items() if k != "id"})
    with pq.ParquetFile(path) as source:
        texts = [f.name for f in source.schema_arrow if f.metadata == JSON_MARK]
        own = [f.name for f in source.schema_arrow if f.name not in texts]
        for batch in source.iter_batches():
            for row in batch.to_pylist():
                for name in texts:
                    row[name] = None if row[name] is None else json.loads(row[name])
                if choices is not None:
                    # As JsonlOutput: the record's own columns, its choices, then its kept fields.
                    row = {**{k: row[k] for k in own if k in row}, "choices": nested.get(row["doc"], []), **row}
                stream.write(json.dumps(finite(row), ensure_ascii=False, default=json_default) + "\n")
            stream.flush()


def finite(row: dict) -> dict:
    """A row with non-finite floats as None, since JSON has no infinity or NaN."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The key/value metadata scorecli wrote into a Parquet output file; OutputError where it cannot be read."""
    with reading(path):
        meta = pq.read_schema(path).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:")}


def read_json_object(path: str | Path) -> dict:
    """The JSON object a file holds; ValueError where it holds another JSON value (see errors.reading)."""
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {_json_kind(value)}")
    return value


def _json_kind(value: object) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    kinds = {bool: "true or false", str: "a string", list: "an array", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)
