"""--keep-fields: input fields copied into sequences.parquet and the JSON lines, with their types."""

import decimal
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import interrupt_after, one_line_error, sample_texts
from test_response import CHAT, _with_chat_template
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.inputs.kept import JSON_MARK
from scorecli.runfolder.outputs import read_metadata

runner = CliRunner()
OWN = ["doc", "id", "n_tokens", "sum_logprob", "mean_logprob", "perplexity", "mean_entropy", "n_bytes"]


def _score(*args):
    return runner.invoke(app, ["score", *map(str, args)])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# Each field's values in the records below, and the Arrow type it must get (None: JSON text).
JSON_FIELDS = {
    "n": ([3, -1, 2**40, None, 0], pa.int64()),
    "x": ([1.5, 2, None, -0.25, 1e300], pa.float64()),  # an int among floats: double
    "s": (["a", "é東🎉", "", None, "x"], pa.string()),
    "b": ([True, False, None, True, False], pa.bool_()),
    "l": ([[1, 2], [], None, [3], [4, 5, 6]], pa.list_(pa.int64())),
    "o": ([{"a": 1}, {"b": "x", "a": 2}, None, {"a": None}, {}], pa.struct([("a", pa.int64()), ("b", pa.string())])),
    "mixed": ([1, "one", [1], None, {"k": True}], None),  # no common type: JSON text
    "sparse": ([None, None, None, None, 7], pa.int64()),  # missing (null) in all records but the last
}


def _json_records():
    texts = sample_texts()[:5]
    rows = []
    for i, text in enumerate(texts):
        row = {"id": f"r{i}", "text": text}
        for name, (values, _) in JSON_FIELDS.items():
            if values[i] is not None or name != "sparse":  # sparse: absent rather than null
                row[name] = values[i]
        rows.append(row)
    return rows


def _expected_struct(values):
    return [None if v is None else {"a": v.get("a"), "b": v.get("b")} for v in values]


def test_json_fields_get_one_type_each_and_json_lines_the_values(gpt2_dir, tmp_path):
    data = _write_jsonl(tmp_path / "data.jsonl", _json_records())
    names = [*JSON_FIELDS, "nowhere"]
    keep = ",".join(names)
    result = _score(data, "-m", gpt2_dir, "-o", tmp_path / "k", "--keep-fields", keep, "-q")
    assert result.exit_code == 0, result.output
    assert _score(data, "-m", gpt2_dir, "-o", tmp_path / "plain", "-q").exit_code == 0

    table = pq.read_table(tmp_path / "k" / "sequences.parquet")
    plain = pq.read_table(tmp_path / "plain" / "sequences.parquet")
    # scorecli's own columns first, unchanged; then the kept fields in the order given
    assert table.column_names == [*plain.column_names, *names]
    assert table.select(plain.column_names).equals(plain)
    for name, (values, kind) in JSON_FIELDS.items():
        column = table.schema.field(name)
        if kind is None:
            assert column.type == pa.string() and column.metadata == JSON_MARK
            assert table[name].to_pylist() == [None if v is None else json.dumps(v) for v in values]
        else:
            assert column.type == kind, name
            expected = _expected_struct(values) if name == "o" else values
            assert table[name].to_pylist() == expected, name
    # a field no record has is a column of nulls
    assert table.schema.field("nowhere").type == pa.null() and table["nowhere"].null_count == 5

    meta = read_metadata(tmp_path / "k" / "sequences.parquet")
    assert json.loads(meta["keep_fields"]) == names
    types = json.loads(meta["kept_types"])
    assert types == {**{n: "json" if k is None else str(k) for n, (_, k) in JSON_FIELDS.items()}, "nowhere": "null"}
    assert read_metadata(tmp_path / "k" / "tokens.parquet") == meta
    assert json.loads((tmp_path / "k" / "summary.json").read_text())["metadata"]["kept_types"] == meta["kept_types"]

    # JSON lines: the values as they were in the input (a missing field as null)
    lines = _score(data, "-m", gpt2_dir, "-o", "-", "--keep-fields", keep)
    assert lines.exit_code == 0, lines.output
    got = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [list(row)[-len(names) :] for row in got] == [names] * 5
    for i, row in enumerate(got):
        assert {n: row[n] for n in JSON_FIELDS} == {n: values[i] for n, (values, _) in JSON_FIELDS.items()}
        assert row["nowhere"] is None
        assert row["perplexity"] == pytest.approx(plain["perplexity"][i].as_py(), rel=1e-9)


def test_clashing_repeated_or_empty_names_are_usage_errors(gpt2_dir, tmp_path):
    data = _write_jsonl(tmp_path / "data.jsonl", _json_records())
    base = [data, "-m", gpt2_dir, "-o", tmp_path / "o"]
    for name in ("perplexity", "id", "doc"):
        line = one_line_error(_score(*base, "--keep-fields", f"n,{name}"), 2)
        assert line == (
            f"scorecli: error: --keep-fields cannot keep field '{name}': "
            f"sequences.parquet has a column '{name}' of its own"
        )
    line = one_line_error(_score(*base, "--keep-fields", "n,s,n"), 2)
    assert line == "scorecli: error: --keep-fields names field 'n' twice"
    assert "--keep-fields must be field names separated by commas" in one_line_error(
        _score(*base, "--keep-fields", "n,,s"), 2
    )
    line = one_line_error(_score(*base, "--keep-fields", "n", "--join", " "), 2)
    assert "--keep-fields cannot be combined with --join" in line
    assert not (tmp_path / "o").exists()


def test_keeping_the_id_field_is_a_usage_error(gpt2_dir, tmp_path):
    # The id field is already the `id` column: kept as well, it would be written twice.
    data = _write_jsonl(tmp_path / "data.jsonl", _json_records())
    base = [data, "-m", gpt2_dir, "-o", tmp_path / "o"]
    line = one_line_error(_score(*base, "--id-field", "s", "--keep-fields", "n,s"), 2)
    assert line == (
        "scorecli: error: --keep-fields cannot keep field 's': it is the --id-field, "
        "which sequences.parquet holds as its column 'id'"
    )
    assert not (tmp_path / "o").exists()
    ok = _score(*base, "--id-field", "s", "--keep-fields", "n", "-q")
    assert ok.exit_code == 0, ok.output
    seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    assert list(seqs.columns[-1:]) == ["n"] and "s" not in seqs.columns


def _parquet_table(start, n):
    """Rows start … start+n-1 of a table with columns of many Arrow types (nulls included)."""
    texts = sample_texts()
    rows = range(start, start + n)
    null = [i % 7 == 3 for i in rows]
    dictionary = pa.array([f"cat{i % 3}" for i in rows]).dictionary_encode()
    return pa.table(
        {
            "text": [f"{i}: {texts[i % len(texts)]}" for i in rows],
            "id": [f"p{i}" for i in rows],
            "small": pa.array([None if z else i - 100 for i, z in zip(rows, null)], pa.int16()),
            "when": pa.array([i * 1_000_000_007 for i in rows], pa.timestamp("ns", tz="Europe/Paris")),
            "ints": pa.array([None if z else list(range(i % 4)) for i, z in zip(rows, null)], pa.list_(pa.int32())),
            "kind": dictionary,
            "price": pa.array([decimal.Decimal(i) / 100 for i in rows], pa.decimal128(9, 2)),
            "point": pa.array([{"x": float(i), "tag": str(i)} for i in rows]),
        }
    )


PARQUET_KEEP = ["small", "when", "ints", "kind", "price", "point"]


def test_parquet_columns_keep_their_arrow_types_over_files_and_limit(gpt2_dir, tmp_path):
    a, b = _parquet_table(0, 5), _parquet_table(5, 6)
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet", row_group_size=2)
    inputs = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    keep = ",".join(PARQUET_KEEP)
    result = _score(*inputs, "-m", gpt2_dir, "-o", tmp_path / "k", "--keep-fields", keep, "--limit", 8, "-q")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "k" / "sequences.parquet")
    assert table["id"].to_pylist() == [f"p{i}" for i in range(8)]
    expected = pa.concat_tables([a, b]).slice(0, 8)
    for name in PARQUET_KEEP:
        assert table.schema.field(name).type == a.schema.field(name).type, name
        # the values, exactly (the dictionary column compared by its values: files may have their own dictionaries)
        assert table[name].to_pylist() == expected[name].to_pylist(), name
    types = json.loads(read_metadata(tmp_path / "k" / "sequences.parquet")["kept_types"])
    stored = pq.read_schema(tmp_path / "a.parquet")  # as the input file has them (Parquet names list items "element")
    assert types == {name: str(stored.field(name).type) for name in PARQUET_KEEP}

    lines = _score(*inputs, "-m", gpt2_dir, "-o", "-", "--keep-fields", keep, "--limit", 3)
    assert lines.exit_code == 0, lines.output
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r["small"] for r in rows] == [-100, -99, -98]
    assert [r["when"] for r in rows] == [w.isoformat() for w in a["when"].to_pylist()[:3]]
    assert rows[2]["ints"] == [0, 1] and rows[1]["kind"] == "cat1" and rows[2]["price"] == "0.02"
    assert rows[1]["point"] == {"x": 1.0, "tag": "1"}


def test_parquet_fields_missing_or_of_two_types_are_input_errors(gpt2_dir, tmp_path):
    pq.write_table(_parquet_table(0, 3), tmp_path / "a.parquet")
    other = _parquet_table(3, 3)
    other = other.set_column(2, "small", other["small"].cast(pa.int32()))
    pq.write_table(other, tmp_path / "b.parquet")
    base = ["-m", gpt2_dir, "-o", tmp_path / "o"]
    line = one_line_error(_score(tmp_path / "a.parquet", *base, "--keep-fields", "small,nope"), 3)
    assert line.startswith(f"scorecli: error: --keep-fields: {tmp_path / 'a.parquet'} has no column 'nope' (columns: ")
    line = one_line_error(_score(tmp_path / "a.parquet", tmp_path / "b.parquet", *base, "--keep-fields", "small"), 3)
    assert line == (
        f"scorecli: error: --keep-fields: column 'small' has type int16 in {tmp_path / 'a.parquet'} "
        f"but int32 in {tmp_path / 'b.parquet'}; a kept column needs one type"
    )
    assert not (tmp_path / "o").exists()


def test_kept_fields_survive_parts_and_resume(gpt2_dir, tmp_path):
    """A field null in the first parts and an int later, and one whose type changes late, across a resume."""
    texts = sample_texts()
    rows = []
    for i in range(900):
        rows.append({"id": f"c{i}", "text": f"{i}: {texts[i % len(texts)]}", "late": i if i >= 700 else None})
        rows[-1]["flip"] = str(i) if i == 850 else i
    rows[800] = {"text": 12}  # stops the first session after some parts are saved
    data = _write_jsonl(tmp_path / "data.jsonl", rows)
    args = [data, "-m", gpt2_dir, "--batch-tokens", 64, "--keep-fields", "late,flip", "-q"]

    stopped = _score(*args, "-o", tmp_path / "o")
    assert stopped.exit_code == 3 and "line 801" in stopped.stderr
    parts = sorted((tmp_path / "o" / "parts" / "sequences").glob("*.parquet"))
    assert len(parts) >= 2
    first = pq.read_table(parts[0])
    # parts hold JSON text, the same schema in every part
    assert first.schema.field("late").type == pa.string() and set(first["late"].to_pylist()) == {None}
    assert all(pq.read_schema(p) == pq.read_schema(parts[0]) for p in parts)

    resumed = _score(*args, "-o", tmp_path / "o", "--resume", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    assert _score(*args, "-o", tmp_path / "straight", "--on-error", "skip").exit_code == 0
    table = pq.read_table(tmp_path / "o" / "sequences.parquet")
    assert table.equals(pq.read_table(tmp_path / "straight" / "sequences.parquet"))
    assert table.schema.field("late").type == pa.int64()
    scored = [r for r in rows if "id" in r]
    assert table["late"].to_pylist() == [r["late"] for r in scored]
    assert table.schema.field("flip").metadata == JSON_MARK
    assert table["flip"].to_pylist() == [json.dumps(r["flip"]) for r in scored]
    meta = read_metadata(tmp_path / "o" / "sequences.parquet")
    assert json.loads(meta["kept_types"]) == {"late": "int64", "flip": "json"}


def test_parquet_parts_and_resume_keep_exact_types(gpt2_dir, tmp_path):
    table = _parquet_table(0, 700)
    text = table["text"].to_pylist()
    text[600] = None  # a bad record: the first session stops there
    table = table.set_column(0, "text", pa.array(text))
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=100)
    args = [tmp_path / "data.parquet", "-m", gpt2_dir, "--batch-tokens", 64, "--keep-fields", "when,kind,ints", "-q"]
    assert _score(*args, "-o", tmp_path / "o").exit_code == 3
    assert len(list((tmp_path / "o" / "parts" / "sequences").glob("*.parquet"))) >= 2
    resumed = _score(*args, "-o", tmp_path / "o", "--resume", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    got = pq.read_table(tmp_path / "o" / "sequences.parquet")
    kept = table.filter(pa.array([t is not None for t in text]))
    for name in ("when", "kind", "ints"):
        assert got.schema.field(name).type == table.schema.field(name).type
        assert got[name].to_pylist() == kept[name].to_pylist()


def test_chats_keep_their_fields(gpt2_dir, tmp_path):
    model = _with_chat_template(gpt2_dir, tmp_path / "model")
    data = _write_jsonl(
        tmp_path / "chats.jsonl", [{"messages": CHAT, "source": s, "turns": n} for s, n in (("a", 1), ("b", 2))]
    )
    result = _score(
        data, "-m", model, "--messages-field", "messages", "--keep-fields", "source,turns", "-o", tmp_path / "o", "-q"
    )
    assert result.exit_code == 0, result.output
    seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    assert seqs["source"].tolist() == ["a", "b"] and seqs["turns"].tolist() == [1, 2]
    assert (seqs["n_tokens"] > 0).all()


def test_documents_finished_before_an_interrupt_get_their_kept_fields_back(tiny):
    from scorecli.engine.scorer import Scorer, ScoringInterrupted
    from scorecli.inputs.records import Record
    from scorecli.runfolder.runs import _doc_from_json, _doc_to_json

    texts = sample_texts() * 2
    column = pa.array([i * 1000 for i in range(len(texts))], pa.timestamp("ms"))
    records = [Record(i, t, kept={"n": i, "when": column.slice(i, 1)}) for i, t in enumerate(texts)]
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=48, workers=1)
    with pytest.raises(ScoringInterrupted) as caught:
        list(scorer.score_buffers(records, progress=interrupt_after(6)))
    finished = caught.value.finished
    assert 0 < len(finished) < len(records) and all(d.kept is records[d.doc].kept for d in finished)
    # saved as JSON (the kept values are not: they are the input's), then resumed from the records
    done = {d.doc: _doc_from_json(json.loads(json.dumps(_doc_to_json(d)))) for d in finished}
    assert all(d.kept is None for d in done.values())
    [resumed] = list(scorer.score_buffers(records, done=done))
    assert [d.kept for d in resumed] == [r.kept for r in records]


def test_kept_values_that_no_output_can_hold_are_input_errors(tmp_path):
    from scorecli.base.errors import InputError
    from scorecli.inputs.records import Fields, read_records

    fields = Fields(keep=("v",))
    for line, reason in (
        ('{"text": "a", "v": [1, 1e400]}', "field 'v' holds a number too large for a float (inf)"),
        ('{"text": "a", "v": {"k": "\\ud800"}}', "field 'v' is not valid Unicode (lone surrogate at character 0)"),
        ('{"text": "a", "v": {"\\ud800": 1}}', "field 'v' is not valid Unicode (lone surrogate at character 0)"),
    ):
        path = tmp_path / "data.jsonl"
        path.write_text('{"text": "fine", "v": 1}\n' + line + "\n", encoding="utf-8")
        with pytest.raises(InputError) as caught:
            list(read_records(path, fields=fields))
        assert str(caught.value) == f"{path}: line 2: {reason}"
    # without --keep-fields the same records are fine: other fields are not read
    assert [r.text for r in read_records(path)] == ["fine", "a"]
