import math
from io import StringIO

import numpy as np
import pytest
from rich.console import Console

from scorecli.scores import DocScore
from scorecli.summary import Summary, render
from scorecli.words import Words


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
        is_response=np.ones(n, bool),
        n_bytes=len(text.encode()) if n else 0,
        truncated=truncated,
        # every token is its own word
        words=Words(np.arange(n), np.arange(n) + 1, np.arange(n)),
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


def test_word_perplexity_and_a_state_that_survives_json():
    import json

    summary = Summary()
    for i in range(8):
        summary.add(_doc(i, [-0.25 * (i + 1)] * (i + 2)))
    # one token per word here, so word perplexity is the corpus perplexity
    assert summary.n_words == summary.n_tokens and summary.word_perplexity == pytest.approx(summary.perplexity)
    restored = Summary.from_state(json.loads(json.dumps(summary.state())))
    assert restored.as_dict() == summary.as_dict()
    assert restored.highest() == summary.highest() and restored.lowest() == summary.lowest()
    extra = _doc(8, [-9.0] * 2)
    summary.add(extra)
    restored.add(extra)
    assert restored.highest() == summary.highest()
