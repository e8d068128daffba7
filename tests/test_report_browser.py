"""The report in a real browser: headless Chromium, networking off (`make test` installs Chromium)."""

import math
import re
import sys

import pandas as pd
import pytest
from conftest import ROOT
from runfolders import make_run
from typer.testing import CliRunner

from scorecli.analysis.heat import SCALES, colours
from scorecli.cli import app

sys.path.insert(0, str(ROOT / "scripts"))
from report_browser import chromium_paths, inspect_report, open_report  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_paths() is None, reason="needs chromium and chromium-driver (make test installs them)"),
]
runner = CliRunner()
TEXTS = [f"Line {i}: the {'quick ' * (i % 5)}brown fox number {i * 13 % 7}." for i in range(24)]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("browser") / "run", extras=True, texts=TEXTS)
    other = make_run(tmp_path_factory.mktemp("browser") / "run", extras=True, texts=TEXTS, seed=1)
    result = runner.invoke(app, ["report", str(run), "--compare", str(other)])
    assert result.exit_code == 0, result.output
    return run


def _rgb(css):
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


def test_report_loads_offline_without_errors_and_everything_renders(page):
    chrome = open_report(page / "report.html")
    try:
        found = inspect_report(chrome)
        # switching the colouring to entropy recolours the first token
        chrome.execute_script("document.querySelector(\"input[value='entropy']\").click();")
        entropy_bg = chrome.execute_script("return getComputedStyle(document.querySelector('.tok')).backgroundColor;")
    finally:
        chrome.quit()
    assert found["errors"] == []
    assert found["remote_requests"] == [] and found["requests"][0].startswith("file:")
    charts = {e["id"]: e for e in found["elements"] if e["kind"] == "chart"}
    assert set(charts) >= {"doc-perplexity", "by-position", "density", "compare-scatter", "compare-delta"}
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 200 and chart["svg"] > 0, chart
    heatmaps = [e for e in found["elements"] if e["kind"] == "heatmap"]
    assert len(heatmaps) >= 20  # 10 highest, 10 lowest (and the movers of the comparison)
    assert all(h["tokens"] > 0 and h["width"] > 300 and h["height"] > 10 for h in heatmaps)

    # hovering the first token (of the highest-perplexity document) shows its values
    seqs = pd.read_parquet(page / "sequences.parquet")
    doc = int(seqs.sort_values("perplexity", ascending=False, kind="stable")["doc"].iloc[0])
    tokens = pd.read_parquet(page / "tokens.parquet")
    first = tokens[tokens["doc"] == doc].iloc[0]
    tip = found["hover"]["tooltip"]
    assert found["hover"]["token"] == TEXTS[doc][first["start"] : first["end"]]
    assert f"logprob {first['logprob']:.4f}" in tip
    assert f"surprisal {-first['logprob'] / math.log(2):.3f} bits" in tip
    assert f"entropy {first['entropy'] / math.log(2):.3f} bits" in tip
    assert f"rank {first['rank']}" in tip and f"KL {first['kl']:.4f} nats" in tip
    assert 'top alternatives: "a" -0.50, "b" -1.50, "c" -2.50' in tip
    surprisal = SCALES["surprisal"]
    expected = colours(surprisal.position(surprisal.values([first["logprob"]])))[0]
    assert _rgb(found["hover"]["background"]) == tuple(expected)
    entropy = SCALES["entropy"]
    assert _rgb(entropy_bg) == tuple(colours(entropy.position(entropy.values([first["entropy"]])))[0])
