"""A finished run, read back (`open_run`): its results, summary and metadata, documents, texts and previews.

`show`, `compare`, `report` and `filter` read runs through `FinishedRun`, whatever their layout (a single
process's files or a --ray run's datasets: layout.py). Needs pyarrow, not torch; must not import the
engine or the run's writers. A document's text comes from the run's input file where it is at hand (the
same name and size as when scored), so tokens show as the characters they cover; otherwise from the decoded
tokens of tokens.parquet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scorecli.errors import InputError, OutputError, UsageError
from scorecli.inputs import Fields, read_records
from scorecli.layout import SEQUENCES_FILE, SUMMARY_FILE, TOKENS_FILE, WORDS_FILE, result_files
from scorecli.outputs import read_metadata


@dataclass(frozen=True)
class FinishedRun:
    """A finished run's folder, a single process's or a --ray run's alike: its results, summary and metadata."""

    folder: Path

    def __str__(self) -> str:
        """The folder, as messages name the run."""
        return str(self.folder)

    def files(self, name: str) -> list[Path]:
        """The Parquet files of one of its results (`TOKENS_FILE`…), in order."""
        return result_files(self.folder, name)

    def has(self, name: str) -> bool:
        """Whether it holds one of the results (`WORDS_FILE`…)."""
        return has_result(self.folder, name)

    def read(self, name: str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
        """One of its results as one table (some `columns`, rows passing `filters`)."""
        return read_result(self.folder, name, columns, filters)

    def batches(self, name: str, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        """One of its results a batch of rows at a time, in order."""
        return result_batches(self.folder, name, columns, batch_size)

    def rows(self, name: str) -> int:
        """The number of rows of one of its results."""
        return result_rows(self.folder, name)

    @property
    def sequences(self) -> pa.Table:
        """sequences.parquet: a row per document."""
        return self.read(SEQUENCES_FILE)

    @property
    def tokens(self) -> pa.Table:
        """tokens.parquet: a row per token (read whole: see `batches` for a large run)."""
        return self.read(TOKENS_FILE)

    @property
    def words(self) -> pa.Table | None:
        """words.parquet: a row per word, or None where the run has no words."""
        return self.read(WORDS_FILE) if self.has(WORDS_FILE) else None

    @property
    def metadata(self) -> dict[str, str]:
        """The metadata its files carry."""
        return run_metadata(self.folder)

    @property
    def summary(self) -> dict:
        """Its headline figures, from summary.json ({} where it has none)."""
        path = self.folder / SUMMARY_FILE
        if not path.is_file():
            return {}
        return json.loads(path.read_text(encoding="utf-8")).get("summary", {})

    def token_columns(self) -> list[str]:
        """The columns of its tokens.parquet."""
        return token_columns(self.folder)

    def doc_tokens(self, docs: list[int], columns: list[str] | None = None) -> pa.Table:
        """The token rows of some documents."""
        return doc_tokens(self.folder, docs, columns)

    def find_doc(self, doc: int | None = None, doc_id: str | None = None) -> dict:
        """The sequences row of a document given by number or id; UsageError if the run has none such."""
        return find_doc(self.folder, doc, doc_id)

    def input_texts(self, docs: list[int]) -> dict[int, str]:
        """The texts of some documents from its input file, or {} where it is not at hand or changed."""
        return input_texts(self.folder, docs)

    def previews(self, docs: list[int], chars: int = 120) -> dict[int, str]:
        """The start of each document's scored text, one line."""
        return previews(self.folder, docs, chars)


def open_run(folder: str | Path | FinishedRun) -> FinishedRun:
    """The finished run in `folder`, of either layout; OutputError naming what is missing where there is none."""
    if isinstance(folder, FinishedRun):
        return folder
    return FinishedRun(check_run(folder))


def has_result(run: str | Path, name: str) -> bool:
    """Whether a run holds one of the results (`WORDS_FILE`…), as a file or a dataset folder."""
    return bool(result_files(run, name))


def read_result(run: str | Path, name: str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """One of a run's results as one table, its files' rows in order."""
    files = result_files(run, name)
    tables = [pq.read_table(f, columns=columns, filters=filters) for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def result_batches(run: str | Path, name: str, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """One of a run's results a batch of rows at a time, in order."""
    for path in result_files(run, name):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def result_rows(run: str | Path, name: str) -> int:
    """The number of rows of one of a run's results."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in result_files(run, name))


def check_run(folder: str | Path) -> Path:
    """The folder of a finished run, or OutputError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(f"{folder}: no such run folder")
    for name in (SEQUENCES_FILE, TOKENS_FILE):
        if not has_result(folder, name):
            raise OutputError(f"{folder}: not a finished scorecli run (no {name})")
    return folder


def run_metadata(run: Path) -> dict[str, str]:
    """The metadata a run's files carry."""
    return read_metadata(result_files(run, SEQUENCES_FILE)[0])


def token_columns(run: Path) -> list[str]:
    """The columns of a run's tokens.parquet (runs may carry optional ones: rank, kl, top_ids…)."""
    return pq.read_schema(result_files(run, TOKENS_FILE)[0]).names


def doc_tokens(run: Path, docs: list[int], columns: list[str] | None = None) -> pa.Table:
    """The token rows of some documents, read with a filter on `doc` (row groups of others are skipped)."""
    return read_result(run, TOKENS_FILE, columns=columns, filters=[("doc", "in", list(docs))])


def find_doc(run: Path, doc: int | None = None, doc_id: str | None = None) -> dict:
    """The sequences row of a document given by number or id; UsageError if the run has none such."""
    seq = read_result(run, SEQUENCES_FILE)
    if doc is not None:
        rows = seq.filter(pc.equal(seq.column("doc"), doc))
        if not rows.num_rows:
            span = f"0 to {seq.num_rows - 1}" if seq.num_rows else "none"
            raise UsageError(f"{doc}: no such document in {run} (documents: {span})", arg="doc")
    else:
        rows = seq.filter(pc.equal(seq.column("id"), doc_id))
        if not rows.num_rows:
            raise UsageError(f"{doc_id!r}: no document has this id in {run}", arg="doc_id")
    return rows.slice(0, 1).to_pylist()[0]


def input_texts(run: Path, docs: list[int]) -> dict[int, str]:
    """The texts of some documents from the run's input file, or {} where it is not at hand or changed."""
    meta = run_metadata(run)
    source = meta.get("input")
    if not docs or not source or meta.get("messages_field") or source == "-":
        return {}  # chats are rendered by the tokenizer's template: their text is not the input's
    path = Path(source)
    if not path.is_absolute() and not path.exists():
        path = Path(run).parent / source
    try:
        if not path.is_file() or str(os.stat(path).st_size) != meta.get("input_size"):
            return {}
        fields = Fields(
            text=meta.get("text_field", "text"),
            id=meta.get("id_field") if meta.get("id_field") != "None" else None,
            prompt=meta.get("prompt_field"),
            response=meta.get("response_field"),
        )
        wanted, last, texts = set(docs), max(docs), {}
        for record in read_records(path, fields=fields, on_error=lambda r: None):
            if record.doc in wanted:
                texts[record.doc] = record.text
            if record.doc >= last:
                break
        return texts
    except (InputError, OSError):
        return {}


def token_strings(tokens: pa.Table, text: str | None) -> list[str]:
    """Each token row's text: the characters it covers where the text is at hand, else its decoded form."""
    decoded = tokens.column("token").to_pylist()
    if text is None:
        return [t or "" for t in decoded]
    starts, ends = tokens.column("start").to_pylist(), tokens.column("end").to_pylist()
    out, at = [], 0
    for a, b in zip(starts, ends):
        # A character split across tokens shows once, with its first token; the others show nothing.
        out.append(text[max(a, at) : b])
        at = max(at, b)
    return out


def previews(run: Path, docs: list[int], chars: int = 120) -> dict[int, str]:
    """The start of each document's scored text (from its first scored token), one line."""
    if not docs:
        return {}
    texts = input_texts(run, docs)
    rows = doc_tokens(run, docs, ["doc", "token", "start", "end", "is_response"])
    rows = rows.filter(rows.column("is_response"))
    out: dict[int, str] = {}
    for doc in docs:
        mine = rows.filter(pc.equal(rows.column("doc"), doc))
        if not mine.num_rows:
            out[doc] = texts.get(doc, "")[:chars]
        elif doc in texts:
            out[doc] = texts[doc][mine.column("start")[0].as_py() :][:chars]
        else:
            out[doc] = "".join(token_strings(mine.slice(0, chars), None))[:chars]
    return {d: " ".join(t.split()) for d, t in out.items()}
