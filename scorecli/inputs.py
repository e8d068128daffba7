"""Stream input records from JSONL (a file, gzip or stdin) or Parquet, validating each as it is read."""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from scorecli.errors import InputError, first_line

STDIN = "-"
PARQUET_SUFFIXES = {".parquet", ".pq"}
_PARQUET_BATCH_ROWS = 4096
_COUNT_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class Record:
    """One input document: its 0-based position in the input, its text and optional id."""

    doc: int
    text: str
    id: str | None = None


def display_name(source: str | Path) -> str:
    """Name an input the way error messages and metadata refer to it."""
    return "<stdin>" if str(source) == STDIN else str(source)


def is_parquet(source: str | Path) -> bool:
    """Tell whether an input path is read as Parquet (by its suffix)."""
    return str(source) != STDIN and Path(source).suffix.lower() in PARQUET_SUFFIXES


def read_records(source: str | Path, text_field: str = "text", id_field: str | None = "id") -> Iterator[Record]:
    """Yield the records of a JSONL or Parquet input in order; raise InputError on the first bad one."""
    rows = _parquet_rows(source, text_field, id_field) if is_parquet(source) else _jsonl_rows(source)
    name = display_name(source)
    where = "row" if is_parquet(source) else "line"
    doc = 0
    for number, row in rows:
        yield Record(doc, _text(row, text_field, name, where, number), _id(row, id_field, name, where, number))
        doc += 1
    if doc == 0:
        raise InputError(f"{name}: no records to score (the input is empty)")


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


def _open_binary(source: str | Path) -> BinaryIO:
    """Open a JSONL input for binary reading, with a clear error when that fails."""
    if str(source) == STDIN:
        return sys.stdin.buffer
    path = Path(source)
    try:
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not an input file")
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None


def _jsonl_rows(source: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, JSON object) for each non-blank line of a JSONL input."""
    name = display_name(source)
    f = _open_binary(source)
    try:
        for number, raw in enumerate(_lines(f, name), start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{name}: line {number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {e.start})"
                ) from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{name}: line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{name}: line {number}: expected a JSON object, got {_json_type(row)}")
            yield number, row
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _lines(f: BinaryIO, name: str) -> Iterator[bytes]:
    """Iterate the lines of a binary stream, turning read failures (bad gzip, I/O) into InputError."""
    try:
        yield from f
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{name}: cannot be read ({e})") from None


def _parquet_rows(source: str | Path, text_field: str, id_field: str | None) -> Iterator[tuple[int, dict]]:
    """Yield (1-based row number, {column: value}) for the needed columns of a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise InputError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)})")
    text_type = schema.field(text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise InputError(f"{path}: column '{text_field}' has type {text_type}, expected string")
    columns = [text_field] + ([id_field] if id_field and id_field in schema.names and id_field != text_field else [])
    number = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            values = {c: batch.column(c).to_pylist() for c in columns}
            for i in range(batch.num_rows):
                number += 1
                yield number, {c: values[c][i] for c in columns}
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({first_line(e)})") from None


def _text(row: dict, field: str, name: str, where: str, number: int) -> str:
    """Return a record's text field, or raise InputError naming file, line or row, and field."""
    if field not in row:
        keys = ", ".join(map(str, row)) or "none"
        raise InputError(f"{name}: {where} {number}: field '{field}' is missing (fields: {keys})")
    value = row[field]
    if value is None:
        raise InputError(f"{name}: {where} {number}: field '{field}' is null")
    if not isinstance(value, str):
        raise InputError(f"{name}: {where} {number}: field '{field}' must be a string, got {_json_type(value)}")
    return _checked_unicode(value, field, name, where, number)


def _id(row: dict, field: str | None, name: str, where: str, number: int) -> str | None:
    """Return a record's id as a string (None where absent), rejecting ids that are not strings or numbers."""
    if not field or row.get(field) is None:
        return None
    value = row[field]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _checked_unicode(value, field, name, where, number)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    raise InputError(f"{name}: {where} {number}: field '{field}' must be a string or a number, got {_json_type(value)}")


def _checked_unicode(value: str, field: str, name: str, where: str, number: int) -> str:
    """Return a string that encodes as UTF-8; JSON escapes can smuggle in lone surrogates that do not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{name}: {where} {number}: field '{field}' is not valid Unicode (lone surrogate at character {e.start})"
        ) from None
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
