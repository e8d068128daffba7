"""`scorecli compare A B`: against hand computations from two small runs of tiny models."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from scorecli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(gpt2_dir, llama_dir, tmp_path_factory):
    """Runs of one input: tiny GPT-2 in float32 (a) and bfloat16 (b, same tokens), tiny Llama (l, other tokens)."""
    root = tmp_path_factory.mktemp("runs")
    data = root / "mixed.jsonl"
    shutil.copy(SAMPLES / "mixed.jsonl", data)
    out = {}
    for name, model, extra in (("a", gpt2_dir, []), ("b", gpt2_dir, ["--dtype", "bfloat16"]), ("l", llama_dir, [])):
        out[name] = root / name
        result = runner.invoke(app, ["score", str(data), "-m", str(model), "-o", str(out[name]), "-q", *extra])
        assert result.exit_code == 0, result.output
    out["input"] = data
    return out


def _seq(run):
    return pd.read_parquet(run / "sequences.parquet")


def _plain_paired(a, b, resamples=1000, seed=0):
    """Paired bootstrap by hand: the same resampled documents for both runs."""
    rng = np.random.default_rng(seed)
    ratio, dbpb = [], []
    for _ in range(resamples):
        i = rng.integers(0, len(a), size=len(a))
        pa_, pb = (math.exp(-s["sum_logprob"].to_numpy()[i].sum() / s["n_tokens"].to_numpy()[i].sum()) for s in (a, b))
        ba, bb = (
            -s["sum_logprob"].to_numpy()[i].sum() / (s["n_bytes"].to_numpy()[i].sum() * math.log(2)) for s in (a, b)
        )
        ratio.append(pb / pa_)
        dbpb.append(bb - ba)
    return np.quantile(ratio, [0.025, 0.975]).tolist(), np.quantile(dbpb, [0.025, 0.975]).tolist()


def test_compare_same_tokens_by_hand(runs, tmp_path):
    out = tmp_path / "cmp.parquet"
    result = runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    a, b = _seq(runs["a"]), _seq(runs["b"])

    table = pd.read_parquet(out)
    assert list(table.columns) == [
        "doc", "id", "n_tokens_a", "n_tokens_b", "mean_logprob_a", "mean_logprob_b", "delta_mean_logprob",
        "perplexity_a", "perplexity_b", "bits_per_byte_a", "bits_per_byte_b",
    ]  # fmt: skip
    assert table["doc"].tolist() == a["doc"].tolist() and table["id"].tolist() == a["id"].tolist()
    assert np.allclose(table["delta_mean_logprob"], b["mean_logprob"] - a["mean_logprob"])
    assert np.array_equal(table["perplexity_b"], b["perplexity"]) and np.array_equal(table["n_tokens_a"], a["n_tokens"])

    assert s["same_tokens"] is True and s["compared_by"] == "perplexity"
    ppl_a = math.exp(-a["sum_logprob"].sum() / a["n_tokens"].sum())
    ppl_b = math.exp(-b["sum_logprob"].sum() / b["n_tokens"].sum())
    assert s["perplexity_a"] == pytest.approx(ppl_a) and s["perplexity_b"] == pytest.approx(ppl_b)
    assert s["perplexity_ratio"] == pytest.approx(ppl_b / ppl_a)
    bpb = [-x["sum_logprob"].sum() / (x["n_bytes"].sum() * math.log(2)) for x in (a, b)]
    assert s["bits_per_byte_delta"] == pytest.approx(bpb[1] - bpb[0])
    ratio_ci, dbpb_ci = _plain_paired(a, b)
    assert s["perplexity_ratio_ci"] == pytest.approx(ratio_ci, rel=1e-9)
    assert s["bits_per_byte_delta_ci"] == pytest.approx(dbpb_ci, rel=1e-6, abs=1e-12)
    assert s["perplexity_ratio_ci"][0] <= s["perplexity_ratio"] <= s["perplexity_ratio_ci"][1]
    assert s["share_b_better"] == pytest.approx(np.mean(b["bits_per_byte"] < a["bits_per_byte"]))

    delta = b["mean_logprob"] - a["mean_logprob"]
    expected_up = [d for d in delta.sort_values(ascending=False, kind="stable").index if delta[d] > 0][:5]
    assert [r["doc"] for r in s["most_improved"]] == [int(a["doc"][i]) for i in expected_up]
    texts = [json.loads(line)["text"] for line in runs["input"].read_text().splitlines() if line.strip()]
    first = s["most_improved"][0]
    assert first["preview"] == " ".join(texts[first["doc"]].split())[: len(first["preview"])] and first["preview"]
    assert first["perplexity_b"] == pytest.approx(b["perplexity"][first["doc"]])

    ta, tb = (pd.read_parquet(r / "tokens.parquet") for r in (runs["a"], runs["b"]))
    d = tb["logprob"].astype(float) - ta["logprob"].astype(float)
    assert s["token_delta"]["tokens"] == len(d)
    assert s["token_delta"]["mean"] == pytest.approx(d.mean())
    assert s["token_delta"]["p50"] == pytest.approx(np.percentile(d, 50))
    assert s["token_delta"]["share_better"] == pytest.approx((d > 0).mean())


def test_compare_prints_tables(runs):
    result = runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"])])
    assert result.exit_code == 0, result.output
    for text in ("corpus perplexity", "bits per byte", "most improved", "per-token Δ logprob", "95% CI"):
        assert text in result.stdout, text


def test_different_tokenizers_compare_by_bits_per_byte(runs):
    result = subprocess.run(
        [sys.executable, "-m", "scorecli", "compare", str(runs["a"]), str(runs["l"]), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["same_tokens"] is False and s["compared_by"] == "bits_per_byte" and s["token_delta"] is None
    a, b = _seq(runs["a"]), _seq(runs["l"])
    assert s["share_b_better"] == pytest.approx(np.mean(b["bits_per_byte"] < a["bits_per_byte"]))
    delta = a["bits_per_byte"] - b["bits_per_byte"]
    top = [d for d in delta.sort_values(ascending=False, kind="stable").index if delta[d] > 0][:5]
    assert [r["doc"] for r in s["most_improved"]] == top
    shown = runner.invoke(app, ["compare", str(runs["a"]), str(runs["l"])])
    assert "compare them by bits per byte" in " ".join(shown.stdout.split())


def _one_line_error(result, code=5):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorecli: error: "), result.stderr
    return lines[0]


def test_mismatched_runs_are_a_clear_error(runs, gpt2_dir, tmp_path):
    other = tmp_path / "other"
    assert (
        runner.invoke(
            app, ["score", str(SAMPLES / "stimuli.jsonl"), "-m", str(gpt2_dir), "-o", str(other), "-q"]
        ).exit_code
        == 0
    )
    assert "different inputs" in _one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(other)]))
    # same file name and size, other ids
    (tmp_path / "x").mkdir()
    renamed = tmp_path / "x" / "mixed.jsonl"
    renamed.write_text(runs["input"].read_text().replace('"id": "m', '"id": "z'))
    ids = tmp_path / "ids"
    assert runner.invoke(app, ["score", str(renamed), "-m", str(gpt2_dir), "-o", str(ids), "-q"]).exit_code == 0
    assert "`id` columns differ" in _one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(ids)]))
    assert "no such run folder" in _one_line_error(
        runner.invoke(app, ["compare", str(runs["a"]), str(tmp_path / "nope")])
    )
    assert "not a finished scorecli run" in _one_line_error(
        runner.invoke(app, ["compare", str(tmp_path), str(runs["a"])])
    )
