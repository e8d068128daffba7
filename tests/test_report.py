"""`scorecli report`: the page's content against independent computations, with and without optional columns."""

import html
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from runfolders import make_run
from typer.testing import CliRunner

import scorecli.analysis.report as report
from scorecli.cli import app

runner = CliRunner()
TEXTS = [f"Text number {i} says {'more ' * (i % 7)}things about item {i * 37 % 11}." for i in range(25)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report") / "plain", texts=TEXTS)


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report") / "extras", extras=True, texts=TEXTS)


def _payloads(page):
    """The token data of each heatmap on the page: (kind, payload)."""
    found = re.findall(
        r"<div class='doc' data-kind='(\w+)'><h4>doc (\d+)[^<]*</h4><div class='tokens' data-doc='([^']*)'>", page
    )
    return [(kind, int(doc), json.loads(html.unescape(data))) for kind, doc, data in found]


def test_aggregates_equal_pandas_whatever_the_batches(extras, monkeypatch):
    monkeypatch.setattr(report, "BATCH_ROWS", 7)  # many batches
    agg = report.aggregate_tokens(extras)
    tokens = pd.read_parquet(extras / "tokens.parquet")
    surprisal, entropy = -tokens["logprob"].astype(float) / math.log(2), tokens["entropy"].astype(float) / math.log(2)
    by_pos = surprisal.groupby(tokens["position"]).mean()
    assert agg.position_surprisal[by_pos.index] / agg.position_count[by_pos.index] == pytest.approx(by_pos.to_numpy())
    assert agg.position_count.sum() == len(tokens) == agg.rows
    # density: every token counted once, in the bin its values fall in
    s_bin = np.minimum((surprisal / 0.5).astype(int), 47)
    e_bin = np.minimum((entropy / 0.25).astype(int), 47)
    expected = pd.crosstab(s_bin, e_bin)
    for (i, j), n in expected.stack().items():
        assert agg.density[i, j] == n
    assert agg.density.sum() == len(tokens)
    assert np.concatenate(agg.kl) == pytest.approx(tokens["kl"].to_numpy())


def test_report_without_optional_columns(plain, tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(plain), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page and "Content-Security-Policy" in page
    for chart in ("doc-perplexity", "by-position", "density"):
        assert f"data-chart='{chart}'" in page.replace('"', "'")
    seqs = pd.read_parquet(plain / "sequences.parquet")
    high = seqs.sort_values("perplexity", ascending=False, kind="stable")["doc"].tolist()[:10]
    low = seqs.sort_values("perplexity", kind="stable")["doc"].tolist()[:10]
    payloads = _payloads(page)
    assert [d for k, d, _ in payloads if k == "high"] == high
    assert [d for k, d, _ in payloads if k == "low"] == low
    tokens = pd.read_parquet(plain / "tokens.parquet")
    for _, doc, p in payloads:
        rows = tokens[tokens["doc"] == doc]
        assert p["text"] == [TEXTS[doc][a:b] for a, b in zip(rows["start"], rows["end"])]
        assert p["values"]["surprisal"] == pytest.approx((-rows["logprob"] / math.log(2)).tolist(), abs=1e-4)
        assert set(p["colours"]) == {"surprisal", "entropy"} and "top" not in p and "kl" not in p
    assert "value='kl'" not in page and "KL to the reference model" not in page
    figures = re.search(r"corpus perplexity</th><td>([^<]*)", page).group(1)
    expected = math.exp(-seqs["sum_logprob"].sum() / seqs["n_tokens"].sum())
    assert figures.strip() == f"{expected:,.3f}" and "95% CI" in page


def test_report_with_rank_topk_and_kl(extras):
    result = runner.invoke(app, ["report", str(extras)])
    assert result.exit_code == 0, result.output
    page = (extras / "report.html").read_text()
    tokens = pd.read_parquet(extras / "tokens.parquet")
    for _, doc, p in _payloads(page):
        rows = tokens[tokens["doc"] == doc]
        assert set(p["colours"]) == {"surprisal", "entropy", "kl", "rank"}
        assert p["kl"] == pytest.approx(rows["kl"].tolist(), abs=1e-5) and p["rank"] == rows["rank"].tolist()
        assert p["values"]["rank"] == pytest.approx(np.log2(rows["rank"]).tolist(), abs=1e-4)
        assert p["top"][0] == [["a", -0.5], ["b", -1.5], ["c", -2.5]]
    assert "KL to the reference model" in page and "value='rank'" in page
    kl = tokens["kl"].astype(float)
    cells = re.search(r"<table class='kl'>.*?</table>", page).group(0)
    assert f"<td>{kl.mean():.5f}</td>" in cells and f"<td>{np.percentile(kl, 90):.5f}</td>" in cells
    per_doc = kl.groupby(tokens["doc"]).mean().sort_values(ascending=False, kind="stable")
    top = re.findall(r"<tr><td>(\d+)</td><td>d\d+</td><td>([\d.]+)</td></tr>", page)
    assert [int(d) for d, _ in top] == per_doc.index[:10].tolist()


@pytest.fixture(scope="module")
def real_runs(gpt2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    data = root / "mixed.jsonl"
    data.write_text((__import__("conftest").SAMPLES / "mixed.jsonl").read_text())
    for name, extra in (("a", ["--words"]), ("b", ["--dtype", "bfloat16"])):
        result = runner.invoke(app, ["score", str(data), "-m", str(gpt2_dir), "-o", str(root / name), "-q", *extra])
        assert result.exit_code == 0, result.output
    return root / "a", root / "b"


def test_report_with_words_and_a_comparison(real_runs, tmp_path):
    a, b = real_runs
    out = tmp_path / "cmp.html"
    result = runner.invoke(app, ["report", str(a), "--compare", str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Word surprisal" in page and "Comparison with another run" in page
    words = pd.read_parquet(a / "words.parquet")
    assert f"{len(words):,} words, mean {(words['surprisal'] / math.log(2)).mean():.3f} bits" in page
    ta, tb = (pd.read_parquet(r / "tokens.parquet") for r in (a, b))
    movers = [(k, d, p) for k, d, p in _payloads(page) if k in ("improved", "worsened")]
    assert movers and all(set(p["colours"]) == {"delta"} for _, _, p in movers)
    for _, doc, p in movers:
        expected = tb[tb["doc"] == doc]["logprob"].astype(float).to_numpy() - ta[ta["doc"] == doc]["logprob"].to_numpy()
        assert p["values"]["delta"] == pytest.approx(expected.tolist(), abs=1e-4)
    compared = json.loads(runner.invoke(app, ["compare", str(a), str(b), "--json"]).stdout)
    assert [d for k, d, _ in movers if k == "improved"] == [r["doc"] for r in compared["most_improved"]]


def test_report_errors(plain, tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 5 and "no such run folder" in result.stderr
    result = runner.invoke(app, ["report", str(plain), "-o", str(tmp_path / "no" / "such" / "r.html")])
    assert result.exit_code == 5 and result.stderr.startswith("scorecli: error: --out ")


def test_report_of_a_joined_run_shows_the_joined_text(gpt2_dir, tmp_path):
    texts = __import__("conftest").sample_texts()[3:9]  # code with newlines, accented letters, Japanese
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "o"
    args = ["score", str(data), "-m", str(gpt2_dir), "--join", " | ", "-o", str(out), "-q"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    payloads = _payloads((out / "report.html").read_text())
    assert [(kind, doc) for kind, doc, _ in payloads] == [("high", 0), ("low", 0)]  # the one document, both ways
    expected = " | ".join(texts)  # what --join ' | ' scores, built from the records
    tokens = pd.read_parquet(out / "tokens.parquet")
    whole = [i for i, t in enumerate(tokens["token"]) if "\ufffd" not in t]
    assert len(whole) > len(tokens) / 2 and len(whole) < len(tokens)  # split characters too
    for _, _, p in payloads:
        assert "".join(p["text"]) == expected
        # Each token shows the characters its offsets cover in the joined text, which are those it decodes to.
        assert [p["text"][i] for i in whole] == [expected[tokens["start"][i] : tokens["end"][i]] for i in whole]
        assert [p["text"][i] for i in whole] == [tokens["token"][i] for i in whole]
