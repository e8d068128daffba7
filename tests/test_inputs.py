import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorecli.base.errors import InputError
from scorecli.inputs.records import Fields, Record, count_records, read_records


def _write(tmp_path, content: bytes, name="in.jsonl"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _error(path, **kwargs) -> str:
    with pytest.raises(InputError) as e:
        list(read_records(path, **kwargs))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_reads_jsonl_in_order_with_ids(tmp_path):
    path = _write(tmp_path, b'{"id": "a", "text": "one"}\n\n{"text": "two"}\n{"id": 7, "text": "three", "x": 1}')
    assert list(read_records(path)) == [Record(0, "one", "a"), Record(1, "two", None), Record(2, "three", "7")]
    assert count_records(path) == 3


def test_reads_gzip_and_custom_fields(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"key": "k1", "body": "naïve 東京"}) + "\n")
    assert list(read_records(path, text_field="body", id_field="key")) == [Record(0, "naïve 東京", "k1")]


def test_reads_the_parquet_sample():
    records = list(read_records(SAMPLES / "mixed.parquet"))
    jsonl = list(read_records(SAMPLES / "mixed.jsonl"))
    assert [r.text for r in records] == [r.text for r in jsonl]
    assert records[3].id == "p03" and count_records(SAMPLES / "mixed.parquet") == len(jsonl)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "ok"}\n{"text": "bad"\n', "in.jsonl: line 2: not valid JSON"),
        (b'{"text": "ok"}\n[1, 2]\n', "in.jsonl: line 2: expected a JSON object, got an array"),
        (b'{"text": "ok"}\n{"body": "x"}\n', "in.jsonl: line 2: field 'text' is missing (fields: body)"),
        (b'{"text": null}\n', "in.jsonl: line 1: field 'text' is null"),
        (b'{"text": 3}\n', "in.jsonl: line 1: field 'text' must be a string, got a number"),
        (b'{"text": "a"}\n{"text": "\xff"}\n', "in.jsonl: line 2: not valid UTF-8"),
        (b'{"text": "a", "id": {"x": 1}}\n', "in.jsonl: line 1: field 'id' must be a string or a number"),
        (b'{"text": "a\\ud800b"}\n', "in.jsonl: line 1: field 'text' is not valid Unicode (lone surrogate"),
        (b'{"text": "a", "id": "\\udfff"}\n', "in.jsonl: line 1: field 'id' is not valid Unicode"),
        (b'{"text": "a", "x": NaN}\n', "in.jsonl: line 1: not valid JSON (NaN is not a JSON value"),
        (b'{"text": "a"}\n{"text": "b", "x": Infinity}\n', "in.jsonl: line 2: not valid JSON (Infinity is not"),
        (b'{"text": "a", "x": [-Infinity]}\n', "in.jsonl: line 1: not valid JSON (-Infinity is not a JSON value"),
        (b'{"text": "a", "id": true}\n', "in.jsonl: line 1: field 'id' must be a string or a number, got a boolean"),
        (b'{"text": "a", "id": false}\n', "in.jsonl: line 1: field 'id' must be a string or a number, got a boolean"),
        (b"", "in.jsonl: no records to score"),
        (b"\n  \n", "in.jsonl: no records to score"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, content, message):
    assert _error(_write(tmp_path, content)).startswith(f"{tmp_path}/{message}")


def test_missing_file_and_directory(tmp_path):
    assert _error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file"
    assert "is a directory" in _error(tmp_path)


def test_bad_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), path)
    assert _error(path) == f"{path}: no column 'text' (columns: body, n)"
    assert _error(path, text_field="n") == f"{path}: column 'n' has type int64, expected string"
    pq.write_table(pa.table({"text": ["x", None]}), path)
    assert _error(path) == f"{path}: row 2: field 'text' is null"
    corrupt = _write(tmp_path, b"PAR1 this is not parquet", "c.parquet")
    assert _error(corrupt).startswith(f"{corrupt}: not a readable Parquet file")
    pq.write_table(pa.table({"text": ["x"], "id": [b"\x00\x01"]}), path)
    assert _error(path) == f"{path}: row 1: field 'id' must be a string or a number, got a bytes"


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(b'{"text": "hello"}\n' * 2000)
    path = _write(tmp_path, good[:40] + b"\x00" * 50 + good[90:], "in.jsonl.gz")
    assert _error(path).startswith(f"{path}: cannot be read")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_yield_records_or_our_error(tmp_path, data):
    path = _write(tmp_path, data)
    try:
        records = list(read_records(path))
    except InputError:
        return
    assert all(isinstance(r.text, str) for r in records)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["text", "id", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_json, min_size=1, max_size=5))
def test_arbitrary_json_lines_yield_records_or_our_error(tmp_path, rows):
    path = _write(tmp_path, "\n".join(json.dumps(r) for r in rows).encode())
    try:
        records = list(read_records(path))
    except InputError:
        return
    assert [r.text for r in records] == [r["text"] for r in rows]


def test_records_are_streamed_not_read_whole(tmp_path):
    """A bad line far down is only reached when reading gets there: the input is never loaded whole."""
    path = _write(tmp_path, b'{"text": "first"}\n' + b'{"text": "fine"}\n' * 1000 + b"not json\n")
    records = read_records(path)
    assert next(records) == Record(0, "first", None)
    with pytest.raises(InputError, match="line 1002: not valid JSON"):
        list(records)


def test_skipping_bad_records_and_resuming_past_records(tmp_path):
    from scorecli.inputs.records import Fields

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"q": ["a", "b", None, "d"], "r": ["1", None, "3", "4"], "id": [1, 2, 3, 4]}), path)
    rejected = []
    records = list(read_records(path, fields=Fields(prompt="q", response="r"), on_error=rejected.append))
    assert [(r.doc, r.text, r.spans, r.id) for r in records] == [(0, "a1", ((1, 2),), "1"), (3, "d4", ((1, 2),), "4")]
    assert [(r.doc, r.line, r.reason) for r in rejected] == [(1, 2, "field 'r' is null"), (2, 3, "field 'q' is null")]
    assert json.loads(rejected[0].raw) == {"q": "b", "r": None, "id": 2}
    assert [r.doc for r in read_records(path, fields=Fields(prompt="q", response="r"), skip=3)] == [3]


def test_messages_are_validated(tmp_path):
    from scorecli.inputs.records import Fields

    rows = [
        {"m": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"m": [{"role": "user"}]},
        {"m": "not a list"},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rejected = []
    [record] = read_records(path, fields=Fields(messages="m"), on_error=rejected.append)
    assert record.messages == (("user", "hi"), ("assistant", "hello"))
    assert [r.reason for r in rejected] == [
        "field 'm': message 1 needs a string 'content', got missing",
        "field 'm' must be a non-empty array of messages, got a string",
    ]


def test_parquet_dictionary_and_large_string_columns_are_read_as_strings(tmp_path):
    import pandas as pd

    texts, ids = ["one text", "another", "one text"], ["a", "b", "c"]
    expected = [Record(i, t, d) for i, (t, d) in enumerate(zip(texts, ids))]
    categorical = tmp_path / "cat.parquet"
    pd.DataFrame({"text": pd.Categorical(texts), "id": pd.Categorical(ids)}).to_parquet(categorical)
    assert pa.types.is_dictionary(pq.read_schema(categorical).field("text").type)
    large = tmp_path / "large.parquet"
    pq.write_table(pa.table({c: pa.array(v, pa.large_string()) for c, v in (("text", texts), ("id", ids))}), large)
    pairs = tmp_path / "pairs.parquet"
    prompts = pa.array(["Q1 ", "Q2 ", "Q1 "]).dictionary_encode()
    pq.write_table(pa.table({"p": prompts, "r": pa.array(texts, pa.large_string())}), pairs)
    for path in (categorical, large):
        assert list(read_records(path)) == expected
    [first, *_] = read_records(pairs, fields=Fields(prompt="p", response="r"))
    assert first.text == "Q1 one text" and first.spans == ((3, 11),)
    # A dictionary of something else than strings is still not a text column.
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": pa.array([1, 2, 1]).dictionary_encode()}), ints)
    assert "expected string" in _error(ints)


def test_parquet_boolean_and_non_finite_ids_are_rejected(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["x"], "id": [True]}), path)
    assert _error(path) == f"{path}: row 1: field 'id' must be a string or a number, got a boolean"
    pq.write_table(pa.table({"text": ["x", "y"], "id": [1.5, float("nan")]}), path)
    assert _error(path) == f"{path}: row 2: field 'id' must be a string or a finite number, got nan"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_symbolic_link_loops_and_broken_links_say_what_they_are(tmp_path, suffix):
    loop = tmp_path / f"loop{suffix}"
    loop.symlink_to(loop)
    assert _error(loop) == f"{loop}: is a symbolic link loop, not a file"
    broken = tmp_path / f"broken{suffix}"
    broken.symlink_to(tmp_path / f"gone{suffix}")
    assert _error(broken) == f"{broken}: no such file (a symbolic link to a missing file)"


def test_odd_file_names_are_quoted_in_messages(tmp_path):
    odd = _write(tmp_path, b'{"text": 1}\n', "two\nlines.jsonl")
    assert _error(odd) == f"{str(odd)!r}: line 1: field 'text' must be a string, got a number"
    plain = _write(tmp_path, b'{"text": 1}\n', "données ok.jsonl")
    assert _error(plain) == f"{plain}: line 1: field 'text' must be a string, got a number"
    tab = tmp_path / "tab\there.parquet"
    assert _error(tab) == f"{str(tab)!r}: no such file"
