"""Stream input records from JSONL (a file, gzip or stdin) or Parquet, validating each as it is read.

Layer: inputs. It must not import the data model, the engine, the run folder, the analysis, the executors or the
front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import errno
import gzip
import itertools
import json
import math
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from scorecli.base.errors import InputError, UsageError, first_line, shown
from scorecli.inputs.remote import is_url, open_url

STDIN = "-"
PARQUET_SUFFIXES = {".parquet", ".pq"}
_PARQUET_BATCH_ROWS = 4096
_COUNT_LIMIT_BYTES = 1 << 30


Spans = tuple[tuple[int, int], ...]
Messages = tuple[tuple[str, str], ...]
# The role of a choice's turn after a conversation: the assistant's next reply.
CHOICE_ROLE = "assistant"


@dataclass(frozen=True)
class Choice:
    """One choice of a record with choices (`Fields.choices`), as the Record that scores it carries it.

    A record with choices is scored as one Record per choice, each its context followed by the choice (the
    choice's span scored); with `unconditional`, one more per choice scores the choice alone after BOS.
    All of a record's Records carry its `doc`; `index` is the choice's (0-based) among the record's `count`,
    `name` the field it came from (choices given as several fields), `text` the choice itself, `label` the
    index of the right choice where the record gives one. `last` marks the record's last Record: a record's
    Records stay in one read-ahead buffer, so that their shared context is fed once.
    """

    index: int
    count: int
    text: str
    name: str | None = None
    label: int | None = None
    unconditional: bool = False
    last: bool = False


@dataclass(frozen=True)
class Record:
    """One input document: its 0-based position in the input, its text and optional id.

    `spans` are the character spans of `text` to score (None: all of it); `messages` is a conversation
    still to be rendered into `text`, and `chat` marks a text that was rendered from one. `regions` are the
    character spans of the words where the input gave the text cut into words (`Fields.words`). `kept` holds the
    values of the fields to copy into the outputs (`Fields.keep`): JSON values, or one-row Arrow arrays
    for Parquet columns; scoring never looks at them. `source` is the input it was read from, named as
    `Rejected.source` names it, and `line` its line (or row) there.
    """

    doc: int
    text: str
    id: str | None = None
    spans: Spans | None = None
    messages: Messages | None = None
    chat: bool = False
    where: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)
    kept: dict[str, object] | None = field(default=None, compare=False)
    source: str = field(default="", compare=False)
    regions: Spans | None = None
    choice: Choice | None = None

    @property
    def key(self) -> int | tuple[int, int, bool]:
        """What tells this Record from every other of a run: its doc, and for a choice its index and kind."""
        return self.doc if self.choice is None else (self.doc, self.choice.index, self.choice.unconditional)


@dataclass(frozen=True)
class Rejected:
    """An input record that could not be scored: where it is, why, and its raw content."""

    doc: int
    source: str
    line: int
    reason: str
    raw: str


@dataclass(frozen=True)
class Fields:
    """Which fields of a record hold what: plain text, text cut into words, a prompt and a response, or a conversation.

    `words` names a field holding the text as a list of words or regions, joined by single spaces to make the
    text. `keep` names fields copied, untouched, into the outputs.
    """

    text: str = "text"
    id: str | None = "id"
    prompt: str | None = None
    response: str | None = None
    messages: str | None = None
    keep: tuple[str, ...] = ()
    words: str | None = None
    choices: tuple[str, ...] = ()
    label: str | None = None
    unconditional: bool = False

    @property
    def required(self) -> list[str]:
        """The fields every record must have."""
        if self.choices:
            return [*self.choices, *(f for f in (self.prompt, self.messages) if f)]
        if self.messages:
            return [self.messages]
        if self.words:
            return [self.words]
        return [self.prompt, self.response] if self.prompt else [self.text]


def fields_of(
    text_field: str | None = None,
    id_field: str | None = "id",
    prompt_field: str | None = None,
    response_field: str | None = None,
    messages_field: str | None = None,
    keep: tuple[str, ...] = (),
) -> Fields:
    """The Fields that these options name, checking that they name one consistent way to find the text."""
    if text_field is not None and (messages_field is not None or prompt_field is not None):
        other = "`messages_field`" if messages_field is not None else "`prompt_field`/`response_field`"
        raise UsageError(f"cannot be combined with {other}, which say where the text is", arg="text_field")
    if (prompt_field is None) != (response_field is None):
        raise UsageError("`prompt_field` and `response_field` go together: give both or neither")
    if messages_field is not None and prompt_field is not None:
        raise UsageError("cannot be combined with `prompt_field`/`response_field`", arg="messages_field")
    return Fields(text_field or "text", id_field, prompt_field, response_field, messages_field, keep)


def parse_choice_fields(spec: str | None) -> tuple[str, ...]:
    """The fields a `choices_field` names: one (an array of choices), or several separated by commas (none: None)."""
    if spec is None:
        return ()
    names = tuple(name.strip() for name in spec.split(","))
    if not all(names) or len(set(names)) != len(names):
        why = f"must name one field, or distinct fields separated by commas, not {spec!r}"
        raise UsageError(why, arg="choices_field")
    return names


def display_name(source: str | Path) -> str:
    """Name an input the way error messages and metadata refer to it."""
    return "<stdin>" if str(source) == STDIN else str(source)


def is_parquet(source: str | Path) -> bool:
    """Tell whether an input path is read as Parquet (by its suffix)."""
    return str(source) != STDIN and Path(source).suffix.lower() in PARQUET_SUFFIXES


def read_records(
    source: str | Path,
    text_field: str = "text",
    id_field: str | None = "id",
    *,
    fields: Fields | None = None,
    on_error: Callable[[Rejected], None] | None = None,
    skip: int = 0,
    limit: int | None = None,
    at: tuple[int, int] = (0, 0),
) -> Iterator[Record]:
    """Yield the records of a JSONL or Parquet input in order, validating each as it is read.

    A bad record raises InputError, or goes to `on_error` and is skipped. `fields` overrides the two field
    names; `skip` passes over the first records unread (validated only as JSON), for resuming a run;
    `limit` stops after the first `limit` records (rejected ones count). `at` starts reading part-way,
    record 0 being the first there: (byte offset of a line start, lines before it) in a plain JSONL file,
    (row group, rows before it) in a Parquet file; line and row numbers still count from the file's start.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"must be at least 1, not {limit}", arg="limit")
    fields = fields or Fields(text_field, id_field)
    rows = _parquet_rows(source, fields, *at) if is_parquet(source) else _jsonl_rows(source, *at)
    name, shown_name = display_name(source), shown(display_name(source))
    unit = "row" if is_parquet(source) else "line"
    doc = 0
    for number, row, raw, kept in rows:
        if doc == limit:
            break
        if doc >= skip:
            where = f"{shown_name}: {unit} {number}"
            try:
                if isinstance(row, str):
                    raise InputError(f"{where}: {row}")
                records = expand(_record(doc, row, fields, where, number, kept, name), row, fields)
            except InputError as e:
                if on_error is None:
                    raise
                on_error(Rejected(doc, name, number, str(e).removeprefix(f"{where}: "), _raw_text(row, raw)))
            else:
                yield from records
        doc += 1
    if doc == 0:
        raise InputError(f"{shown_name}: no records to score (the input is empty)")


def read_rows(
    rows: Iterable[Mapping], fields: Fields | None = None, *, name: str = "records", limit: int | None = None
) -> Iterator[Record]:
    """Validate records held in memory (dicts, as JSON lines decode) as read_records does a file's lines.

    A bad record raises InputError naming it by its position, `name[3]`; `limit` stops after the first
    `limit` records.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"must be at least 1, not {limit}", arg="limit")
    fields = fields or Fields()
    for doc, row in enumerate(itertools.islice(rows, limit)):
        where = f"{name}[{doc}]"
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: expected a record (a dict), got {_json_type(row)}")
        yield from expand(_record(doc, dict(row), fields, where, doc + 1), row, fields)


def _raw_text(row: dict | str, raw: bytes | None) -> str:
    """A rejected record as text: its line as read, or its Parquet row as JSON (made only when needed)."""
    if raw is not None:
        return raw.decode("utf-8", "replace").rstrip("\r\n")
    return json.dumps(row, ensure_ascii=False, default=str)


def _record(
    doc: int, row: dict, fields: Fields, where: str, line: int, kept: dict | None = None, source: str = ""
) -> Record:
    """A validated Record from one decoded row of the input `source`, or InputError naming the place and the field.

    `kept` are the values of the kept fields where the reader took them itself (Parquet); else they come
    from the row, a missing field as null.
    """
    doc_id = _id(row, fields.id, where)
    if kept is None and fields.keep:
        kept = {name: _checked_json(row.get(name), name, where) for name in fields.keep}
    if fields.choices:
        # The context alone: `expand` makes the Records that are scored, one per choice.
        context = _text(row, fields.prompt, where) if fields.prompt else ""
        messages = _messages(row, fields.messages, where) if fields.messages else None
        return Record(doc, context, doc_id, messages=messages, where=where, line=line, kept=kept, source=source)
    if fields.messages:
        messages = _messages(row, fields.messages, where)
        return Record(doc, "", doc_id, messages=messages, where=where, line=line, kept=kept, source=source)
    if fields.words:
        text, regions = _words(row, fields.words, where)
        return Record(doc, text, doc_id, where=where, line=line, kept=kept, regions=regions, source=source)
    if fields.prompt:
        prompt, response = _text(row, fields.prompt, where), _text(row, fields.response, where)
        text = prompt + response
        spans = ((len(prompt), len(text)),)
        return Record(doc, text, doc_id, spans=spans, where=where, line=line, kept=kept, source=source)
    return Record(doc, _text(row, fields.text, where), doc_id, where=where, line=line, kept=kept, source=source)


def expand(record: Record, row: Mapping, fields: Fields) -> list[Record]:
    """The Records that score a record: itself, or where `fields` names choices, one per choice (see Choice).

    A choice follows its context (the prompt, or the conversation as the assistant's next reply) as a
    response follows its prompt; without a context it is a text of its own, scored from BOS. With
    `fields.unconditional`, each choice is also scored alone, after the conditional ones. InputError
    names the record and the field where the choices or the label are not what they must be.
    """
    if not fields.choices:
        return [record]
    texts, names = _choices(row, fields.choices, record.where)
    label = _label(row, fields.label, texts, record.where) if fields.label else None
    count = len(texts)
    kinds = (False, True) if fields.unconditional else (False,)
    out = []
    for unconditional in kinds:
        for index, (text, name) in enumerate(zip(texts, names)):
            choice = Choice(index, count, text, name, label, unconditional)
            if unconditional or (record.messages is None and not record.text):
                out.append(replace(record, text=text, messages=None, choice=choice))
            elif record.messages is not None:
                out.append(replace(record, messages=(*record.messages, (CHOICE_ROLE, text)), choice=choice))
            else:
                full = record.text + text
                out.append(replace(record, text=full, spans=((len(record.text), len(full)),), choice=choice))
    out[-1] = replace(out[-1], choice=replace(out[-1].choice, last=True))
    return out


def _choices(row: Mapping, names: tuple[str, ...], where: str) -> tuple[list[str], list[str | None]]:
    """A record's choices: the array of strings one field holds, or the strings of several fields (with their names)."""
    if len(names) > 1:
        texts = [_text(row, name, where) for name in names]
        for name, text in zip(names, texts):
            if not text.strip():
                raise InputError(f"{where}: field '{name}' (a choice) is empty")
        return texts, list(names)
    field_name = names[0]
    value = row.get(field_name)
    if not isinstance(value, list) or not value:
        got = "missing" if field_name not in row else "an empty array" if value == [] else _json_type(value)
        raise InputError(f"{where}: field '{field_name}' must be a non-empty array of choices (strings), got {got}")
    for i, choice in enumerate(value):
        if not isinstance(choice, str):
            raise InputError(f"{where}: field '{field_name}': choice {i} must be a string, got {_json_type(choice)}")
        if not choice.strip():
            raise InputError(f"{where}: field '{field_name}': choice {i} is empty")
        _checked_unicode(choice, field_name, where)
    return list(value), [None] * len(value)


def _label(row: Mapping, field_name: str, choices: list[str], where: str) -> int:
    """The index of a record's right choice: its label field, an index or the text of one choice (the first such)."""
    if field_name not in row or row[field_name] is None:
        got = "missing" if field_name not in row else "null"
        raise InputError(f"{where}: field '{field_name}' (the label) is {got}")
    value = row[field_name]
    if isinstance(value, str):
        if value not in choices:
            raise InputError(f"{where}: field '{field_name}': {value!r} is none of the {len(choices)} choices")
        return choices.index(value)
    if isinstance(value, bool) or not isinstance(value, int):
        got = _json_type(value)
        raise InputError(f"{where}: field '{field_name}' must be a choice's index or text, got {got}")
    if not 0 <= value < len(choices):
        raise InputError(f"{where}: field '{field_name}': {value} is out of range (0 to {len(choices) - 1})")
    return value


def count_records(source: str | Path) -> int | None:
    """Count the records of an input, or None where that cannot be done cheaply and safely."""
    if str(source) == STDIN or str(source).endswith(".gz"):
        return None
    try:
        info = os.stat(source)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _COUNT_LIMIT_BYTES:
            return None  # a pipe can be read only once; a huge file is not worth a second pass
        if is_parquet(source):
            import pyarrow.parquet as pq

            return pq.ParquetFile(source).metadata.num_rows
        with open(source, "rb") as f:
            return sum(1 for line in f if line.strip())
    except Exception:  # the reader reports the real problem with its own message
        return None


def open_binary(source: str | Path) -> BinaryIO:
    """Open a JSONL input for binary reading, with a clear error when that fails."""
    if str(source) == STDIN:
        return sys.stdin.buffer
    if is_url(source):
        return open_url(str(source), compression="gzip" if str(source).endswith(".gz") else None)
    path = _check_file(source)
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise _file_error(path, e) from None


def _check_file(source: str | Path) -> Path:
    """The input's path, or InputError saying why it is no file to read (missing, a folder, a link loop…)."""
    path = Path(source)
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise InputError(f"{shown(path)}: is a directory, not an input file")
    except OSError as e:
        raise _file_error(path, e) from None
    return path


def _file_error(path: Path, e: OSError) -> InputError:
    """An input file that cannot be opened, in plain words."""
    if e.errno == errno.ELOOP:
        return InputError(f"{shown(path)}: is a symbolic link loop, not a file")
    if e.errno == errno.ENOENT:
        broken = " (a symbolic link to a missing file)" if os.path.islink(path) else ""
        return InputError(f"{shown(path)}: no such file{broken}")
    if e.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"{shown(path)}: permission denied")
    return InputError(f"{shown(path)}: cannot be read ({e.strerror or e})")


def _jsonl_rows(
    source: str | Path, start: int = 0, lines_before: int = 0
) -> Iterator[tuple[int, dict | str, bytes, None]]:
    """Yield (line number, JSON object or why the line is not one, raw line, None) for each non-blank line.

    A plain file may be read from byte `start`, a line's start with `lines_before` lines before it.
    """
    name = display_name(source)
    f = open_binary(source)
    try:
        if start:
            f.seek(start)
        for number, raw in enumerate(_lines(f, name), start=lines_before + 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.strip():
                yield number, _decode(raw), raw, None
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _decode(raw: bytes) -> dict | str:
    """A line's JSON object, or the reason it is not one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {e.start})"
    try:
        row = json.loads(line.rstrip("\r\n"), parse_constant=_reject_constant)
    except _NonFiniteLiteral as e:
        return f"not valid JSON ({e} is not a JSON value: non-finite numbers have no JSON form)"
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    return row if isinstance(row, dict) else f"expected a JSON object, got {_json_type(row)}"


class _NonFiniteLiteral(ValueError):
    """A `NaN`, `Infinity` or `-Infinity` literal, which Python's json accepts and JSON does not."""


def _reject_constant(literal: str) -> float:
    """Refuse the non-standard literals Python's json module would otherwise turn into floats."""
    raise _NonFiniteLiteral(literal)


def _lines(f: BinaryIO, name: str) -> Iterator[bytes]:
    """Iterate the lines of a binary stream, turning read failures (bad gzip, I/O) into InputError."""
    try:
        yield from f
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{shown(name)}: cannot be read ({e})") from None


def _parquet_rows(
    source: str | Path, fields: Fields, row_group: int = 0, rows_before: int = 0
) -> Iterator[tuple[int, dict, None, dict | None]]:
    """Yield (1-based row number, {column: value}, None, kept values) for the needed columns of a Parquet file.

    A kept column's value is a one-row slice of the column, so that it keeps its Arrow type exactly; a kept
    field that is no column of this file is null. Reading starts at `row_group`, which has `rows_before`
    rows before it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(source) if is_url(source) else _check_file(source)
    try:
        pf = pq.ParquetFile(open_url(path) if is_url(source) else path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{shown(path)}: not a readable Parquet file ({first_line(e)})") from None
    schema = pf.schema_arrow
    for name in fields.required:
        if name not in schema.names:
            raise InputError(f"{shown(path)}: no column '{name}' (columns: {', '.join(schema.names)})")
        column_type = schema.field(name).type
        if name == fields.words or (fields.choices == (name,)):
            if not (pa.types.is_list(column_type) or pa.types.is_large_list(column_type)) or not _is_text_type(
                column_type.value_type
            ):
                raise InputError(f"{shown(path)}: column '{name}' has type {column_type}, expected a list of strings")
        elif name != fields.messages and not _is_text_type(column_type):
            raise InputError(f"{shown(path)}: column '{name}' has type {column_type}, expected string")
    optional = [name for name in (fields.id, fields.label) if name and name in schema.names]
    columns = list(dict.fromkeys(fields.required + optional))
    kept = [name for name in fields.keep if name in schema.names]
    absent = dict.fromkeys(name for name in fields.keep if name not in schema.names)
    number = rows_before
    groups = range(row_group, pf.num_row_groups) if row_group else None
    try:
        for batch in pf.iter_batches(
            batch_size=_PARQUET_BATCH_ROWS, columns=list(dict.fromkeys(columns + kept)), row_groups=groups
        ):
            values = {c: batch.column(c).to_pylist() for c in columns}
            for i in range(batch.num_rows):
                number += 1
                slices = {**absent, **{c: batch.column(c).slice(i, 1) for c in kept}} if fields.keep else None
                yield number, {c: values[c][i] for c in columns}, None, slices
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{shown(path)}: not a readable Parquet file ({first_line(e)})") from None


def _is_text_type(column_type: object) -> bool:
    """Whether a Parquet column holds strings: plain, large, or dictionary-encoded (pandas Categorical)."""
    import pyarrow as pa

    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    return pa.types.is_string(column_type) or pa.types.is_large_string(column_type)


def _text(row: dict, field: str, where: str) -> str:
    """Return a record's string field, or raise InputError naming the place and the field."""
    if field not in row:
        keys = ", ".join(map(str, row)) or "none"
        raise InputError(f"{where}: field '{field}' is missing (fields: {keys})")
    value = row[field]
    if value is None:
        raise InputError(f"{where}: field '{field}' is null")
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{field}' must be a string, got {_json_type(value)}")
    return _checked_unicode(value, field, where)


def _words(row: dict, field: str, where: str) -> tuple[str, Spans]:
    """A record's text given cut into words (or regions): the words joined by single spaces, and each one's span."""
    value = row.get(field)
    if not isinstance(value, list) or not value:
        got = "missing" if field not in row else "an empty array" if value == [] else _json_type(value)
        raise InputError(f"{where}: field '{field}' must be a non-empty array of words (strings), got {got}")
    spans, start = [], 0
    for i, word in enumerate(value, start=1):
        if not isinstance(word, str):
            raise InputError(f"{where}: field '{field}': word {i} must be a string, got {_json_type(word)}")
        if not word or word != word.strip():
            what = "is empty" if not word else f"has whitespace at its start or end ({word!r})"
            raise InputError(f"{where}: field '{field}': word {i} {what}; words are joined by single spaces")
        _checked_unicode(word, field, where)
        spans.append((start, start + len(word)))
        start += len(word) + 1
    return " ".join(value), tuple(spans)


def _messages(row: dict, field: str, where: str) -> Messages:
    """Return a record's conversation as (role, content) pairs, or raise InputError saying what is wrong."""
    value = row.get(field)
    if not isinstance(value, list) or not value:
        got = "missing" if field not in row else "an empty array" if value == [] else _json_type(value)
        raise InputError(f"{where}: field '{field}' must be a non-empty array of messages, got {got}")
    turns = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise InputError(f"{where}: field '{field}': message {i} must be an object, got {_json_type(message)}")
        role, content = (message.get(k) for k in ("role", "content"))
        for key, part in (("role", role), ("content", content)):
            if not isinstance(part, str):
                got = "missing" if key not in message else _json_type(part)
                raise InputError(f"{where}: field '{field}': message {i} needs a string '{key}', got {got}")
        turns.append((_checked_unicode(role, field, where), _checked_unicode(content, field, where)))
    return tuple(turns)


def _id(row: dict, field: str | None, where: str) -> str | None:
    """Return a record's id as a string (None where absent), rejecting ids that are not strings or numbers."""
    if not field or row.get(field) is None:
        return None
    value = row[field]
    if isinstance(value, str):
        return _checked_unicode(value, field, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: field '{field}' must be a string or a finite number, got {value}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    raise InputError(f"{where}: field '{field}' must be a string or a number, got {_json_type(value)}")


def _checked_json(value: object, field: str, where: str) -> object:
    """Return a kept JSON value whose strings (keys too) all encode as UTF-8 and whose numbers are finite.

    Every output needs both: a number such as 1e400 reads as infinity, which JSON cannot write back.
    """
    if isinstance(value, str):
        return _checked_unicode(value, field, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: field '{field}' holds a number too large for a float ({value})")
    if isinstance(value, list):
        for item in value:
            _checked_json(item, field, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _checked_unicode(key, field, where)
            _checked_json(item, field, where)
    return value


def _checked_unicode(value: str, field: str, where: str) -> str:
    """Return a string that encodes as UTF-8; JSON escapes can smuggle in lone surrogates that do not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        reason = f"field '{field}' is not valid Unicode (lone surrogate at character {e.start})"
        raise InputError(f"{where}: {reason}") from None
    return value


def _json_type(value: object) -> str:
    """Name a decoded JSON value's type in JSON's own words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
