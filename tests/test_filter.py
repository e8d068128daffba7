import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES, one_line_error
from typer.testing import CliRunner

from scorecli.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def scored_jsonl(gpt2_dir, tmp_path_factory):
    """Two JSONL files (odd spacing, an empty text, a bad record) scored as one corpus with skipped rejects."""
    folder = tmp_path_factory.mktemp("filter")
    data = folder / "data"
    data.mkdir()
    lines = (SAMPLES / "mixed.jsonl").read_bytes().splitlines(keepends=True)
    (data / "a.jsonl").write_bytes(b"".join(lines[:10]) + b'{"id": "empty",  "text": ""}\r\n\n')
    (data / "b.jsonl").write_bytes(b'{"id": "bad", "text": 5}\n' + b"".join(lines[10:]).rstrip(b"\n"))
    result = _run("score", data, "--out", folder / "scores", "--model", gpt2_dir, "--on-error", "skip", "-q")
    assert result.exit_code == 0, result.output
    records = [line for f in ("a.jsonl", "b.jsonl") for line in (data / f).read_bytes().splitlines() if line.strip()]
    return folder, records


def _perplexities(scores, n):
    seqs = pd.read_parquet(scores / "sequences.parquet")
    ppl = np.full(n, np.nan)
    ppl[seqs["doc"].to_numpy()] = seqs["perplexity"].astype(float).to_numpy()
    return ppl


def test_max_perplexity_copies_the_passing_lines_byte_for_byte(scored_jsonl, tmp_path):
    folder, records = scored_jsonl
    ppl = _perplexities(folder / "scores", len(records))
    threshold = float(np.nanmedian(ppl))
    out = tmp_path / "kept.jsonl"
    result = _run("filter", folder / "data", "--scores", folder / "scores", "--out", out, "--max-perplexity", threshold)
    assert result.exit_code == 0, result.output
    expected = b"".join(r + b"\n" for r, p in zip(records, ppl) if p <= threshold)
    assert out.read_bytes() == expected
    assert 0 < expected.count(b"\n") < len(records)
    assert f"{int(np.sum(ppl <= threshold))} kept" in result.stderr
    assert "2 left out: no scored token" in result.stderr  # the empty text and the rejected record

    out = tmp_path / "low.jsonl.gz"
    result = _run("filter", folder / "data", "--scores", folder / "scores", "-o", out, "--min-perplexity", threshold)
    assert result.exit_code == 0, result.output
    import gzip

    assert gzip.decompress(out.read_bytes()) == b"".join(r + b"\n" for r, p in zip(records, ppl) if p >= threshold)


def test_buckets_split_at_numpy_percentiles(scored_jsonl, tmp_path):
    folder, records = scored_jsonl
    ppl = _perplexities(folder / "scores", len(records))
    low, high = np.percentile(ppl[~np.isnan(ppl)], [30, 60])
    result = _run(
        "filter", folder / "data", "--scores", folder / "scores", "--out", tmp_path / "b", "--buckets", "30,60"
    )
    assert result.exit_code == 0, result.output
    parts = {
        "head": [r for r, p in zip(records, ppl) if p < low],
        "middle": [r for r, p in zip(records, ppl) if low <= p < high],
        "tail": [r for r, p in zip(records, ppl) if p >= high],
    }
    for name, expected in parts.items():
        assert (tmp_path / "b" / f"{name}.jsonl").read_bytes() == b"".join(r + b"\n" for r in expected)
        assert expected
    assert f"perplexity < {low:,.4g}" in result.stderr


def test_parquet_keeps_schema_and_every_column(gpt2_dir, tmp_path):
    rows = pd.read_parquet(SAMPLES / "mixed.parquet")
    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.append_column("n", pa.array(range(len(rows)), pa.int16()))
    table = table.append_column("tags", pa.array([[i, i + 1] for i in range(len(rows))], pa.list_(pa.int32())))
    source = tmp_path / "data.parquet"
    pq.write_table(table, source, row_group_size=7)
    result = _run("score", source, "--out", tmp_path / "scores", "--model", gpt2_dir, "-q")
    assert result.exit_code == 0, result.output
    ppl = _perplexities(tmp_path / "scores", table.num_rows)
    threshold = float(np.median(ppl))
    out = tmp_path / "kept.parquet"
    result = _run("filter", source, "--scores", tmp_path / "scores", "--out", out, "--min-perplexity", threshold)
    assert result.exit_code == 0, result.output
    kept = pq.read_table(out)
    assert kept.schema.equals(table.schema)
    assert kept.equals(table.filter(pa.array(ppl >= threshold)))


def test_filter_refuses_other_inputs_and_bad_options(scored_jsonl, tmp_path):
    folder, _ = scored_jsonl
    data, scores = folder / "data", folder / "scores"
    line = one_line_error(
        _run("filter", data / "a.jsonl", "--scores", scores, "-o", tmp_path / "x.jsonl", "--max-perplexity", 9), 3
    )
    assert "--scores" in line and "input" in line
    line = one_line_error(_run("filter", data, "--scores", scores, "-o", tmp_path / "x.jsonl", "--buckets", "60,30"), 2)
    assert "--buckets" in line
    both = ["--buckets", "30,60", "--max-perplexity", "9"]
    assert "--max-perplexity" in one_line_error(
        _run("filter", data, "--scores", scores, "-o", tmp_path / "y", *both), 2
    )
    assert "--max-perplexity" in one_line_error(_run("filter", data, "--scores", scores, "-o", tmp_path / "z.jsonl"), 2)
    assert ".jsonl" in one_line_error(
        _run("filter", data, "--scores", scores, "-o", tmp_path / "x.parquet", "--max-perplexity", 9), 2
    )
    (tmp_path / "exists.jsonl").write_text("old\n")
    line = one_line_error(
        _run("filter", data, "--scores", scores, "-o", tmp_path / "exists.jsonl", "--max-perplexity", 9), 5
    )
    assert "--overwrite" in line and (tmp_path / "exists.jsonl").read_text() == "old\n"
    assert "sequences.parquet" in one_line_error(
        _run("filter", data, "--scores", tmp_path, "-o", tmp_path / "x.jsonl", "--max-perplexity", 9), 5
    )
