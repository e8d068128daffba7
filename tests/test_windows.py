"""Long texts in strided windows: every token scored once, with exactly the context the scheme promises."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES, bos_id, reference_sequence, sample_texts
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.engine.batching import windows
from scorecli.engine.scorer import Scorer
from scorecli.runfolder.outputs import read_metadata

TOL = 1e-4
LONG = " ".join(sample_texts("long.jsonl")[:2])  # a few hundred tokens on the tiny models


def test_windows_by_hand():
    got = [(w.begin, w.end, w.first) for w in windows(0, 10, max_length=4, stride=2)]
    # Hugging Face's loop: begin 0, 2, 4, 6; each scores the targets after the previous window's end.
    assert got == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert [(w.begin, w.end, w.first) for w in windows(0, 4, max_length=4, stride=2)] == [(0, 4, 1)]


@pytest.mark.parametrize(("n", "max_length", "stride"), [(100, 32, 16), (97, 32, 31), (50, 8, 1), (33, 32, 5)])
def test_windows_score_every_target_once_with_enough_context(n, max_length, stride):
    targets = []
    for w in windows(0, n, max_length, stride):
        assert w.end - w.begin <= max_length
        scored = list(range(w.first, w.end))
        targets += scored
        if w.begin > 0:  # after the first window, at least max_length - stride tokens of context
            assert all(t - w.begin >= max_length - stride for t in scored)
    assert targets == list(range(1, n))


def _reference_windowed(loaded, text, max_length, stride):
    """Each target scored alone, fed exactly the tokens from the start of the window that scores it."""
    seq = [bos_id(loaded.tokenizer)] + loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    lps, ents = [], []
    for t in range(1, len(seq)):
        # the first window whose end (begin + max_length, or the sequence's end) lies beyond t
        k = 0 if t < max_length else (t - max_length) // stride + 1
        lp, ent = reference_sequence(loaded.model, seq[k * stride : t + 1])
        lps.append(float(lp[-1]))
        ents.append(float(ent[-1]))
    return np.array(lps), np.array(ents), len(seq)


def test_small_windows_match_a_reference_with_exactly_that_context(tiny):
    ref_lp, ref_ent, n = _reference_windowed(tiny, LONG, 32, 16)
    assert n > 100  # several windows
    short = "A short text scored in the same batches."
    scores = Scorer(tiny.model, tiny.tokenizer, max_length=32, stride=16, batch_tokens=200).score_texts(
        [short, LONG, short]
    )
    long_score = scores[1]
    assert not long_score.truncated and long_score.n_tokens == n - 1
    assert long_score.positions.tolist() == list(range(n - 1))  # positions and offsets run on across windows
    assert long_score.ends[-1] == len(LONG) and (np.diff(long_score.starts) >= 0).all()
    assert np.abs(long_score.logprobs - ref_lp).max() <= TOL
    assert np.abs(long_score.entropies - ref_ent).max() <= TOL
    [alone] = Scorer(tiny.model, tiny.tokenizer, max_length=32, stride=16).score_texts([short])
    assert np.abs(scores[0].logprobs - alone.logprobs).max() <= TOL


def test_a_window_larger_than_the_text_equals_the_unwindowed_score(tiny):
    text = LONG[:600]
    whole = Scorer(tiny.model, tiny.tokenizer).score_texts([text])[0]
    assert whole.n_tokens + 1 < 512  # within the tiny models' context: one window
    windowed = Scorer(tiny.model, tiny.tokenizer, max_length=whole.n_tokens + 1, stride=7).score_texts([text])[0]
    assert np.array_equal(whole.logprobs, windowed.logprobs) and np.array_equal(whole.entropies, windowed.entropies)


def test_cli_windows_are_recorded_and_truncate_keeps_the_old_behaviour(gpt2_dir, tmp_path):
    runner = CliRunner()
    base = ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "--max-length", "16"]
    windowed = runner.invoke(app, [*base, "--stride", "4", "-o", str(tmp_path / "w")])
    assert windowed.exit_code == 0, windowed.output
    assert "windows of 16 tokens, stride 4" in windowed.stderr
    meta = read_metadata(tmp_path / "w" / "tokens.parquet")
    assert meta["max_length"] == "16" and meta["stride"] == "4"
    seqs = pd.read_parquet(tmp_path / "w" / "sequences.parquet")
    texts = sample_texts()
    assert not seqs["truncated"].any()
    assert seqs["n_tokens"].max() > 15  # long texts are scored whole

    truncated = runner.invoke(app, [*base, "--truncate", "-o", str(tmp_path / "t")])
    assert truncated.exit_code == 0 and "truncated" in truncated.stderr
    cut = pd.read_parquet(tmp_path / "t" / "sequences.parquet")
    assert cut["truncated"].any() and (cut["n_tokens"] <= 15).all()
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["metadata"]["stride"] == "None"
    assert len(cut) == len(seqs) == len(texts)
