"""Minimal pairs at the critical word: choices.parquet's critical-word columns and the summary's share.

The reference is independent of the choices code: every choice scored as its own plain record with
--words, the first differing word found by hand from the sentences split at whitespace, and that word's
row of the plain run's words.parquet read back.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from scorecli.analysis.summary import critical_figures
from scorecli.cli import app
from scorecli.data.critical import critical_index

TOL = 1e-4
# Two-choice records: differing mid-sentence, at the first word, identical, one a prefix of the other.
PAIRS = [
    ("The cats on the mat are sleeping.", "The cats on the mat is sleeping."),
    ("Birds sing at dawn.", "Bird sing at dawn."),
    ("The river is wide.", "The river is wide."),
    ("The dog barked", "The dog barked loudly"),
    ("She has written three letters today.", "She have written three letters today."),
    ("Every child knows the song.", "Every child know the song."),
]
THREE = ["The cat sat here.", "The cat sat there.", "The dog sat here."]


@pytest.fixture(scope="module", params=["gpt2", "sp"])
def model_dir(request: pytest.FixtureRequest):
    """A tiny model whose tokenizer marks word starts: GPT-2's byte-level Ġ, or SentencePiece's ▁."""
    return request.getfixturevalue(f"{request.param}_dir")


def _jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _score(model_dir, data, out, *more: str) -> None:
    result = CliRunner().invoke(app, ["score", str(data), "-m", str(model_dir), "-o", str(out), "-q", *more])
    assert result.exit_code == 0, result.output


def _by_hand(sentences: list[str]) -> int | None:
    """The first whitespace-word index at which the sentences do not all have the same word, by hand."""
    split = [s.split() for s in sentences]
    for i in range(max(len(w) for w in split)):
        if len({w[i] if i < len(w) else None for w in split}) > 1:
            return i
    return None


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """A choice run of PAIRS and of THREE with --words, and every sentence scored alone as a plain record."""
    tmp = tmp_path_factory.mktemp("critical")
    pairs = _jsonl(tmp / "pairs.jsonl", [{"id": f"p{i}", "good": g, "bad": b} for i, (g, b) in enumerate(PAIRS)])
    three = _jsonl(tmp / "three.jsonl", [{"id": "t0", "options": THREE}])
    sentences = [s for pair in PAIRS for s in pair] + THREE
    plain = _jsonl(tmp / "plain.jsonl", [{"text": s} for s in sentences])
    _score(model_dir, pairs, tmp / "pairs", "--choices-field", "good,bad", "--words")
    _score(model_dir, three, tmp / "three", "--choices-field", "options", "--words")
    _score(model_dir, plain, tmp / "plain", "--words")
    return tmp


def _plain_word(words: pd.DataFrame, doc: int, index: int | None) -> pd.Series | None:
    """The plain run's row of word `index` of document `doc` (None: no such word)."""
    if index is None:
        return None
    row = words[(words["doc"] == doc) & (words["word"] == index)]
    return None if row.empty else row.iloc[0]


def _check_record(choices: pd.DataFrame, sentences: list[str], plain: pd.DataFrame, first_doc: int) -> None:
    """A record's choice rows against each sentence scored alone: the critical word found by hand."""
    index = _by_hand(sentences)
    assert len(choices) == len(sentences)
    for c, (sentence, row) in enumerate(zip(sentences, choices.itertuples())):
        assert row.choice == c and row.text == sentence
        if index is None:
            assert pd.isna(row.critical_word)
        else:
            assert row.critical_word == index
        word = _plain_word(plain, first_doc + c, index)
        if word is None:  # no critical word, or this choice ended before it
            assert pd.isna(row.critical_text)
            assert pd.isna(row.critical_surprisal) and pd.isna(row.critical_surprisal_corrected)
            continue
        assert row.critical_text == sentence.split()[index] == word["text"]
        assert row.critical_surprisal == pytest.approx(word["surprisal"], abs=TOL)
        assert row.critical_surprisal_corrected == pytest.approx(word["surprisal_corrected"], abs=TOL)


def test_critical_word_of_pairs_equals_each_sentence_scored_alone(runs):
    choices = pd.read_parquet(runs / "pairs" / "choices.parquet")
    plain = pd.read_parquet(runs / "plain" / "words.parquet")
    assert [c for c in choices.columns if c.startswith("critical")] == [
        "critical_word",
        "critical_text",
        "critical_surprisal",
        "critical_surprisal_corrected",
    ]
    for doc, pair in enumerate(PAIRS):
        _check_record(choices[choices["doc"] == doc], list(pair), plain, 2 * doc)
    # The cases are there: a pair at its first word, identical choices (null), a choice that ends before.
    assert [_by_hand(list(pair)) for pair in PAIRS] == [5, 0, None, 3, 1, 2]
    assert choices.loc[choices["doc"] == 3, "critical_text"].fillna("-").tolist() == ["-", "loudly"]


def test_critical_word_of_three_choices(runs):
    choices = pd.read_parquet(runs / "three" / "choices.parquet")
    plain = pd.read_parquet(runs / "plain" / "words.parquet")
    # "The cat sat here." / "The cat sat there." / "The dog sat here.": not all agree at word 1 already.
    assert _by_hand(THREE) == 1
    _check_record(choices, THREE, plain, 2 * len(PAIRS))
    assert choices["critical_text"].tolist() == ["cat", "cat", "dog"]


def test_words_of_a_choice_run_are_each_sentences_words(runs):
    words = pd.read_parquet(runs / "pairs" / "words.parquet")
    plain = pd.read_parquet(runs / "plain" / "words.parquet")
    assert list(words.columns[:4]) == ["doc", "id", "choice", "word"]
    # A choice run's words, record by record and choice by choice, are the plain run's, document by document.
    expected = plain[plain["doc"] < 2 * len(PAIRS)].reset_index(drop=True)
    assert (words["doc"] * 2 + words["choice"]).tolist() == expected["doc"].tolist()
    assert words["word"].tolist() == expected["word"].tolist() and words["text"].tolist() == expected["text"].tolist()
    for name in ("surprisal", "surprisal_corrected"):
        np.testing.assert_allclose(words[name], expected[name], atol=TOL)


def test_summary_share_of_pairs_whose_first_critical_word_is_less_surprising(runs):
    summary = json.loads((runs / "pairs" / "summary.json").read_text())["summary"]
    plain = pd.read_parquet(runs / "plain" / "words.parquet")
    lower, lower_plain, differences = [], [], []
    for doc, pair in enumerate(PAIRS):
        index = _by_hand(list(pair))
        good, bad = (_plain_word(plain, 2 * doc + c, index) for c in (0, 1))
        if good is None or bad is None:  # identical, or the first choice ended before its partner's word
            continue
        lower.append(good["surprisal_corrected"] < bad["surprisal_corrected"])
        lower_plain.append(good["surprisal"] < bad["surprisal"])
        differences.append(bad["surprisal_corrected"] - good["surprisal_corrected"])
    assert summary["critical_pairs"] == len(lower) == 4
    assert summary["critical_first_less_surprising"] == pytest.approx(np.mean(lower))
    assert summary["critical_first_less_surprising_plain"] == pytest.approx(np.mean(lower_plain))
    assert summary["critical_mean_difference"] == pytest.approx(np.mean(differences), abs=TOL)
    low, high = summary["critical_mean_difference_ci"]
    assert low <= summary["critical_mean_difference"] <= high and low < high
    low, high = summary["critical_first_less_surprising_ci"]
    assert 0 <= low <= summary["critical_first_less_surprising"] <= high <= 1


def test_no_critical_columns_without_words(gpt2_dir, tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", [{"good": PAIRS[0][0], "bad": PAIRS[0][1]}])
    _score(gpt2_dir, data, tmp_path / "o", "--choices-field", "good,bad")
    choices = pd.read_parquet(tmp_path / "o" / "choices.parquet")
    assert not [c for c in choices.columns if c.startswith("critical")]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())["summary"]
    assert not [k for k in summary if k.startswith("critical")]


def test_critical_word_as_a_subprocess(sp_dir, tmp_path, forked_scorecli):
    data = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "s": ["Anna read it?", "Anna read?"]}])
    out = tmp_path / "o"
    command = [forked_scorecli, "score", str(data), "-m", str(sp_dir), "-o", str(out), "--choices-field", "s"]
    proc = subprocess.run([*command, "--words", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    choices = pd.read_parquet(out / "choices.parquet")
    words = pd.read_parquet(out / "words.parquet").set_index(["choice", "word"])
    # "read" and "read?" differ: word 1, in both choices.
    assert choices["critical_word"].tolist() == [1, 1] and choices["critical_text"].tolist() == ["read", "read?"]
    for c in (0, 1):
        assert choices["critical_surprisal_corrected"][c] == words.loc[(c, 1), "surprisal_corrected"]


def test_critical_index_by_hand():
    assert critical_index([[0, 1, 2], [0, 1, 2]], [["a", "b", "c"], ["a", "x", "c"]]) == 1
    assert critical_index([[0, 1], [0, 1]], [["a", "b"], ["a", "b"]]) is None
    assert critical_index([[0, 1], [0, 1, 2]], [["a", "b"], ["a", "b", "c"]]) == 2  # the first ends before
    assert critical_index([[0, 1], [0, 1], [0, 1]], [["a", "b"], ["a", "b"], ["a", "c"]]) == 1
    assert critical_index([[0, 2], [0, 1, 2]], [["a", "c"], ["a", "b", "c"]]) == 1  # a word without tokens
    assert critical_index([[0]], [["a"]]) is None  # a single choice
    assert critical_index([[], []], [[], []]) is None


def test_critical_figures_by_hand():
    # Records 0 and 1 are pairs; 2 has three choices (not a pair); in 3 the second choice has no critical word.
    rows = {
        "doc": [0, 0, 1, 1, 2, 2, 2, 3, 3],
        "choice": [1, 0, 0, 1, 0, 1, 2, 0, 1],
        "critical_surprisal": [5.0, 2.0, 4.0, 3.0, 1.0, 2.0, 3.0, 1.0, None],
        "critical_surprisal_corrected": [6.0, 2.5, 3.0, 3.5, 1.0, 2.0, 3.0, 1.0, None],
    }
    figures = critical_figures(pa.Table.from_pydict(rows).to_batches(max_chunksize=4))
    assert figures["critical_pairs"] == 2
    assert figures["critical_first_less_surprising"] == 1.0  # 2.5 < 6 and 3 < 3.5
    assert figures["critical_first_less_surprising_plain"] == 0.5  # 2 < 5, not 4 < 3
    assert figures["critical_mean_difference"] == pytest.approx((3.5 + 0.5) / 2)
    # Resampled, the two pairs' mean difference is 0.5, 2 or 3.5.
    low, high = figures["critical_mean_difference_ci"]
    assert 0.5 <= low < 2 < high <= 3.5
    empty = critical_figures([])
    assert empty["critical_pairs"] == 0 and empty["critical_first_less_surprising"] is None


def test_critical_word_after_a_prompt_counts_the_choices_words(gpt2_dir, tmp_path):
    prompt, options = "Question: which animal builds dams?\nAnswer:", [" The beaver", " The eagle", " The beaver"]
    data = _jsonl(tmp_path / "mc.jsonl", [{"q": prompt, "options": options}])
    _score(gpt2_dir, data, tmp_path / "mc", "--prompt-field", "q", "--choices-field", "options", "--words")
    # The reference: each (prompt, choice) as its own prompt/response record, its response's words.
    alone = _jsonl(tmp_path / "alone.jsonl", [{"q": prompt, "r": o} for o in options])
    _score(gpt2_dir, alone, tmp_path / "alone", "--prompt-field", "q", "--response-field", "r", "--words")
    choices = pd.read_parquet(tmp_path / "mc" / "choices.parquet")
    plain = pd.read_parquet(tmp_path / "alone" / "words.parquet")
    assert plain["word"].tolist() == [0, 1] * 3  # the response's words are counted from its first
    _check_record(choices, options, plain, 0)
    assert choices["critical_text"].tolist() == ["beaver", "eagle", "beaver"]


def test_interrupted_then_resumed_run_has_the_straight_runs_critical_words(gpt2_dir, tmp_path):
    # Ctrl-C after the first batch: the choices scored so far are saved as documents in flight (their words
    # and corrections with them), and the resumed run makes their critical words from those.
    rows = [{"id": f"p{i}", "good": f"{i}: {g}", "bad": f"{i}: {b}"} for i in range(30) for g, b in [PAIRS[i % 6]]]
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    args = ["score", str(data), "-m", str(gpt2_dir), "--batch-tokens", "32", "-q", "--choices-field", "good,bad"]
    assert CliRunner().invoke(app, [*args, "--words", "-o", str(tmp_path / "straight")]).exit_code == 0
    stopped = CliRunner().invoke(app, [*args, "--words", "-o", str(tmp_path / "o")], env={"SCORECLI_FAULT": "batch"})
    assert stopped.exit_code == 130, stopped.output
    in_flight = json.loads((tmp_path / "o" / "parts" / "in-flight.json").read_text())
    assert in_flight["docs"] and all(d["words"]["correction"] for d in in_flight["docs"])
    resumed = CliRunner().invoke(app, ["score", "-o", str(tmp_path / "o"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    again, straight = (pd.read_parquet(tmp_path / o / "choices.parquet") for o in ("o", "straight"))
    pd.testing.assert_frame_equal(again, straight)
    figures = [json.loads((tmp_path / o / "summary.json").read_text())["summary"] for o in ("o", "straight")]
    critical = [{k: v for k, v in f.items() if k.startswith("critical")} for f in figures]
    # All but the 5 identical pairs and the 5 whose first choice ends before the critical word.
    assert critical[0] == critical[1] and critical[0]["critical_pairs"] == 20
