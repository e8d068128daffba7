"""A finished run, read back (`open_run`): its results, summary and metadata, documents, texts and previews.

`show`, `compare`, `report` and `filter` read runs through `FinishedRun`, whatever their layout (a single
process's files or a --ray run's datasets: runfolder/layout.py). Needs pyarrow, not torch; must not import the
engine or the run's writers. A document's text comes from the run's input file where it is at hand (the
same name and size as when scored), so tokens show as the characters they cover; otherwise from the decoded
tokens of tokens.parquet. A file of the run that is missing, truncated or garbled is an OutputError naming it.

Layer: run folder. It must not import the engine, the analysis, the executors or the front of scorecli, nor torch,
transformers, rich, typer, ray, plotly or lm_eval.
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

from scorecli.base.errors import InputError, OutputError, UsageError, reading, shown
from scorecli.inputs.corpus import read_corpus
from scorecli.inputs.records import Fields
from scorecli.runfolder.layout import CHOICES_FILE, SEQUENCES_FILE, SUMMARY_FILE, TOKENS_FILE, WORDS_FILE, kind_dir
from scorecli.runfolder.outputs import read_json_object, read_metadata


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
    def is_choice_run(self) -> bool:
        """Whether it scored records with choices (`choices_field`): choices.parquet, a sequence row per record."""
        return bool(self.metadata.get("choices_field"))

    @property
    def choices(self) -> pa.Table | None:
        """choices.parquet: a row per (record, choice), or None where the run has no choices."""
        if not self.is_choice_run:
            return None
        if not self.has(CHOICES_FILE):
            raise OutputError(f"{shown(self.folder / CHOICES_FILE)}: is missing")
        return self.read(CHOICES_FILE)

    def choice_texts(self, docs: list[int]) -> dict[int, ChoiceTexts]:
        """The context and choices of some records of a choice run, from its input file where it is at hand."""
        return choice_texts(self.folder, docs)

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
        with reading(path):
            figures = read_json_object(path).get("summary", {})
            if not isinstance(figures, dict):
                raise ValueError("its summary is not a JSON object")
        return figures

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


@dataclass(frozen=True)
class ChoiceTexts:
    """A record of a choice run as it was scored: its context, and the text each choice was scored in.

    `texts[i]` is choice i's context and choice (where the context is a plain prompt) or the choice alone
    (no context): the text its token rows' `start` and `end` point into; `choices[i]` is the choice itself.
    """

    context: str
    texts: list[str]
    choices: list[str]


def open_run(folder: str | Path | FinishedRun) -> FinishedRun:
    """The finished run in `folder`, of either layout; OutputError naming what is missing where there is none."""
    if isinstance(folder, FinishedRun):
        return folder
    return FinishedRun(check_run(folder))


def result_files(run: str | Path, name: str) -> list[Path]:
    """The Parquet files of one of a run's results (`TOKENS_FILE`…): the file, or a --ray run's dataset folder's files.

    A --ray run writes each result as a folder of one file per shard (tokens/00000.parquet, …), in input order,
    as many as its metadata's `shards` says: one missing, or one more, is an OutputError naming it.
    """
    path = Path(run) / name
    if path.is_file():
        return [path]
    folder = Path(run) / kind_dir(name)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return []
    shards = read_metadata(files[0]).get("shards", "")
    names = [f"{n:05d}.parquet" for n in range(int(shards) if shards.isdigit() else len(files))]
    for missing in sorted(set(names) - {f.name for f in files}):
        raise OutputError(f"{shown(folder / missing)}: is missing")
    for extra in sorted({f.name for f in files} - set(names)):
        raise OutputError(f"{shown(folder / extra)}: is not one of the run's {len(names)} shard files")
    return files


def has_result(run: str | Path, name: str) -> bool:
    """Whether a run holds one of the results (`WORDS_FILE`…), as a file or a dataset folder."""
    return bool(result_files(run, name))


def read_result(run: str | Path, name: str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """One of a run's results as one table, its files' rows in order."""
    tables = []
    for path in result_files(run, name):
        with reading(path):
            tables.append(pq.read_table(path, columns=columns, filters=filters))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def result_batches(run: str | Path, name: str, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """One of a run's results a batch of rows at a time, in order."""
    for path in result_files(run, name):
        with reading(path):
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def result_rows(run: str | Path, name: str) -> int:
    """The number of rows of one of a run's results."""
    rows = 0
    for path in result_files(run, name):
        with reading(path):
            rows += pq.ParquetFile(path).metadata.num_rows
    return rows


def check_run(folder: str | Path, needs: tuple[str, ...] = (SEQUENCES_FILE, TOKENS_FILE)) -> Path:
    """The folder of a finished run holding the results it `needs`, or OutputError naming what is missing.

    A run is finished when its summary.json is there (it is written last); a result missing beside it is damage.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(f"{folder}: no such run folder")
    finished = (folder / SUMMARY_FILE).is_file()
    for name in needs:
        if not has_result(folder, name):
            if finished:
                raise OutputError(f"{shown(folder / name)}: is missing")
            raise OutputError(f"{folder}: not a finished scorecli run (no {name})")
    if not finished:
        raise OutputError(f"{folder}: not a finished scorecli run (no {SUMMARY_FILE})")
    return folder


def run_metadata(run: Path) -> dict[str, str]:
    """The metadata a run's files carry."""
    return read_metadata(result_files(run, SEQUENCES_FILE)[0])


def token_columns(run: Path) -> list[str]:
    """The columns of a run's tokens.parquet (runs may carry optional ones: rank, kl, top_ids…)."""
    path = result_files(run, TOKENS_FILE)[0]
    with reading(path):
        return pq.read_schema(path).names


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
    """The texts of some documents from the run's input files, or {} where they are not at hand or changed.

    A --join run's one document is the text it scored: its input's texts joined by its separator.
    """
    meta = run_metadata(run)
    sources = _input_files(run, meta)
    if not docs or not sources or meta.get("messages_field"):
        return {}  # chats are rendered by the tokenizer's template: their text is not the input's
    fields = Fields(
        text=meta.get("text_field", "text"),
        id=meta.get("id_field") if meta.get("id_field") != "None" else None,
        prompt=meta.get("prompt_field"),
        response=meta.get("response_field"),
    )
    try:
        if "join" in meta:
            limit = int(meta["limit"]) if meta.get("limit", "").isdigit() else None
            [joined] = read_corpus(sources, fields, join=json.loads(meta["join"]), limit=limit)
            return {0: joined.text} if 0 in docs else {}
        wanted, last, texts = set(docs), max(docs), {}
        for record in read_corpus(sources, fields, on_error=lambda r: None):
            if record.doc in wanted:
                texts[record.doc] = record.text
            if record.doc >= last:
                break
        return texts
    except (InputError, OSError, ValueError):
        return {}


def choice_texts(run: Path, docs: list[int]) -> dict[int, ChoiceTexts]:
    """The context and choices of some records of a choice run from its input files; {} where not at hand or changed.

    A chat's context is rendered by the tokenizer's template, so it is not the input's text: {} for those too.
    """
    meta = run_metadata(run)
    sources = _input_files(run, meta)
    if not docs or not sources or not meta.get("choices_field") or meta.get("messages_field"):
        return {}
    label = meta.get("label_field")
    fields = Fields(
        id=meta.get("id_field") if meta.get("id_field") != "None" else None,
        prompt=meta.get("prompt_field"),
        choices=tuple(name.strip() for name in meta["choices_field"].split(",")),
        label=label if label and label != "None" else None,
    )
    wanted, last, found = set(docs), max(docs), {}
    try:
        for record in read_corpus(sources, fields, on_error=lambda r: None):
            if record.doc in wanted and record.choice is not None and not record.choice.unconditional:
                found.setdefault(record.doc, []).append(record)
            if record.doc > last:
                break
    except (InputError, OSError, ValueError):
        return {}
    out = {}
    for doc, records in found.items():
        start = records[0].spans[0][0] if records[0].spans else 0
        texts = [r.text for r in records]
        out[doc] = ChoiceTexts(texts[0][:start], texts, [r.choice.text for r in records])
    return out


def choice_token_rows(tokens: pa.Table, texts: ChoiceTexts | None, choice: int) -> tuple[pa.Table, str | None]:
    """One choice's token rows of a record's, with the choice's own text, their `start` and `end` pointing into it.

    The rows as they are, and no text, where the record's texts are not at hand (None).
    """
    mine = tokens.filter(pc.equal(tokens.column("choice"), choice))
    if texts is None:
        return mine, None
    # The token rows point into the context and the choice together: the context is shown apart, once.
    offset = len(texts.context)
    for name in ("start", "end"):
        if name in mine.column_names:
            mine = mine.set_column(mine.schema.get_field_index(name), name, pc.subtract(mine.column(name), offset))
    return mine, texts.texts[choice][offset:]


def _input_files(run: Path, meta: dict[str, str]) -> list[str]:
    """The run's input files where every one is at hand with the size it had when scored; [] otherwise.

    A name that is relative and not found from here is looked for beside the run folder.
    """
    names, sizes = meta.get("input"), meta.get("input_size")
    if not names or not sizes:
        return []  # standard input, or a URL whose size was not known
    try:
        # Several files are JSON arrays (corpus_metadata); one file's size is a plain number.
        names, sizes = (json.loads(names), json.loads(sizes)) if sizes.startswith("[") else ([names], [int(sizes)])
    except ValueError:
        return []
    found = []
    for name, size in zip(names, sizes):
        path = Path(name)
        if not path.is_absolute() and not path.exists():
            path = Path(run).parent / name
        try:
            if not path.is_file() or os.stat(path).st_size != size:
                return []
        except OSError:
            return []
        found.append(str(path))
    return found if len(found) == len(names) == len(sizes) else []


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
