"""`--out -`: JSON lines of sequence, token or word rows that equal the Parquet rows, streamed as they are done."""

import json
import math
import os
import select
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES, sample_texts
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.data.tables import SEQUENCE_SCHEMA, TOKEN_SCHEMA, WORD_SCHEMA
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import Record

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
    # The same run: --rows words computes what --words does (the word-start statistic, the rows after each text).
    words = ["--words"] if rows == "words" else []
    folder = runner.invoke(app, ["score", str(SAMPLES / sample), *options, "-o", str(tmp_path / "out"), *words])
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


@pytest.mark.parametrize("reference", [False, True])
def test_first_line_arrives_while_the_input_is_still_open(gpt2_dir, gpt2_ref_dir, tmp_path, reference):
    """The first documents' lines come out before the rest of the input is even written (against a reference
    model too).

    The input is stdin, held open: a run that waited for a full read-ahead buffer (4,096 documents or
    256 characters per batch token) could not write a line before it closes, whatever the machine's speed.
    """
    records = [json.dumps({"id": f"d{i}", "text": f"Document {i} says the lamp is on. " * 8}) for i in range(60)]
    first, rest = records[:30], records[30:]
    assert sum(len(r) for r in first) < 256 * 64  # far less than a fixed buffer of a 64-token budget
    ref = ["--ref-model", str(gpt2_ref_dir)] if reference else []
    proc = subprocess.Popen(
        [*SCORECLI, "score", "-", "-m", str(gpt2_dir), *ref, "-o", "-", "-q", "--batch-tokens", "64"],
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
        assert ("mean_kl" in json.loads(line)) == reference
        proc.stdin.write(("\n".join(rest) + "\n").encode())
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read().decode()
    ids = [json.loads(line)["id"] for line in [line, *out.splitlines()]]
    assert ids == [f"d{i}" for i in range(60)]


def _long_records(n: int = 120) -> list[Record]:
    """The first `n` texts of samples/long.jsonl as records: with a 64-token budget, several full buffers."""
    return [Record(i, t) for i, t in enumerate(sample_texts("long.jsonl")[:n])]


def test_streaming_splits_only_the_first_full_buffer_and_then_meets_the_folder_runs_batches(tiny):
    records = _long_records()
    fixed = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, max_length=64)
    streaming = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, max_length=64, stream=True)
    fixed_plan, stream_plan = list(fixed.plan_buffers(records)), list(streaming.plan_buffers(records))
    # fixed buffers: 256 characters per batch token; the stream's first one: 8 per batch token (about two batches)
    full, chars = [], 0
    for count, r in enumerate(records, 1):
        chars += len(r.text)
        if chars >= 256 * 64:
            full.append(count - sum(full))
            chars = 0
    full += [len(records) - sum(full)] if len(records) > sum(full) else []
    first = next(k for k in range(1, len(records) + 1) if sum(len(r.text) for r in records[:k]) >= 8 * 64)
    assert len(full) >= 3 and [b.docs for b in fixed_plan] == full
    assert [b.docs for b in stream_plan] == [first, full[0] - first, *full[1:]]
    # the same tasks and forward passes after the first full buffer (given out in parts, not all at the end)
    assert [(b.docs, b.tasks) for b in stream_plan[2:]] == [(b.docs, b.tasks) for b in fixed_plan[1:]]
    assert all(b.given == [len(b.tasks)] for b in fixed_plan) and len(stream_plan[2].given) > 1
    streamed, straight = list(streaming.score_records(records)), list(fixed.score_records(records))
    assert [d.doc for d in streamed] == [d.doc for d in straight] == list(range(len(records)))
    for got, want in zip(streamed, straight):
        if got.doc < full[0]:
            assert np.abs(got.logprobs - want.logprobs).max(initial=0) <= 1e-4
        else:  # the very same batches: the very same numbers
            assert np.array_equal(got.logprobs, want.logprobs) and np.array_equal(got.entropies, want.entropies)


def test_streaming_gives_documents_out_as_soon_as_they_and_those_before_are_scored(tiny):
    """The hook is the progress report after each task: each part comes out right after the task that finished it."""
    records = _long_records(60)
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, max_length=64, stream=True)
    plans = list(scorer.plan_buffers(records))
    reports, parts = [], []
    for part in scorer.score_buffers(records, progress=lambda state: reports.append(replace(state))):
        parts.append((len(reports), reports[-1], [d.doc for d in part]))
    # documents in input order, each once; more parts than buffers: a buffer's documents come out as they are done
    assert [doc for _, _, docs in parts for doc in docs] == list(range(len(records)))
    assert len(parts) == sum(len(b.given) for b in plans) > len(plans)
    # the first line comes once the first buffer (a few batches) is read and at most scored, long before the input
    _, state, docs = parts[0]
    assert state.docs_planned == plans[0].docs < len(records)
    assert state.tokens_done <= plans[0].tokens < sum(b.tokens for b in plans) / 4
    # each part comes out once its documents and all before them are finished, and not a task later
    expected, reported = [], 0
    for b in plans:
        expected += [reported + 1 + k for k in b.given]  # a report as the buffer starts, then one per task
        reported += 1 + len(b.tasks)
    assert [n for n, _, _ in parts] == expected
    for _, state, docs in parts:
        assert state.docs_done >= docs[-1] + 1


def test_plan_counts_the_tokens_the_run_feeds_and_shares(tiny):
    records = _long_records()
    records += [
        Record(len(records) + i, "A preamble that every one of these texts shares, word for word. " * 3 + t)
        for i, t in enumerate(sample_texts("mixed.jsonl"))
    ]
    for stream in (False, True):
        scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, max_length=64, stream=stream)
        plans = list(scorer.plan_buffers(records))
        states = []
        scored = [d for docs in scorer.score_buffers(records, progress=states.append) for d in docs]
        fed = sum(p.tokens for b in plans for t in b.tasks for p in t)
        assert fed == states[-1].tokens_fed
        assert sum(b.unshared for b in plans) - fed == states[-1].tokens_shared > 0
        assert sum(b.tokens for b in plans) == sum(d.n_tokens for d in scored) == states[-1].tokens_done
        for p in (p for b in plans for t in b.tasks for p in t):
            assert p.tokens <= p.padded == p.rows * p.width and (p.cached or p.padded <= 64)


def test_stream_lines_equal_the_folder_runs_sequence_rows_over_several_buffers(gpt2_dir, tmp_path, forked_scorecli):
    options = ["-m", str(gpt2_dir), "--batch-tokens", "64", "--max-length", "64", "--limit", "120", "-q"]
    folder = runner.invoke(app, ["score", str(SAMPLES / "long.jsonl"), *options, "-o", str(tmp_path / "out")])
    assert folder.exit_code == 0, folder.output
    stdout = subprocess.run(
        [forked_scorecli, "score", str(SAMPLES / "long.jsonl"), *options, "-o", "-"], capture_output=True, check=True
    )
    lines = [json.loads(line) for line in stdout.stdout.decode().splitlines()]
    rows = pq.read_table(tmp_path / "out" / "sequences.parquet").to_pylist()
    assert [(line["doc"], line["id"]) for line in lines] == [(row["doc"], row["id"]) for row in rows]
    assert len(lines) == 120
    for line, row in zip(lines, rows):
        assert line["n_tokens"] == row["n_tokens"]
        assert abs(line["mean_logprob"] - row["mean_logprob"]) <= 1e-4
