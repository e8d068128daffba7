"""Word-level surprisal: words by hand, sums that add up, and words.parquet from the CLI."""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES, sample_texts
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.data import words as words_module
from scorecli.data.tables import WORD_SCHEMA
from scorecli.data.words import Words, assign_words, word_spans, word_stats
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import Record


def test_words_by_hand():
    text = "ab cd.\n  ef g"
    spans = word_spans(text)
    assert [text[a:b] for a, b in spans] == ["ab", "cd.", "ef", "g"]
    # tokens: "a" "b" " cd" ".\n" "  " "ef" " g"
    offsets = np.array([(0, 1), (1, 2), (2, 5), (5, 7), (7, 9), (9, 11), (11, 13)])
    words = assign_words(spans, offsets)
    # ".\n" ends in a newline but its last character belongs to "cd."; "  " alone leads into "ef"
    assert words.token_word.tolist() == [0, 0, 1, 1, 2, 2, 3]
    stats = word_stats(words, np.array([-1, -2, -3, -4, -5, -6, -7.0]), np.array([9, 8, 7, 6, 5, 4, 3.0]))
    assert stats["n_tokens"].tolist() == [2, 2, 2, 1]
    assert stats["surprisal"].tolist() == [3, 7, 11, 7]
    assert stats["entropy"].tolist() == [9, 7, 5, 3]  # each word's first token


@pytest.mark.parametrize("slice_tokens", [1, 7, 1 << 20])
def test_word_stats_equal_a_plain_loop_over_each_words_tokens(monkeypatch, slice_tokens):
    # Slices of a few tokens cut words apart: the sums are still those of adding each word's tokens in order.
    monkeypatch.setattr(words_module, "_SLICE", slice_tokens)
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 6, 200)
    token_word = np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)
    logprobs = (rng.standard_normal(len(token_word)) * 4 - 3).astype(np.float32)
    entropies = rng.random(len(token_word)).astype(np.float32) * 5
    spans = np.arange(2 * len(lengths)).reshape(-1, 2)
    stats = word_stats(Words(spans[:, 0], spans[:, 1], token_word), logprobs, entropies)
    surprisal, first = [], 0
    for length in lengths.tolist():
        total = 0.0
        for lp in logprobs[first : first + length].tolist():
            total += -lp
        surprisal.append(total)
        first += length
    np.testing.assert_array_equal(stats["n_tokens"], lengths)
    assert stats["surprisal"].dtype == np.float64 and stats["surprisal"].tolist() == surprisal
    assert stats["entropy"].dtype == np.float32
    np.testing.assert_array_equal(stats["entropy"], entropies[np.cumsum(lengths) - lengths])


def test_trailing_space_goes_to_the_last_word_and_response_spans_limit_words():
    text = "Q: hi A: yes no  "
    spans = word_spans(text, ((9, len(text)),))
    assert [text[a:b] for a, b in spans] == ["yes", "no"]
    words = assign_words(spans, np.array([(8, 12), (12, 15), (15, 17)]))
    assert words.token_word.tolist() == [0, 1, 1]


def test_word_surprisals_sum_to_the_document_total(tiny):
    texts = sample_texts()
    for score, text in zip(Scorer(tiny.model, tiny.tokenizer).score_texts(texts), texts):
        rows = score.word_rows()
        assert len(rows["word"]) == len(text.split())  # with a BOS every word has a scored token
        assert [text[a:b] for a, b in zip(rows["start"], rows["end"])] == text.split() == rows["text"]
        assert rows["surprisal"].sum() == pytest.approx(-score.sum_logprob, rel=1e-9, abs=1e-6)
        assert rows["n_tokens"].sum() == score.n_tokens
        row = score.sequence_row()
        assert row["n_words"] == len(text.split())
        if row["n_words"]:
            expected = -score.sum_logprob / len(text.split())  # log of the word perplexity
            assert row["word_perplexity"] == (pytest.approx(math.exp(expected)) if expected < 700 else math.inf)


def test_response_words_only(tiny):
    prompt, response = "Question: name a colour.\nAnswer:", " deep blue"
    text = prompt + response
    [score] = Scorer(tiny.model, tiny.tokenizer, all_tokens=True).score_records(
        [Record(0, text, spans=((len(prompt), len(text)),))]
    )
    assert score.word_rows()["text"] == ["deep", "blue"]
    assert score.word_rows()["surprisal"].sum() == pytest.approx(-score.sum_logprob, rel=1e-9)


def test_cli_words_parquet(gpt2_dir, tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(out), "--words"]
    )
    assert result.exit_code == 0, result.output
    assert "word perplexity" in result.stderr
    words = pd.read_parquet(out / "words.parquet")
    assert list(words.columns) == WORD_SCHEMA.names
    tokens = pd.read_parquet(out / "tokens.parquet")
    seqs = pd.read_parquet(out / "sequences.parquet")
    texts = sample_texts()
    assert len(words) == sum(len(t.split()) for t in texts) == seqs["n_words"].sum()
    per_doc = words.groupby("doc")["surprisal"].sum()
    np.testing.assert_allclose(per_doc, -tokens.groupby("doc")["logprob"].sum().loc[per_doc.index], rtol=1e-5)
    first = words.iloc[0]
    assert texts[0][first["start"] : first["end"]] == first["text"] == texts[0].split()[0]


def test_whitespace_only_texts_have_no_words_and_do_not_skew_word_perplexity(gpt2_dir, tmp_path):
    data = tmp_path / "ws.jsonl"
    data.write_text('{"text": "hello there"}\n{"text": "   \\n"}\n')
    result = CliRunner().invoke(app, ["score", str(data), "-m", str(gpt2_dir), "-o", str(tmp_path / "o"), "--words"])
    assert result.exit_code == 0, result.output
    seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    assert seqs["n_words"].tolist() == [2, 0] and seqs["n_tokens"].iloc[1] > 0
    assert seqs["word_perplexity"].isna().tolist() == [False, True]
    words = pd.read_parquet(tmp_path / "o" / "words.parquet")
    assert words["text"].tolist() == ["hello", "there"]
    summary = __import__("json").loads((tmp_path / "o" / "summary.json").read_text())["summary"]
    assert summary["word_perplexity"] == pytest.approx(seqs["word_perplexity"].iloc[0])


def test_words_of_a_truncated_text_need_only_its_scored_part(tiny):
    # A truncated text's word rows come from the words up to where its tokens reach, not from the whole text.

    text = "  Some words, then   more\nwords and a last one that is never reached " * 20
    enc = tiny.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64)
    for k in range(1, 60):
        whole = assign_words(word_spans(text), offsets[:k])
        reach = assign_words(word_spans(text, reach=int(offsets[k - 1, 1])), offsets[:k])
        for a, b in zip((whole.starts, whole.ends, whole.token_word), (reach.starts, reach.ends, reach.token_word)):
            assert np.array_equal(a, b)
    assert word_spans(text, reach=10).tolist() == [[2, 6], [7, 13]]  # "Some", and "words," that holds it
    assert word_spans(text, reach=13).tolist() == [[2, 6], [7, 13], [14, 18]]  # a word ended: the next one
