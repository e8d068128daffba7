"""Filter a corpus by the perplexities of a finished run: original records out, by threshold or percentile.

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from scorecli.base.errors import InputError, OutputError, UsageError
from scorecli.inputs.corpus import corpus_metadata, is_text_file
from scorecli.inputs.records import display_name, is_parquet, open_binary
from scorecli.runfolder.layout import SEQUENCES_FILE, TEMP_SUFFIX

BUCKETS = ("head", "middle", "tail")
_INPUT_KEYS = ("input", "input_size", "input_mtime_ns")


@dataclass
class FilterResult:
    """Where a filter sent the records: counts per output file, and the records kept out."""

    written: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    unscored: int = 0
    rejected: int = 0
    records: int = 0
    cutoffs: list[float] | None = None


def read_perplexities(scores_dir: str | Path) -> tuple[np.ndarray, dict[str, str]]:
    """Each document's perplexity (NaN where none was scored), indexed by doc, and the run's metadata."""
    from scorecli.runfolder.rundocs import FinishedRun, check_run

    # not open_run's defaults: filter needs only the sequences
    run = FinishedRun(check_run(scores_dir, needs=(SEQUENCES_FILE,)))
    if run.is_choice_run:
        raise UsageError(
            f": {run} scored records with choices, which have accuracies, not perplexities to filter by", arg="scores"
        )
    table = run.read(SEQUENCES_FILE, columns=["doc", "perplexity"])
    metadata = run.metadata
    docs = table.column("doc").to_numpy()
    values = table.column("perplexity").to_numpy(zero_copy_only=False).astype(np.float64)
    ppl = np.full(int(docs.max()) + 1 if len(docs) else 0, np.nan)
    ppl[docs] = values
    return ppl, metadata


def check_same_input(metadata: dict[str, str], sources: Sequence[str]) -> None:
    """Raise InputError where the scores were made from other inputs (or other versions of them)."""
    if "join" in metadata:
        raise InputError(": the scores are of one joined document (`join`), not of records", arg="scores")
    now = corpus_metadata(sources)
    for key in _INPUT_KEYS:
        if metadata.get(key) != now.get(key):
            raise InputError(
                f": the scores were made from {key} {metadata.get(key)!r}, not {now.get(key)!r} (INPUT differs)",
                arg="scores",
            )


def bucket_cutoffs(ppl: np.ndarray, percentiles: Sequence[float]) -> list[float]:
    """The perplexities at the given percentiles of the scored documents (linear interpolation, as numpy)."""
    scored = ppl[~np.isnan(ppl)]
    if len(scored) == 0:
        raise InputError(": no document of the run has a perplexity", arg="scores")
    return [float(c) for c in np.percentile(scored, list(percentiles))]


def parse_buckets(text: str) -> list[float]:
    """Two increasing percentiles from '30,60'."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2 or not 0 < values[0] < values[1] < 100:
        raise UsageError(
            f"must be two increasing percentiles between 0 and 100, like 30,60, not {text!r}", arg="buckets"
        )
    return values


def filter_corpus(
    sources: Sequence[str],
    scores_dir: str | Path,
    out: str | Path,
    *,
    max_perplexity: float | None = None,
    min_perplexity: float | None = None,
    buckets: Sequence[float] | None = None,
    overwrite: bool = False,
) -> FilterResult:
    """Copy the records of `sources` whose perplexity passes into `out` (a file, or a folder of buckets)."""
    if buckets is not None and (max_perplexity is not None or min_perplexity is not None):
        raise UsageError("cannot be combined with `max_perplexity` or `min_perplexity`", arg="buckets")
    if buckets is None and max_perplexity is None and min_perplexity is None:
        raise UsageError("give one of `max_perplexity`, `min_perplexity` or `buckets`")
    parquet = _input_kind(sources)
    ppl, metadata = read_perplexities(scores_dir)
    check_same_input(metadata, sources)
    result = FilterResult()
    if buckets is not None:
        result.cutoffs = bucket_cutoffs(ppl, buckets)
        suffix = ".parquet" if parquet else ".jsonl.gz" if str(sources[0]).endswith(".gz") else ".jsonl"
        targets = {name: Path(out) / f"{name}{suffix}" for name in BUCKETS}
        route = _bucket_route(result.cutoffs)
    else:
        _check_suffix(Path(out), parquet)
        targets = {"kept": Path(out)}
        route = _threshold_route(max_perplexity, min_perplexity)
    _prepare(targets.values(), overwrite)

    def where(doc: int) -> str | None:
        value = ppl[doc] if doc < len(ppl) else np.nan
        if np.isnan(value):
            result.unscored += 1
            return None
        name = route(value)
        result.counts[name] = result.counts.get(name, 0) + 1
        return name if name in targets else None

    copy = _copy_parquet if parquet else _copy_jsonl
    result.records = copy(sources, targets, where)
    for name, path in targets.items():
        result.written[str(path)] = result.counts.get(name, 0)
    return result


def _threshold_route(max_perplexity: float | None, min_perplexity: float | None) -> Callable[[float], str]:
    """Name where a perplexity goes under thresholds: kept, above or below."""

    def route(value: float) -> str:
        if max_perplexity is not None and value > max_perplexity:
            return "above"
        if min_perplexity is not None and value < min_perplexity:
            return "below"
        return "kept"

    return route


def _bucket_route(cutoffs: list[float]) -> Callable[[float], str]:
    """Name the bucket of a perplexity: head below the first cut-off, tail from the second on."""

    def route(value: float) -> str:
        return "head" if value < cutoffs[0] else "middle" if value < cutoffs[1] else "tail"

    return route


def _input_kind(sources: Sequence[str]) -> bool:
    """True where every input is Parquet, False where every input is JSONL; anything else is refused."""
    for source in sources:
        if is_text_file(source) or str(source) == "-":
            raise UsageError(f"{display_name(source)}: filter copies JSONL or Parquet records, not this input")
    kinds = {is_parquet(s) for s in sources}
    if len(kinds) > 1:
        raise UsageError("filter needs inputs of one kind: all JSONL or all Parquet")
    return kinds.pop()


def _check_suffix(out: Path, parquet: bool) -> None:
    """Refuse an output file whose name says another format than the input's."""
    ok = out.suffix == ".parquet" if parquet else out.name.endswith((".jsonl", ".jsonl.gz"))
    if not ok:
        want = ".parquet" if parquet else ".jsonl or .jsonl.gz"
        raise UsageError(f"{out}: the output file keeps the input's format, so its name must end in {want}", arg="out")


def _prepare(targets: Iterable[Path], overwrite: bool) -> None:
    """Make sure the output files may be written: their folder exists, and they do not unless `overwrite`."""
    for path in targets:
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: exists; pass `overwrite` to replace it", arg="out")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{path.parent}: cannot create the folder ({e.strerror or e})", arg="out") from None


def _open_out(path: Path) -> BinaryIO:
    """A binary stream to a partial output file (gzip where its name says so)."""
    partial = path.with_name(path.name + TEMP_SUFFIX)
    return gzip.open(partial, "wb") if path.name.endswith(".gz") else open(partial, "wb")


def _finish(paths: Sequence[Path]) -> None:
    """Give the finished partial files their names."""
    for path in paths:
        os.replace(path.with_name(path.name + TEMP_SUFFIX), path)


def _copy_jsonl(sources: Sequence[str], targets: dict[str, Path], where: Callable[[int], str | None]) -> int:
    """Copy each non-blank line, byte for byte, to the file its document goes to; return the lines read."""
    outs = {name: _open_out(path) for name, path in targets.items()}
    doc = 0
    try:
        for source in sources:
            for raw in _raw_lines(source):
                name = where(doc)
                if name is not None:
                    outs[name].write(raw if raw.endswith(b"\n") else raw + b"\n")
                doc += 1
    except OSError as e:
        raise OutputError(f"cannot write ({e.strerror or e})", arg="out") from None
    finally:
        for f in outs.values():
            f.close()
    _finish(list(targets.values()))
    return doc


def _raw_lines(source: str) -> Iterator[bytes]:
    """The non-blank lines of a JSONL input as read (a UTF-8 byte-order mark dropped), numbered as scorecli does."""
    with open_binary(source) as f:
        try:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if raw.strip():
                    yield raw
        except (OSError, EOFError) as e:
            raise InputError(f"{display_name(source)}: cannot be read ({e})") from None


def _copy_parquet(sources: Sequence[str], targets: dict[str, Path], where: Callable[[int], str | None]) -> int:
    """Copy each row, with the input's schema, to the file its document goes to; return the rows read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scorecli.inputs.remote import is_url, open_url

    files = [pq.ParquetFile(open_url(s) if is_url(s) else s) for s in sources]
    schema = files[0].schema_arrow
    for source, pf in zip(sources, files):
        if not pf.schema_arrow.equals(schema):
            raise InputError(f"{display_name(source)}: its columns differ from {display_name(sources[0])}'s")
    temps = {name: path.with_name(path.name + TEMP_SUFFIX) for name, path in targets.items()}
    writers = {name: pq.ParquetWriter(temp, schema) for name, temp in temps.items()}
    doc = 0
    try:
        for pf in files:
            for batch in pf.iter_batches():
                names = [where(d) for d in range(doc, doc + batch.num_rows)]
                doc += batch.num_rows
                for name, writer in writers.items():
                    mask = pa.array([n == name for n in names])
                    writer.write_batch(batch.filter(mask))
    finally:
        for writer in writers.values():
            writer.close()
    _finish(list(targets.values()))
    return doc


def describe(result: FilterResult) -> list[str]:
    """Say, in lines of text, how many records went where."""
    lines = [f"{result.records:,} records read"]
    if result.cutoffs is not None:
        low, high = (f"{c:,.4g}" for c in result.cutoffs)
        ranges = {
            "head": f"perplexity < {low}",
            "middle": f"{low} ≤ perplexity < {high}",
            "tail": f"perplexity ≥ {high}",
        }
        for path, n in result.written.items():
            lines.append(f"{n:,} to {path} ({ranges[Path(path).name.split('.')[0]]})")
    else:
        [(path, n)] = result.written.items()
        lines.append(f"{n:,} kept in {path}")
        for name, why in (("above", "above --max-perplexity"), ("below", "below --min-perplexity")):
            if result.counts.get(name):
                lines.append(f"{result.counts[name]:,} left out: {why}")
    if result.unscored:
        lines.append(f"{result.unscored:,} left out: no scored token (or rejected by the run)")
    return lines
