"""A corpus: several inputs (paths, globs, folders, fsspec URLs) read as one stream of records, in order.

Layer: inputs. It must not import the data model, the engine, the run folder, the analysis, the executors or the
front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from scorecli.base.errors import InputError, UsageError, first_line
from scorecli.inputs.records import (
    STDIN,
    Fields,
    Record,
    Rejected,
    count_records,
    display_name,
    is_parquet,
    open_binary,
    read_records,
)
from scorecli.inputs.remote import is_url, open_url

CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt")
_GLOB_CHARS = set("*?[")


def is_text_file(source: str) -> bool:
    """Tell whether an input is a plain-text file, read whole as one document."""
    return str(source).lower().endswith(".txt")


def is_pattern(arg: str) -> bool:
    """Tell whether an INPUT argument is a glob pattern rather than one path."""
    return bool(_GLOB_CHARS & set(arg))


def expand_inputs(args: Sequence[str]) -> list[str]:
    """The input files that INPUT arguments name, in order: paths as given, globs and folders sorted by name."""
    if STDIN in args and len(args) > 1:
        raise UsageError("- (standard input) cannot be combined with other inputs")
    sources: list[str] = []
    for arg in args:
        sources += _expand_url(arg) if is_url(arg) else _expand_local(arg)
    return sources


def _corpus_file(name: str) -> bool:
    """Tell whether a file found in a folder is one of the kinds a corpus is read from."""
    return name.lower().endswith(CORPUS_SUFFIXES)


def _expand_local(arg: str) -> list[str]:
    """The local files one argument names."""
    if arg != STDIN and is_pattern(arg):
        found = sorted(p for p in glob.glob(arg) if os.path.isfile(p))
        if not found:
            raise InputError(f"{arg}: no files match")
        return found
    if os.path.isdir(arg):
        found = sorted(e.path for e in os.scandir(arg) if e.is_file() and _corpus_file(e.name))
        if not found:
            raise InputError(f"{arg}: the directory holds no {', '.join(CORPUS_SUFFIXES[:-1])} or .txt files")
        return found
    return [arg]


def _expand_url(url: str) -> list[str]:
    """The files one URL names: itself, or what its glob or folder holds."""
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        if is_pattern(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = [p for p in fs.ls(path, detail=False) if fs.isfile(p) and _corpus_file(p)]
        else:
            return [url]
    except Exception as e:  # an unknown protocol, no network, no credentials: one line, as for a bad file
        raise InputError(f"{url}: cannot be read ({type(e).__name__}: {first_line(e)})") from None
    if not found:
        raise InputError(f"{url}: no files match")
    return [fs.unstrip_protocol(p) for p in sorted(found)]


def decode_separator(sep: str) -> str:
    r"""A --join separator with its backslash escapes decoded ('\n\n' is two newlines)."""
    try:
        return sep.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise UsageError(f"has an invalid escape ({e.reason})", arg="join") from None


def read_corpus(
    sources: Sequence[str],
    fields: Fields,
    *,
    on_error: Callable[[Rejected], None] | None = None,
    skip: int = 0,
    join: str | None = None,
    limit: int | None = None,
) -> Iterator[Record]:
    """Yield the records of several inputs as one corpus, `doc` counting across them.

    A .txt file is one record whose id is its file name. `skip` passes over the first records of the corpus
    (for resuming), `limit` stops after the first `limit` records; with `join`, the whole corpus is one
    document, its records' texts joined by `join`.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"must be at least 1, not {limit}", arg="limit")
    if join is not None:
        if skip == 0:
            yield _joined(sources, fields, on_error, join, limit)
        return
    offset = 0
    for source in sources:
        if limit is not None and offset >= limit:
            return
        if skip and skip >= (count := count_rows(source)):
            skip, offset = skip - count, offset + count
            continue
        seen = [skip - 1]  # the last record of this file read so far, scored or rejected
        yield from _file_records(source, fields, on_error, skip, offset, seen, limit)
        offset, skip = offset + seen[0] + 1, 0


def _file_records(
    source: str,
    fields: Fields,
    on_error: Callable[[Rejected], None] | None,
    skip: int,
    offset: int,
    seen: list[int],
    limit: int | None,
) -> Iterator[Record]:
    """The records of one input file, numbered from `offset` (up to the corpus's `limit`); rejects alike."""

    def rejected(r: Rejected) -> None:
        seen[0] = max(seen[0], r.doc)
        on_error(replace(r, doc=r.doc + offset))

    shifted = None if on_error is None else rejected
    if is_text_file(source):
        records = _text_record(source, shifted)
    else:
        file_limit = None if limit is None else limit - offset
        records = read_records(source, fields=fields, on_error=shifted, skip=skip, limit=file_limit)
    for record in records:
        seen[0] = max(seen[0], record.doc)
        yield replace(record, doc=record.doc + offset)


def _text_record(source: str, on_error: Callable[[Rejected], None] | None) -> Iterator[Record]:
    """A .txt file as one record (numbered 0), its id the file's name."""
    doc = 0
    name = display_name(source)
    data = _read_bytes(source)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        reason = f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start})"
        if on_error is None:
            raise InputError(f"{name}: {reason}") from None
        on_error(Rejected(doc, name, 1, reason, data[:1000].decode("utf-8", "replace")))
        return
    yield Record(doc, text, os.path.basename(name.rstrip("/")), where=name, line=1, source=name)


def _read_bytes(source: str) -> bytes:
    """The whole content of a file or URL."""
    if is_url(source):
        with open_url(source) as f:
            return f.read()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except OSError as e:
        raise InputError(f"{source}: cannot be read ({e.strerror or e})") from None


def count_rows(source: str) -> int:
    """The number of records in one input (every non-blank line or row counts, bad ones too)."""
    if is_text_file(source):
        return 1
    count = count_records(source)
    if count is not None:
        return count
    if is_parquet(source):  # remote: its footer says
        import pyarrow.parquet as pq

        with open_url(source) as f:
            return pq.ParquetFile(f).metadata.num_rows
    with open_binary(source) as f:  # compressed or remote: read through once
        return sum(1 for line in f if line.strip())


def _joined(
    sources: Sequence[str], fields: Fields, on_error: Callable[[Rejected], None] | None, sep: str, limit: int | None
) -> Record:
    """The whole corpus (or its first `limit` records) as one document: its records' texts joined by `sep`."""
    texts = [r.text for r in read_corpus(sources, fields, on_error=on_error, limit=limit)]
    name = display_name(sources[0]) if len(sources) == 1 else None
    return Record(0, sep.join(texts), name, where=name or "", line=1, source=name or "")


def count_corpus(sources: Sequence[str]) -> int | None:
    """The number of records in the corpus, or None where that cannot be known cheaply."""
    total = 0
    for source in sources:
        count = 1 if is_text_file(source) else count_records(source)
        if count is None:
            return None
        total += count
    return total


def corpus_metadata(sources: Sequence[str]) -> dict[str, str]:
    """The inputs as metadata: name, size and modification time (JSON arrays where there are several)."""
    if list(sources) == [STDIN]:
        return {"input": display_name(STDIN)}
    infos = [_file_info(s) for s in sources]
    if len(sources) == 1:
        size, mtime = infos[0]
        meta = {"input": display_name(sources[0])}
        if size is not None:
            meta["input_size"] = str(size)
        if mtime is not None:
            meta["input_mtime_ns"] = str(mtime)
        return meta
    return {
        "input": json.dumps([display_name(s) for s in sources], ensure_ascii=False),
        "input_size": json.dumps([size for size, _ in infos]),
        "input_mtime_ns": json.dumps([mtime for _, mtime in infos]),
    }


def corpus_bytes(sources: Sequence[str]) -> int | None:
    """The corpus's size in bytes, or None where a size cannot be known (stdin, some URLs)."""
    if STDIN in sources:
        return None
    sizes = [_file_info(s)[0] for s in sources]
    return None if None in sizes else sum(sizes)


def _file_info(source: str) -> tuple[int | None, int | None]:
    """A file's size and modification time in ns, where they can be known (a URL's time often cannot)."""
    if is_url(source):
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(source)
            size = fs.size(path)
            return (int(size) if size is not None else None), None
        except Exception:  # the reader reports an unreachable URL with its own message
            return None, None
    try:
        info = os.stat(source)
    except OSError:
        return None, None
    return info.st_size, info.st_mtime_ns
