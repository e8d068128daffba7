"""Bootstrap intervals over documents, against a plain implementation, and in the CLI's summary.json."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from scorecli.analysis.bootstrap import DocSums, corpus_intervals, resample_sums
from scorecli.cli import app

runner = CliRunner()


def _corpus(n_docs, seed=1):
    """Per-document (n_tokens, sum_logprob, n_bytes) of a made-up corpus whose documents differ."""
    rng = np.random.default_rng(seed)
    n_tokens = rng.integers(1, 200, n_docs).astype(float)
    rate = rng.uniform(1.0, 4.0, n_docs)  # each document its own difficulty: tokens of one move together
    return np.stack([n_tokens, -rate * n_tokens, n_tokens * rng.uniform(3, 5, n_docs)], axis=1)


def _plain_intervals(rows, resamples, seed):
    """Resample the documents one resample at a time, with the same generator calls."""
    rng = np.random.default_rng(seed)
    ppl, bpb = [], []
    for _ in range(resamples):
        pick = rows[rng.integers(0, len(rows), size=len(rows))]
        n_tokens, lp, n_bytes = pick[:, 0].sum(), pick[:, 1].sum(), pick[:, 2].sum()
        ppl.append(math.exp(-lp / n_tokens))
        bpb.append(-lp / (n_bytes * math.log(2)))
    return [np.quantile(ppl, [0.025, 0.975]).tolist(), np.quantile(bpb, [0.025, 0.975]).tolist()]


def _sums(rows, docs=None, max_units=1 << 14):
    sums = DocSums(3, max_units=max_units)
    sums.add(np.arange(len(rows)) if docs is None else docs, rows)
    return sums


@pytest.mark.parametrize("n_docs", [2, 37, 500])
def test_intervals_equal_a_plain_bootstrap_with_the_same_seed(n_docs):
    rows = _corpus(n_docs)
    got = corpus_intervals(_sums(rows), resamples=300, seed=7)
    ppl, bpb = _plain_intervals(rows, 300, 7)
    assert got["perplexity_ci"] == pytest.approx(ppl, rel=1e-12)
    assert got["bits_per_byte_ci"] == pytest.approx(bpb, rel=1e-12)
    assert got["bootstrap_resamples"] == 300 and got["bootstrap_units"] == "documents"
    # the same call again gives the same interval: the seed is fixed
    assert corpus_intervals(_sums(rows), resamples=300, seed=7) == got


def test_interval_contains_the_estimate_and_narrows_as_documents_are_added():
    widths = []
    for n_docs in (50, 400, 3200):
        rows = _corpus(n_docs)
        estimate = math.exp(-rows[:, 1].sum() / rows[:, 0].sum())
        low, high = corpus_intervals(_sums(rows))["perplexity_ci"]
        assert low < estimate < high
        widths.append(high - low)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # about 1/sqrt(n): 8 times the documents, 1/2.8 the width


def test_chunked_resampling_equals_one_resample_at_a_time():
    rows = _corpus(5000)
    rng = np.random.default_rng(3)
    plain = np.stack([rows[rng.integers(0, 5000, size=5000)].sum(0) for _ in range(50)])
    assert resample_sums(rows, resamples=50, seed=3) == pytest.approx(plain, rel=1e-12)


def test_buckets_beyond_max_units_are_a_fixed_function_of_the_document():
    rows = _corpus(1000)
    docs = np.arange(1000)
    whole = _sums(rows, max_units=64)
    assert whole.bucketed and len(whole.units()) == 64
    # added in pieces and out of order (as a resumed run might), the buckets are the same
    pieces = DocSums(3, max_units=64)
    order = np.random.default_rng(0).permutation(1000)
    for part in np.array_split(order, 7):
        pieces.add(docs[part], rows[part])
    assert pieces.units() == pytest.approx(whole.units(), rel=1e-12)
    # and equal plain per-bucket sums of a Fibonacci hash of the document number
    bucket = [((d * 0x9E3779B97F4A7C15) % 2**64) >> 58 for d in range(1000)]
    plain = pd.DataFrame(rows).groupby(bucket).sum().to_numpy()
    assert whole.units() == pytest.approx(plain, rel=1e-12)
    # buckets of random documents give about the same interval as the documents themselves
    by_doc = corpus_intervals(_sums(rows))["perplexity_ci"]
    by_bucket = corpus_intervals(whole)["perplexity_ci"]
    assert corpus_intervals(whole)["bootstrap_units"] == "buckets of documents"
    assert (by_bucket[1] - by_bucket[0]) == pytest.approx(by_doc[1] - by_doc[0], rel=0.35)


def test_fewer_than_two_documents_have_no_interval():
    got = corpus_intervals(_sums(_corpus(1)))
    assert got["perplexity_ci"] is None and got["bits_per_byte_ci"] is None


@pytest.mark.parametrize("out", ["folder", "stdout"])
def test_cli_summary_has_the_intervals_of_its_sequences(gpt2_dir, tmp_path, out):
    args = ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir)]
    if out == "folder":
        result = runner.invoke(app, [*args, "-o", str(tmp_path / "o")])
        assert result.exit_code == 0, result.output
        figures = json.loads((tmp_path / "o" / "summary.json").read_text())["summary"]
        seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    else:
        result = runner.invoke(app, [*args, "-o", "-"])
        assert result.exit_code == 0, result.output
        seqs = pd.DataFrame([json.loads(line) for line in result.stdout.splitlines()])
    scored = seqs[seqs["n_tokens"] > 0]
    rows = scored[["n_tokens", "sum_logprob", "n_bytes"]].to_numpy(float)
    ppl, bpb = _plain_intervals(rows, 1000, 0)
    assert f"{bpb[0]:,.3f}–{bpb[1]:,.3f}" in result.stderr  # the summary shows the interval
    if out == "folder":
        assert figures["perplexity_ci"] == pytest.approx(ppl, rel=1e-9)
        assert figures["bits_per_byte_ci"] == pytest.approx(bpb, rel=1e-9)
        assert figures["bootstrap_resamples"] == 1000
