"""`scorecli.score`: texts, records or input files in, one table of scores out as a pandas DataFrame; nothing written.

Built on the library's pieces (readers, `Scorer`, the Arrow tables of data/tables.py): the DataFrame has the
columns of the Parquet file of the same rows, with the same values.

Layer: front. It must not import the command line (cli.py) nor typer.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scorecli.base.errors import InputError, UsageError
from scorecli.inputs.records import Fields, Record, fields_of, parse_choice_fields, read_rows

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from scorecli.data.choices import ChoiceLayout
    from scorecli.engine.models import LoadedModel
    from scorecli.engine.scorer import Scorer
    from scorecli.inputs.kept import KeptTypes

ROWS = ("sequences", "tokens", "words")
# A str ending so (and on one line) names an input file; any other str is a text to score.
PATH_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
# Scorer arguments that score() sets itself rather than taking as options.
_SET_HERE = {"self", "model", "tokenizer", "ref_model", "ref_tokenizer", "stream", "expected_tokens"}
# Documents whose rows are made into an Arrow table at a time: their scores need not all be held at once.
_TABLE_DOCS = 256


def score(
    inputs: str | Path | Mapping | Iterable[str | Path | Mapping],
    model: str | Path | LoadedModel | None = None,
    *,
    rows: str = "sequences",
    text_field: str | None = None,
    id_field: str | None = "id",
    prompt_field: str | None = None,
    response_field: str | None = None,
    messages_field: str | None = None,
    choices_field: str | None = None,
    label_field: str | None = None,
    unconditional: bool = False,
    keep_fields: Iterable[str] = (),
    limit: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    ref_model: str | Path | LoadedModel | None = None,
    ref_dtype: str | None = None,
    ref_revision: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Score texts, records or input files with a causal LM: their `rows` as a DataFrame, no folder written.

    `inputs` is texts (a str or a list of them), records (dicts, or a DataFrame's rows) read with the field
    options as the CLI reads them, or input files (Paths, or strs ending in .jsonl, .jsonl.gz or .parquet).
    `choices_field` (with `label_field`, `unconditional`) scores records with choices as
    `scorecli score --choices-field` does; `rows` "choices" are then the rows of choices.parquet.
    `rows` is "sequences", "tokens" or "words": the columns of sequences.parquet, tokens.parquet or
    words.parquet, with the kept fields `keep_fields` (names, or one str of them separated by commas, as
    --keep-fields takes them) after a sequence's own. `model` and `ref_model` are names or paths (loaded
    with `device`, `dtype`, `revision`, `trust_remote_code`, `ref_dtype`, `ref_revision`; None: the
    embedded default model) or LoadedModels. The other `options` are Scorer's (bos, max_length, stride,
    batch_tokens, top_k, roles: a list, or a str of them separated by commas…). The DataFrame's `attrs`
    hold the metadata of the scores, as the Parquet files do. Errors raise ScorecliError.
    """
    import pyarrow as pa

    from scorecli import __version__
    from scorecli.data.choices import SEQUENCE_NAMES, ChoiceLayout
    from scorecli.data.scores import SEQUENCE_COLUMNS
    from scorecli.engine.scorer import Scorer
    from scorecli.inputs.kept import parse_keep_fields, types_metadata

    choices = parse_choice_fields(choices_field)
    kinds = (*ROWS, "choices") if choices else ROWS
    if rows not in kinds:
        raise UsageError(f"must be one of {', '.join(kinds)}, not {rows!r}", arg="rows")
    if not choices and (label_field is not None or unconditional):
        raise UsageError("goes with `choices_field`", arg="label_field" if label_field is not None else "unconditional")
    scorer_options = set(inspect.signature(Scorer).parameters) - _SET_HERE
    for name in options:
        if name not in scorer_options:
            raise UsageError(f"{name}: not an option of score (options: {', '.join(sorted(scorer_options))})")
    names = [keep_fields] if isinstance(keep_fields, str) else list(keep_fields)
    if len(names) > 1 and any("," in name for name in names):
        raise UsageError("holds a name with a comma, which no kept field can have", arg="keep_fields")
    taken = [c.name for c in SEQUENCE_COLUMNS] + ([*SEQUENCE_NAMES, "choices"] if choices else [])
    keep = parse_keep_fields(",".join(names) if names else None, taken)
    if keep and rows != "sequences":
        raise UsageError("go to sequence rows: they need `rows` sequences", arg="keep_fields")
    if isinstance(options.get("roles"), str):
        options["roles"] = [r.strip() for r in options["roles"].split(",") if r.strip()]
    if choices:
        if text_field is not None or response_field is not None:
            name = "text_field" if text_field is not None else "response_field"
            raise UsageError("cannot be combined with `choices_field`, whose choices are the scored text", arg=name)
        fields = fields_of(None, id_field, None, None, messages_field, keep)
        fields = replace(fields, prompt=prompt_field, choices=choices, label=label_field, unconditional=unconditional)
        if prompt_field is not None and messages_field is not None:
            raise UsageError(
                "cannot be combined with `prompt_field`: both are the choices' context", arg="messages_field"
            )
        if unconditional and not options.get("bos", True):
            raise UsageError("needs `bos`: a choice alone is scored from BOS", arg="unconditional")
    else:
        fields = fields_of(text_field, id_field, prompt_field, response_field, messages_field, keep)
    plain = (text_field, prompt_field, response_field, messages_field, keep, choices) == (None,) * 4 + ((), ())
    records, kept = _records(inputs, fields, limit, texts_allowed=plain and id_field == "id")
    first = next(records, None)  # read and checked before any model loads, so that a mistake shows at once
    records = itertools.chain([] if first is None else [first], records)
    if ref_model is None and (ref_dtype is not None or ref_revision is not None):
        raise UsageError("goes with `ref_model`", arg="ref_dtype" if ref_dtype is not None else "ref_revision")
    _check_loading(model, ref_model, device, dtype, revision, trust_remote_code, ref_dtype, ref_revision)
    loaded = _model(model, "model", device, dtype, revision, trust_remote_code)
    ref = None
    if ref_model is not None:
        ref = _model(ref_model, "ref_model", device, ref_dtype or dtype, ref_revision, trust_remote_code)
    options.setdefault("words", rows == "words")  # word rows need the word-start statistic; others may ask for it
    scorer = Scorer(
        loaded.model,
        loaded.tokenizer,
        ref_model=None if ref is None else ref.model,
        ref_tokenizer=None if ref is None else ref.tokenizer,
        **options,
    )
    layout = ChoiceLayout(unconditional, ref is not None, words=bool(options["words"])) if choices else None
    table = _typed_kept(pa.concat_tables(_tables(scorer, records, rows, kept, layout)), kept)
    frame = table.to_pandas()
    frame.attrs = {
        **loaded.info,
        **({} if ref is None else {f"ref_{k}": v for k, v in ref.info.items()}),
        **scorer.metadata,
        **({"kept_types": types_metadata(table.schema.field(name) for name in kept)} if kept else {}),
        "scorecli_version": __version__,
    }
    return frame


def _records(
    inputs: object, fields: Fields, limit: int | None, texts_allowed: bool
) -> tuple[Iterator[Record], KeptTypes]:
    """The records `inputs` hold, read with `fields`, and the Arrow types of their kept fields."""
    from scorecli.inputs.corpus import expand_inputs, read_corpus
    from scorecli.inputs.kept import kept_types

    if hasattr(inputs, "to_dict") and hasattr(inputs, "columns"):  # a pandas DataFrame: its rows are records
        items: list = inputs.to_dict("records")
    elif isinstance(inputs, (str, Path, Mapping)):
        items = [inputs]
    else:
        items = list(inputs)
    kinds = {_kind(item, i) for i, item in enumerate(items)}
    if len(kinds) > 1:
        raise UsageError("mixes texts, records and paths: give one kind", arg="inputs")
    kind = kinds.pop() if kinds else "texts"
    if kind == "paths":
        sources = expand_inputs([str(item) for item in items])
        return read_corpus(sources, fields, limit=limit), kept_types(sources, fields.keep)
    if kind == "records":
        return read_rows(items, fields, name="inputs", limit=limit), dict.fromkeys(fields.keep)
    if not texts_allowed:
        raise UsageError("texts have no fields: the field options are for records and files", arg="inputs")
    return read_rows(({"text": t} for t in items), Fields(id=None), name="inputs", limit=limit), {}


def _kind(item: object, i: int) -> str:
    """What an input is: one of "texts", "records" or "paths"; InputError for anything else."""
    if isinstance(item, Path):
        return "paths"
    if isinstance(item, str):
        one_line = "\n" not in item and "\r" not in item
        return "paths" if one_line and item.lower().endswith(PATH_SUFFIXES) else "texts"
    if isinstance(item, Mapping):
        return "records"
    raise InputError(f"inputs[{i}]: expected a text (str), a record (dict) or a path, got a {type(item).__name__}")


def _check_loading(
    model: object,
    ref_model: object,
    device: str,
    dtype: str,
    revision: str | None,
    trust_remote_code: bool,
    ref_dtype: str | None,
    ref_revision: str | None,
) -> None:
    """Raise UsageError for a loading option that no model loaded here takes (each was given loaded)."""
    from scorecli.engine.models import LoadedModel

    given = isinstance(model, LoadedModel)
    ref_given = ref_model is None or isinstance(ref_model, LoadedModel)
    options = {
        "dtype": (dtype != "auto", given),
        "revision": (revision is not None, given),
        "ref_dtype": (ref_dtype is not None, ref_given),
        "ref_revision": (ref_revision is not None, ref_given),
        "device": (device != "auto", given and ref_given),
        "trust_remote_code": (trust_remote_code, given and ref_given),
    }
    for name, (set_, loaded) in options.items():
        if set_ and loaded:
            raise UsageError("applies to models loaded by name, not to those given loaded", arg=name)


def _model(
    model: str | Path | LoadedModel | None,
    arg: str,
    device: str,
    dtype: str,
    revision: str | None,
    trust_remote_code: bool,
) -> LoadedModel:
    """A model given loaded, or loaded from its name, shared with other callers that only score it too."""
    from scorecli.engine.models import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    spec = None if model is None else str(model)
    return load_model(spec, device, dtype, revision=revision, trust_remote_code=trust_remote_code, arg=arg, shared=True)


def _tables(
    scorer: Scorer, records: Iterator[Record], rows: str, kept: KeptTypes, layout: ChoiceLayout | None = None
) -> Iterator[pa.Table]:
    """The `rows` of the scored records, a table of some documents at a time (one, empty, where there are none).

    Records with choices (`layout`, their tables') are never split between two tables.
    """
    from scorecli.data.choices import choice_sequence_table, choice_table, group, scored
    from scorecli.data.tables import sequence_table, token_table, word_schema, word_table

    def table(docs: list) -> pa.Table:
        if layout is not None:
            if rows == "choices":
                return choice_table(group(docs), layout)
            if rows == "sequences":
                return choice_sequence_table(list(group(docs)), layout, kept)
            docs = scored(docs)
        if rows == "sequences":
            return sequence_table(docs, scorer.columns, kept)
        if rows == "tokens":
            return token_table(docs, scorer.columns, choices=layout is not None)
        return word_table(docs, word_schema(layout is not None))

    docs: list = []
    for doc in scorer.score_records(records):
        docs.append(doc)
        if len(docs) >= _TABLE_DOCS and (doc.choice is None or doc.choice.last):
            yield table(docs)
            docs = []
    yield table(docs)


def _typed_kept(table: pa.Table, kept: KeptTypes) -> pa.Table:
    """The kept fields of JSON records typed as a run's sequences.parquet types them (JSON text where none fits)."""
    import pyarrow as pa

    from scorecli.inputs.kept import final_fields, json_types, typed

    names = [name for name, kind in kept.items() if kind is None]
    if not names:
        return table
    fields = final_fields(kept, json_types(lambda: [table.select(names)], names))
    columns = {f.name: typed(table[f.name].combine_chunks(), f) for f in fields if f.name in names}
    own = [f for f in table.schema if f.name not in kept]
    schema = pa.schema([*own, *fields])
    return pa.Table.from_arrays([columns.get(f.name, table[f.name]) for f in schema], schema=schema)
