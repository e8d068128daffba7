"""Input fields copied into sequences.parquet and the JSON lines (`--keep-fields`): names, Arrow types, columns.

A kept field of Parquet inputs keeps its column's Arrow type exactly: records carry one-row slices of the
column, and the output column is their concatenation. A kept field of JSON lines gets one Arrow type for
the whole run, pyarrow's inference on all its values (widened across the run's parts, as
`pa.unify_schemas(promote_options="permissive")` does); where its values have no common type (a number
here, a string there) it is stored as JSON text, and the metadata's `kept_types` says so. Part files hold
JSON values as JSON text, so that every part has the same schema; the types are fixed when the parts are
joined.

Layer: inputs. It must not import the data model, the engine, the run folder, the analysis, the executors or the
front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from scorecli.base.errors import InputError, UsageError, shown
from scorecli.inputs.records import is_parquet
from scorecli.inputs.remote import is_url, open_url

JSON_TEXT = "json"  # the `kept_types` entry of a field stored as JSON text
JSON_MARK = {b"scorecli_kept": b"json"}  # field metadata of a column that holds JSON text

# The Arrow type of each kept field where Parquet inputs fix it, None where it is inferred from JSON values.
KeptTypes = dict[str, pa.DataType | None]


def parse_keep_fields(spec: str | None, taken: Iterable[str], id_field: str | None = None) -> tuple[str, ...]:
    """The field names of a comma-separated list; none may be one of the output's own columns (`taken`).

    Nor may one be `id_field`, whose values the output already holds as its column 'id'.
    """
    if spec is None:
        return ()
    names = [name.strip() for name in spec.split(",")]
    if not all(names):
        raise UsageError(f"must be field names separated by commas, not {spec!r}", arg="keep_fields")
    taken = set(taken)
    for i, name in enumerate(names):
        if name in names[:i]:
            raise UsageError(f"names field '{name}' twice", arg="keep_fields")
        if name in taken:
            raise UsageError(
                f"cannot keep field '{name}': sequences.parquet has a column '{name}' of its own", arg="keep_fields"
            )
        if name == id_field:
            raise UsageError(
                f"cannot keep field '{name}': it is the `id_field`, which sequences.parquet holds as its column 'id'",
                arg="keep_fields",
            )
    return tuple(names)


def kept_types(sources: Sequence[str], keep: Sequence[str]) -> KeptTypes:
    """Each kept field's Arrow type, fixed by the Parquet inputs' schemas; None for all where JSON lines are read.

    Plain .txt inputs hold no fields: their records' values are null. A field no Parquet input has, or has
    with two different types, is an InputError.
    """
    from scorecli.inputs.corpus import is_text_file

    if not keep:
        return {}
    files = [s for s in sources if not is_text_file(s)]
    if not files or not all(is_parquet(s) for s in files):
        return dict.fromkeys(keep)
    schemas = []
    for source in files:
        try:
            schemas.append((source, pq.ParquetFile(open_url(source) if is_url(source) else source).schema_arrow))
        except Exception:  # the reader reports an unreadable file with its own message
            continue
    types: KeptTypes = {}
    for name in keep:
        found = [(source, schema.field(name).type) for source, schema in schemas if name in schema.names]
        if not found and schemas:
            source, schema = schemas[0]
            columns = ", ".join(schema.names)
            if len(schemas) == 1:
                raise InputError(f": {shown(source)} has no column '{name}' (columns: {columns})", arg="keep_fields")
            raise InputError(
                f": no input has a column '{name}' (columns of {shown(source)}: {columns})", arg="keep_fields"
            )
        for source, kind in found[1:]:
            if kind != found[0][1]:
                first, first_kind = found[0]
                raise InputError(
                    f": column '{name}' has type {first_kind} in {shown(first)} but {kind} in {shown(source)}; "
                    "a kept column needs one type",
                    arg="keep_fields",
                )
        types[name] = found[0][1] if found else pa.null()
    return types


def part_fields(types: KeptTypes) -> list[pa.Field]:
    """The kept columns of the part files: a Parquet column's own type, or JSON text for JSON values."""
    return [_field(name, t) for name, t in types.items()]


def _field(name: str, kind: pa.DataType | None) -> pa.Field:
    """A kept column of type `kind`, or of JSON text where that is None."""
    return pa.field(name, pa.string(), metadata=JSON_MARK) if kind is None else pa.field(name, kind)


def part_arrays(kept: Sequence[dict | None], types: KeptTypes) -> list[pa.Array]:
    """The kept columns of the part file of some documents, from their kept values (`DocScore.kept`)."""
    arrays = []
    for name, kind in types.items():
        values = [(k or {}).get(name) for k in kept]
        if kind is None:
            arrays.append(pa.array([None if v is None else json_text(v) for v in values], pa.string()))
        elif not values:
            arrays.append(pa.array([], kind))
        else:
            null = pa.nulls(1, kind)
            arrays.append(pa.concat_arrays([null if v is None else v for v in values]))
    return arrays


def json_value(value: object) -> object:
    """A kept value as a Python value: itself (JSON), or the value of a one-row Arrow slice."""
    return value.to_pylist()[0] if isinstance(value, pa.Array) else value


def json_default(value: object) -> object:
    """Python values of Arrow types that JSON lacks: dates and times as ISO 8601, binary as base64, others as text."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)  # Decimal (exactly), timedelta, …


def json_text(value: object) -> str:
    """A kept value as JSON text."""
    return json.dumps(json_value(value), ensure_ascii=False, default=json_default)


def _infer(texts: pa.Array) -> pa.DataType | None:
    """The type pyarrow infers for a part's JSON values, or None where they have no common type."""
    try:
        return pa.array(_parsed(texts)).type
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None


def _parsed(texts: pa.Array) -> list:
    """The JSON values of a column of JSON text."""
    return [None if t is None else json.loads(t) for t in texts.to_pylist()]


def _widened(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type both types' values fit (int64 and double: double; null and x: x), or None."""
    try:
        schemas = [pa.schema([pa.field("x", t)]) for t in (a, b)]
        return pa.unify_schemas(schemas, promote_options="permissive").field("x").type
    except (pa.ArrowException, TypeError, ValueError):
        return None


def _writable(kind: pa.DataType) -> bool:
    """Whether Parquet can store a type (it cannot store a struct without fields: `{}` in every record)."""
    try:
        pq.write_table(pa.table({"x": pa.array([], kind)}), pa.BufferOutputStream())
        return True
    except (pa.ArrowException, TypeError, ValueError):
        return False


def json_types(parts: Callable[[], Iterable[pa.Table]], names: Sequence[str]) -> dict[str, pa.DataType | None]:
    """The final type of each JSON-valued kept field over all the parts (`parts()` reads them, in order).

    None where the values have no common type (or one Parquet cannot store): the field stays JSON text.
    """
    types: dict[str, pa.DataType | None] = dict.fromkeys(names, pa.null())
    for table in parts():
        for name in names:
            if types[name] is not None:
                found = _infer(table[name].combine_chunks())
                types[name] = None if found is None else _widened(types[name], found)
    types = {name: t if t is not None and _writable(t) else None for name, t in types.items()}
    # Widened types hold every part's values as inferred; converting them is checked all the same.
    for table in parts():
        for name in names:
            if types[name] is not None:
                try:
                    pa.array(_parsed(table[name].combine_chunks()), types[name])
                except (pa.ArrowException, OverflowError, TypeError, ValueError):
                    types[name] = None
    return types


def final_fields(types: KeptTypes, resolved: dict[str, pa.DataType | None]) -> list[pa.Field]:
    """The kept columns of the final sequences.parquet: Parquet types, resolved JSON types, or JSON text."""
    return [_field(name, resolved.get(name) if kind is None else kind) for name, kind in types.items()]


def typed(texts: pa.Array, field: pa.Field) -> pa.Array:
    """A part's column of JSON text as the final column `field` (unchanged where that is JSON text too)."""
    if field.metadata == JSON_MARK:
        return texts
    return pa.array(_parsed(texts), field.type)


def types_metadata(fields: Iterable[pa.Field]) -> str:
    """The `kept_types` metadata: each kept field's Arrow type, or "json" for JSON text."""
    return json.dumps({f.name: JSON_TEXT if f.metadata == JSON_MARK else str(f.type) for f in fields})
