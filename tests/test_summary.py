import math
from io import StringIO

import numpy as np
import pytest
from rich.console import Console

from scorecli.engine import DocScore
from scorecli.summary import Summary, render


def _doc(doc, logprobs, text="some text", truncated=False):
    n = len(logprobs)
    return DocScore(
        doc=doc,
        id=f"d{doc}",
        text=text,
        token_ids=np.zeros(n, np.int32),
        positions=np.arange(n, dtype=np.int32),
        starts=np.zeros(n, np.int32),
        ends=np.zeros(n, np.int32),
        logprobs=np.array(logprobs, np.float32),
        entropies=np.full(n, 2.0, np.float32),
        tokens=["x"] * n,
        n_bytes=len(text.encode()) if n else 0,
        truncated=truncated,
    )


def test_figures_by_hand_and_extremes():
    summary = Summary()
    docs = [_doc(i, [-0.5 * (i + 1)] * (i + 1)) for i in range(7)] + [_doc(7, [], text="")]
    for d in docs:
        summary.add(d)
    total_lp = sum(-0.5 * (i + 1) * (i + 1) for i in range(7))
    total_tokens = sum(i + 1 for i in range(7))
    assert summary.n_docs == 8 and summary.n_unscored == 1 and summary.n_tokens == total_tokens
    assert summary.perplexity == pytest.approx(math.exp(-total_lp / total_tokens))
    assert summary.mean_doc_perplexity == pytest.approx(sum(math.exp(0.5 * (i + 1)) for i in range(7)) / 7)
    assert summary.bits_per_byte == pytest.approx(-total_lp / (7 * 9 * math.log(2)))
    assert summary.mean_entropy == pytest.approx(2.0)
    assert [d for _, d, *_ in summary.highest()] == [6, 5, 4, 3, 2]
    assert [d for _, d, *_ in summary.lowest()] == [0, 1, 2, 3, 4]


def test_render_keeps_numbers_whole_at_80_columns():
    summary = Summary()
    summary.add(_doc(0, [-9.0] * 3, text="a long text " * 20, truncated=True))
    buf = StringIO()
    Console(file=buf, width=80).print(render(summary, {"max_length": "8", "model": "m", "head": "chunked output head"}))
    out = buf.getvalue()
    assert "8,103.084" in out and "truncated" in out and "d0" in out
    assert all(len(line) <= 80 for line in out.splitlines())
