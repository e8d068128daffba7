"""`--out -`: JSON lines of sequence, token or word rows that equal the Parquet rows, streamed as they are done."""

import json
import math
import os
import select
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES, sample_texts
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.engine import Scorer
from scorecli.inputs import Record
from scorecli.tables import SEQUENCE_SCHEMA, TOKEN_SCHEMA, WORD_SCHEMA

runner = CliRunner()
SCORECLI = [sys.executable, "-m", "scorecli"]
SCHEMAS = {"sequences": SEQUENCE_SCHEMA, "tokens": TOKEN_SCHEMA, "words": WORD_SCHEMA}


def _json_value(value):
    """What a Parquet value becomes in a JSON line: non-finite numbers are null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@pytest.mark.parametrize("rows", ["sequences", "tokens", "words"])
@pytest.mark.parametrize("sample", ["mixed.jsonl", "edge_cases.jsonl"])
def test_rows_equal_the_parquet_rows_of_the_same_run(gpt2_dir, tmp_path, rows, sample):
    options = ["-m", str(gpt2_dir), "--batch-tokens", "200", "--max-length", "48"]
    folder = runner.invoke(app, ["score", str(SAMPLES / sample), *options, "-o", str(tmp_path / "out"), "--words"])
    assert folder.exit_code == 0, folder.output
    args = ["score", str(SAMPLES / sample), *options, "-o", "-"] + (["--rows", rows] if rows != "sequences" else [])
    stdout = runner.invoke(app, args)
    assert stdout.exit_code == 0, stdout.output
    lines = [json.loads(line) for line in stdout.stdout.splitlines()]
    table = pq.read_table(tmp_path / "out" / f"{rows}.parquet")
    assert table.schema.names == SCHEMAS[rows].names
    expected = [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]
    assert len(lines) == len(expected) > 0
    for line, row in zip(lines, expected):
        assert list(line) == list(row)  # the Parquet columns, in order
        assert line == row  # float32 columns compare exactly: JSON keeps every digit of the widened value


@pytest.mark.parametrize("rows", ["sequences", "tokens"])
def test_rows_have_the_columns_of_the_run_with_top_k_and_a_reference(gpt2_dir, gpt2_ref_dir, tmp_path, rows):
    options = ["-m", str(gpt2_dir), "--top-k", "3", "--ref-model", str(gpt2_ref_dir), "--batch-tokens", "200"]
    folder = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), *options, "-o", str(tmp_path / "out")])
    assert folder.exit_code == 0, folder.output
    stdout = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), *options, "-o", "-", "--rows", rows])
    assert stdout.exit_code == 0, stdout.output
    lines = [json.loads(line) for line in stdout.stdout.splitlines()]
    table = pq.read_table(tmp_path / "out" / f"{rows}.parquet")
    assert {"mean_kl", "kl", "top_tokens"} & set(table.schema.names)  # the run's own columns, beyond the defaults
    expected = [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]
    assert len(lines) == len(expected) > 0
    for line, row in zip(lines, expected):
        assert list(line) == list(row) and line == row


def test_rows_needs_stdout_and_words_on_stdout_points_to_it(gpt2_dir, tmp_path):
    result = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-o", str(tmp_path / "o"), "--rows", "tokens"])
    assert result.exit_code == 2 and "--rows is for --out -" in result.stderr
    result = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-o", "-", "--words"])
    assert result.exit_code == 2 and "--rows words" in result.stderr
    assert not (tmp_path / "o").exists()


def _readline(stream, timeout: float) -> bytes:
    """One line from a pipe, or b"" if none comes within `timeout` seconds (a failure guard, not a measure)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else b""


def test_first_line_arrives_while_the_input_is_still_open(gpt2_dir, tmp_path):
    """The first documents' lines come out before the rest of the input is even written.

    The input is stdin, held open: a run that waited for a full read-ahead buffer (4,096 documents or
    256 characters per batch token) could not write a line before it closes, whatever the machine's speed.
    """
    records = [json.dumps({"id": f"d{i}", "text": f"Document {i} says the lamp is on. " * 8}) for i in range(60)]
    first, rest = records[:30], records[30:]
    assert sum(len(r) for r in first) < 256 * 64  # far less than a fixed buffer of a 64-token budget
    proc = subprocess.Popen(
        [*SCORECLI, "score", "-", "-m", str(gpt2_dir), "-o", "-", "-q", "--batch-tokens", "64"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        proc.stdin.write(("\n".join(first) + "\n").encode())
        proc.stdin.flush()
        line = _readline(proc.stdout, timeout=240)
        assert line, "no line before the input was closed"
        assert proc.poll() is None  # still running: the input is open
        assert json.loads(line)["id"] == "d0"
        proc.stdin.write(("\n".join(rest) + "\n").encode())
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read().decode()
    ids = [json.loads(line)["id"] for line in [line, *out.splitlines()]]
    assert ids == [f"d{i}" for i in range(60)]


def test_growing_buffers_double_up_to_the_full_size_and_change_no_score(tiny):
    texts = sample_texts("long.jsonl")[:120]
    records = [Record(i, t) for i, t in enumerate(texts)]
    fixed = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, max_length=64)
    growing = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, max_length=64, grow_buffers=True)
    buffers = list(growing.score_buffers(records))
    # about two batches of ~4 characters a token first (8 × 64), doubling up to 256 × 64 characters
    expected, limit, chars, count = [], 8 * 64, 0, 0
    for text in texts:
        chars, count = chars + len(text), count + 1
        if chars >= limit:
            expected.append(count)
            chars, count, limit = 0, 0, min(2 * limit, 256 * 64)
    expected += [count] if count else []
    assert [len(b) for b in buffers] == expected
    assert expected[0] < expected[1] < expected[2] and len(list(fixed.score_buffers(records))) < len(buffers)
    for got, want in zip((d for b in buffers for d in b), fixed.score_records(records)):
        assert got.doc == want.doc
        assert np.abs(got.logprobs - want.logprobs).max(initial=0) <= 1e-4
