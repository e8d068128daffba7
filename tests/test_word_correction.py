"""The beginning-of-word correction of word surprisal, against a plain reference, and words given by the input.

The reference is independent of scorecli: one text at a time, a plain forward of the model over the tokens
each position sees (those of the window that scores it), a full log_softmax in float64, the words found by
a loop over the tokenizer's own offsets, and the sums over the word-start tokens B taken by hand.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLES, bos_id, one_line_error
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scorecli.base.errors import InputError
from scorecli.cli import app
from scorecli.data.tables import WORD_SCHEMA
from scorecli.data.words import word_spans
from scorecli.engine import stats
from scorecli.engine.models import load_model
from scorecli.engine.scorer import Scorer
from scorecli.engine.stats import token_stats
from scorecli.engine.wordstart import word_starts
from scorecli.inputs.records import Fields, Record, read_records
from scorecli.runfolder.outputs import read_metadata

TOL = 1e-4
TEXTS = [
    "The cook tasted the soup and added a pinch of salt.",
    "After the storm\nthe  fishermen repaired their nets on the beach. ",
    "  Leading spaces, then naïve café words: 東京 🎉!",
    "one",
    "",
    "   \n",
]


@pytest.fixture(scope="module", params=["gpt2", "sp"])
def marked(request: pytest.FixtureRequest):
    """A tiny model whose tokenizer marks word starts: GPT-2's byte-level Ġ, or SentencePiece's ▁."""
    return load_model(str(request.getfixturevalue(f"{request.param}_dir")), device="cpu", dtype="float32")


def _b(tokenizer, sentencepiece: bool) -> list[int]:
    """B by hand: the ids whose text begins with whitespace (a byte-level token's text is what it decodes to)."""
    out = []
    for token, i in tokenizer.get_vocab().items():
        if i in tokenizer.added_tokens_decoder:
            continue
        if sentencepiece:
            byte = re.fullmatch(r"<0x([0-9A-F]{2})>", token)
            # A byte alone is a character only below 0x80: 0xA0 is the second byte of U+00A0, say.
            text = bytes([int(byte.group(1), 16)]).decode(errors="replace") if byte else token.replace("\u2581", " ")
        else:
            text = tokenizer.decode([i])
        if text[:1].isspace():
            out.append(i)
    return sorted(out)


def reference_rows(model, seq: list[int], max_length: int | None = None, stride: int | None = None) -> dict:
    """log_softmax (float64) of the distribution predicting position t of `seq`, for t = 1 … len(seq).

    t = len(seq) is the distribution after the last token. Each comes from exactly the tokens of the window
    that scores position t: from the window's start, which is 0 without windows.
    """
    rows = {}
    begins = {}
    for t in range(1, len(seq) + 1):
        k = 0 if max_length is None or t < max_length else (t - max_length) // stride + 1
        begins.setdefault(k * (stride or 0), []).append(t)
    for begin, targets in begins.items():
        with torch.no_grad():
            logits = model(torch.tensor([seq[begin : max(targets)]])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for t in targets:
            rows[t] = logp[t - 1 - begin]
    return rows


def reference_words(
    loaded,
    text: str,
    starts: list[int],
    end_id: int,
    response: tuple[int, int] | None = None,
    max_length: int | None = None,
    stride: int | None = None,
) -> list[tuple[str, float, float]]:
    """(word, surprisal, corrected surprisal) of each word of `text` (of its response span, where given)."""
    tok = loaded.tokenizer
    enc = tok(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    seq = [bos_id(tok), *ids]
    rows = reference_rows(loaded.model, seq, max_length, stride)
    lo, hi = response or (0, len(text))
    words = [(lo + a, lo + b) for a, b in (m.span() for m in re.finditer(r"\S+", text[lo:hi]))]
    scored = [i for i, (a, b) in enumerate(offsets) if a < hi and b > lo]
    owner = {}
    for i in scored:
        a, b = offsets[i]
        piece = text[a:b]
        if piece.strip():  # the word holding the token's last non-space character
            last = a + len(piece.rstrip()) - 1
            owner[i] = next(w for w, (x, y) in enumerate(words) if x <= last < y)
        else:  # whitespace alone: the next word, else the last
            owner[i] = next((w for w, (x, _) in enumerate(words) if x >= b), len(words) - 1)
    mass = lambda row, ids: float(torch.logsumexp(row[torch.tensor(sorted(ids))], 0))  # noqa: E731
    starts = set(starts)
    out = []
    for w, (x, y) in enumerate(words):
        tokens = [i for i in scored if owner[i] == w]
        surprisal = sum(-float(rows[i + 1][seq[i + 1]]) for i in tokens)
        first, last = tokens[0], tokens[-1]
        before = mass(rows[first + 1], starts) if ids[first] in starts else 0.0
        following = last + 1
        if following < len(ids) and following in scored:  # the next token starts a word, or nothing ends here
            after = mass(rows[following + 1], starts) if ids[following] in starts else 0.0
        elif following < len(ids):  # the response ends: a word-start token, or the token that follows it
            after = mass(rows[following + 1], {*starts, ids[following]})
        else:  # the text ends: a word-start token, or the EOS
            after = mass(rows[len(seq)], {*starts, end_id})
        out.append((text[x:y], surprisal, surprisal + before - after))
    return out


def _check(doc, reference) -> None:
    rows = doc.word_rows()
    assert rows["text"] == [r[0] for r in reference]
    assert np.abs(rows["surprisal"] - np.array([r[1] for r in reference])).max(initial=0) <= TOL
    assert np.abs(rows["surprisal_corrected"] - np.array([r[2] for r in reference])).max(initial=0) <= TOL


# The statistic ---------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 5),
    vocab=st.integers(1, 40),
    chunk=st.integers(1, 45),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.1, 3.0, 12.0]),
    masked=st.booleans(),
)
def test_word_start_mass_taken_a_chunk_at_a_time_equals_whole_rows(rows, vocab, chunk, seed, scale, masked):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * scale + 30.0 * (seed % 3 - 1)
    subset = torch.rand(vocab, generator=g) < 0.4
    if masked and vocab > 1:  # entries the model gives no probability at all, in and out of the subset
        logits[:, torch.randint(0, vocab, (2,), generator=g)] = -torch.inf
        logits[:, 0] = 0.0
    labels = torch.zeros(rows, dtype=torch.long)
    got = token_stats(logits, labels, ("word_start",), chunk=chunk, subset=subset.float())["word_start_logprob"]
    want = torch.logsumexp(torch.log_softmax(logits.double(), -1)[:, subset], -1)
    assert got.shape == (rows,)
    finite = want.isfinite()
    assert (got.isinf() == ~finite).all()  # an empty subset, or one without probability: -inf
    assert torch.allclose(got.double()[finite], want[finite], rtol=1e-5, atol=2e-5)


# B, from the tokenizer -------------------------------------------------------------------------------------


def test_word_start_tokens_are_those_whose_text_begins_with_whitespace(gpt2_dir, sp_dir):
    from transformers import AutoTokenizer

    for folder, marks in ((gpt2_dir, ("Ġthe", "Ċ", "ĠĠ")), (sp_dir, ("\u2581the", "<0x0A>", "<0x20>", "\n"))):
        tok = AutoTokenizer.from_pretrained(folder)
        found = word_starts(tok, len(tok))
        assert found.ids.tolist() == _b(tok, sentencepiece=folder == sp_dir)
        vocab = tok.get_vocab()
        assert all(vocab[m] in found.ids for m in marks if m in vocab)
        assert all(vocab[m] not in found.ids for m in ("the", "ed", "<0x41>", ".") if m in vocab)
        assert found.end_id == tok.eos_token_id and f"{len(found.ids):,} word-start tokens" in found.correction
    # SentencePiece's newline is a byte-fallback token: <0x0A> must be in B, <0x41> ("A") not.
    sp = AutoTokenizer.from_pretrained(sp_dir)
    assert {sp.convert_tokens_to_ids("<0x0A>"), sp.convert_tokens_to_ids("<0x20>")} <= set(word_starts(sp, 700).ids)


def test_added_tokens_that_strip_the_space_to_their_left_are_word_starts(gpt2_dir):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    tok.add_tokens([AddedToken("<mask>", lstrip=True), AddedToken("<plain>"), AddedToken("   ", normalized=False)])
    found = set(word_starts(tok, len(tok)).ids.tolist())
    ids = tok.convert_tokens_to_ids(["<mask>", "<plain>", "   "])
    assert ids[0] in found and ids[1] not in found and ids[2] in found


def test_tokenizers_without_a_word_start_mark_say_why_no_correction_applies(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = ["the cat sat on the mat", "a dog ran"]
    eow = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    eow.pre_tokenizer = pre_tokenizers.Whitespace()
    eow.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=60, end_of_word_suffix="</w>"))
    plain = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    plain.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    for tok, why in ((eow, "none needed: the tokenizer marks word ends ('</w>')"), (plain, "none: no vocabulary")):
        fast = PreTrainedTokenizerFast(tokenizer_object=tok)
        found = word_starts(fast, len(fast))
        assert found.ids is None and found.correction.startswith(why)


# Against the reference -------------------------------------------------------------------------------------


def _scorer(loaded, **kwargs) -> Scorer:
    return Scorer(loaded.model, loaded.tokenizer, words=True, **kwargs)


def test_corrected_surprisal_equals_the_reference_and_the_identity_holds(marked):
    scorer = _scorer(marked, batch_tokens=48)
    starts, end = scorer.word_starts.ids.tolist(), scorer.word_starts.end_id
    assert "word-start tokens" in scorer.metadata["word_correction"]
    for doc, text in zip(scorer.score_texts(TEXTS), TEXTS):
        reference = reference_words(marked, text, starts, end)
        _check(doc, reference)
        if not reference:
            assert len(doc.words) == 0 and doc.sequence_row()["word_perplexity_corrected"] is None
            continue
        # Σ corrected = Σ token surprisal + log P(word start at the first token, where it is one) − log P(word
        # end after the text): every other boundary's two terms cancel.
        seq = [bos_id(marked.tokenizer), *marked.tokenizer(text, add_special_tokens=False)["input_ids"]]
        rows = reference_rows(marked.model, seq)
        first = torch.logsumexp(rows[1][starts], 0).item() if seq[1] in starts else 0.0
        last = torch.logsumexp(rows[len(seq)][sorted({*starts, end})], 0).item()
        total = doc.word_rows()["surprisal_corrected"].sum()
        assert total == pytest.approx(-doc.sum_logprob + first - last, abs=TOL * len(reference))
        row = doc.sequence_row()
        assert row["word_perplexity_corrected"] == pytest.approx(math.exp(total / row["n_words"]), rel=1e-9)


@pytest.mark.parametrize(("max_length", "stride"), [(16, 5), (9, 8)])
def test_windows(marked, max_length, stride):
    scorer = _scorer(marked, max_length=max_length, stride=stride, batch_tokens=40)
    starts, end = scorer.word_starts.ids.tolist(), scorer.word_starts.end_id
    count = lambda text: len(marked.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    # A text of exactly max_length tokens (BOS included): the distribution after it is a window of its own.
    long = " ".join(["the soup"] * 20)
    exact = next(long[:k] for k in range(len(long), 0, -1) if count(long[:k]) + 1 == max_length)
    texts = [*TEXTS[:3], exact]
    for doc, text in zip(scorer.score_texts(texts), texts):
        _check(doc, reference_words(marked, text, starts, end, max_length=max_length, stride=stride))


@pytest.mark.parametrize("all_tokens", [False, True])
def test_prompt_and_response(marked, all_tokens):
    scorer = _scorer(marked, all_tokens=all_tokens, batch_tokens=64)
    starts, end = scorer.word_starts.ids.tolist(), scorer.word_starts.end_id
    cases = [
        ("Question: what is in the soup?\nAnswer:", " salt and pepper", ""),
        ("Q: name a colour.", " deep blue.", " Thanks, that is all."),  # the response ends before the text does
        ("The riv", "er widened near the mill", " today."),  # it starts, and ends, inside words
    ]
    records = [Record(i, p + r + s, spans=((len(p), len(p + r)),)) for i, (p, r, s) in enumerate(cases)]
    for doc, (p, r, s) in zip(scorer.score_records(records), cases):
        _check(doc, reference_words(marked, p + r + s, starts, end, response=(len(p), len(p + r))))


def test_prefix_sharing_and_identical_texts(marked):
    start = "Once upon a time, in a village by the sea, there lived an old fisherman and his wife."
    texts = [start + " He sailed out every morning.", start, start + " She mended the nets.", start]
    shared = _scorer(marked, min_shared_prefix=8)
    alone = _scorer(marked, prefix_sharing=False)
    [plan] = shared.plan_buffers(Record(i, text) for i, text in enumerate(texts))
    assert any(p.cached for task in plan.tasks for p in task)  # the start is fed once, continuations after it
    starts, end = shared.word_starts.ids.tolist(), shared.word_starts.end_id
    for a, b, text in zip(shared.score_texts(texts), alone.score_texts(texts), texts):
        _check(a, reference_words(marked, text, starts, end))
        assert np.abs(a.word_rows()["surprisal_corrected"] - b.word_rows()["surprisal_corrected"]).max() <= TOL


def test_a_truncated_texts_last_word_has_no_corrected_surprisal(marked):
    text = TEXTS[0]
    [doc] = _scorer(marked, max_length=8, truncate=True).score_texts([text])
    assert doc.truncated
    rows = doc.word_rows()
    [full] = _scorer(marked).score_texts([text])
    # Every word but the last (which the cut may split) has the value of the whole text's: the cut is after it.
    n = len(rows["text"])
    assert np.isnan(rows["surprisal_corrected"][-1]) and not np.isnan(rows["surprisal_corrected"][:-1]).any()
    assert np.abs(rows["surprisal_corrected"][:-1] - full.word_rows()["surprisal_corrected"][: n - 1]).max() <= TOL
    want = math.exp(rows["surprisal_corrected"][:-1].sum() / (n - 1))
    assert doc.sequence_row()["word_perplexity_corrected"] == pytest.approx(want, rel=1e-9)


def test_the_sixteen_bit_head_stays_close_and_keeps_the_identity(gpt2_dir, monkeypatch):
    monkeypatch.setattr(stats, "VOCAB_CHUNK", 100)  # the first chunk's products are float32: have 3 more
    model = load_model(str(gpt2_dir), device="cpu", dtype="bfloat16")
    texts = TEXTS[:3]
    exact, fast = (_scorer(model, head_dtype=h).score_texts(texts) for h in ("float32", "bfloat16"))
    starts = _scorer(model).starts_word

    def end_term(doc):
        """log P(word end after the text), from the identity with the run's own statistics."""
        rows = doc.word_rows()
        first = float(doc.stats["word_start_logprob"][0]) if starts[doc.token_ids[0]] else 0.0
        return first - (rows["surprisal_corrected"].sum() - rows["surprisal"].sum())

    for a, b in zip(exact, fast):
        # The correction's two terms, each a sum of probabilities, drift as a token's log-prob does (≤ 0.05).
        correction = [d.word_rows()["surprisal_corrected"] - d.word_rows()["surprisal"] for d in (a, b)]
        assert 0 < np.abs(correction[0] - correction[1]).max() <= 0.1
        assert end_term(b) < 0 and abs(end_term(a) - end_term(b)) <= 0.05


def test_a_given_b_replaces_the_tokenizers(gpt2):
    """`word_start_ids` replaces the tokenizer's B (minicons' B is only the space mark's tokens)."""
    scorer = Scorer(gpt2.model, gpt2.tokenizer, words=True, word_start_ids=[5, 7])
    assert scorer.starts_word.nonzero()[0].tolist() == [5, 7]
    assert "2 word-start tokens given by the caller; EOS" in scorer.metadata["word_correction"]


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return load_model(str(gpt2_dir), device="cpu", dtype="float32")


# The CLI and its outputs -----------------------------------------------------------------------------------


def test_cli_words_parquet_sequences_summary_and_metadata(gpt2_dir, tmp_path):
    out = tmp_path / "o"
    args = ["score", str(SAMPLES / "stimuli.jsonl"), "-m", str(gpt2_dir), "-o", str(out), "--words"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "word perplexity, corrected" in result.stderr
    words = pd.read_parquet(out / "words.parquet")
    assert list(words.columns) == WORD_SCHEMA.names
    tokens = pd.read_parquet(out / "tokens.parquet")
    seqs = pd.read_parquet(out / "sequences.parquet")
    assert "word_start_logprob" in tokens.columns and (tokens["word_start_logprob"] <= 0).all()
    per_doc = words.groupby("doc")["surprisal_corrected"].agg(["sum", "count"])
    np.testing.assert_allclose(seqs["word_perplexity_corrected"], np.exp(per_doc["sum"] / per_doc["count"]))
    summary = json.loads((out / "summary.json").read_text())
    corpus = math.exp(words["surprisal_corrected"].sum() / len(words))
    assert summary["summary"]["word_perplexity_corrected"] == pytest.approx(corpus, rel=1e-9)
    for name in ("tokens.parquet", "words.parquet", "sequences.parquet"):
        assert read_metadata(out / name)["word_correction"].startswith("beginning-of-word (Pimentel & Meister 2024)")
    # Without --words: no word-start column, no corrected perplexity, no word_correction key.
    plain = tmp_path / "p"
    assert CliRunner().invoke(app, [*args[:-3], "-o", str(plain)]).exit_code == 0
    assert "word_start_logprob" not in pd.read_parquet(plain / "tokens.parquet").columns
    assert "word_perplexity_corrected" not in pd.read_parquet(plain / "sequences.parquet").columns
    assert "word_correction" not in read_metadata(plain / "tokens.parquet")
    np.testing.assert_allclose(
        pd.read_parquet(plain / "tokens.parquet")["logprob"], tokens["logprob"], atol=TOL
    )  # the rows after each text change batches, not numbers


def test_rows_words_on_stdout_have_the_corrected_surprisal(gpt2_dir, gpt2):
    result = CliRunner().invoke(
        app, ["score", str(SAMPLES / "stimuli.jsonl"), "-m", str(gpt2_dir), "-o", "-", "--rows", "words", "-q"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    texts = [json.loads(line)["text"] for line in (SAMPLES / "stimuli.jsonl").read_text().splitlines()]
    found = _scorer(gpt2).word_starts
    want = [w for text in texts for w in reference_words(gpt2, text, found.ids.tolist(), found.end_id)]
    assert [line["text"] for line in lines] == [w[0] for w in want]
    assert np.abs(np.array([line["surprisal_corrected"] for line in lines]) - [w[2] for w in want]).max() <= TOL


# Words given by the input: --words-field -------------------------------------------------------------------


def _jsonl(tmp_path, rows, name="in.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_given_words_are_joined_by_single_spaces_with_their_spans(tmp_path):
    path = _jsonl(tmp_path, [{"id": "a", "words": ["The", "old man", "sat."]}])
    [record] = read_records(path, fields=Fields(words="words"))
    assert record.text == "The old man sat." and record.id == "a"
    assert [record.text[a:b] for a, b in record.regions] == ["The", "old man", "sat."]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "field 'words' must be a non-empty array of words (strings), got an empty array"),
        ("The man", "field 'words' must be a non-empty array of words (strings), got a string"),
        (None, "field 'words' must be a non-empty array of words (strings), got null"),
        (["The", 3], "field 'words': word 2 must be a string, got a number"),
        (["The", " man"], "field 'words': word 2 has whitespace at its start or end (' man')"),
        (["The", "man\n"], "field 'words': word 2 has whitespace at its start or end ('man\\n')"),
        (["", "man"], "field 'words': word 1 is empty"),
    ],
)
def test_bad_given_words_are_one_line_errors_naming_record_and_field(tmp_path, value, message):
    path = _jsonl(tmp_path, [{"words": ["fine"]}, {"words": value}])
    with pytest.raises(InputError) as e:
        list(read_records(path, fields=Fields(words="words")))
    assert str(e.value).startswith(f"{path}: line 2: {message}") and "\n" not in str(e.value)


def test_given_words_in_parquet(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"w": pa.array([["A", "big dog"], ["ran"]], pa.list_(pa.string()))}), path)
    records = list(read_records(path, fields=Fields(words="w")))
    assert [r.text for r in records] == ["A big dog", "ran"] and records[0].regions == ((0, 1), (2, 9))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"w": ["A big dog"]}), bad)
    with pytest.raises(InputError, match="column 'w' has type string, expected a list of strings"):
        list(read_records(bad, fields=Fields(words="w")))


def test_given_regions_of_a_truncated_text_reach_as_far_as_its_tokens():
    given = ((0, 3), (4, 11), (12, 15), (16, 21))  # "The old man the boat."
    assert word_spans("The old man the boat.", given=given).tolist() == [list(g) for g in given]
    assert word_spans("The old man the boat.", given=given, reach=6).tolist() == [[0, 3], [4, 11]]
    # A region that ends where the tokens do is whole: the next one may still get a token (as words do).
    assert word_spans("The old man the boat.", given=given, reach=11).tolist() == [[0, 3], [4, 11], [12, 15]]


def test_given_regions_are_words_rows_with_their_index(gpt2, tmp_path):
    regions = ["The", "old man", "the", "boat."]
    record = next(read_records(_jsonl(tmp_path, [{"words": regions}]), fields=Fields(words="words")))
    scorer = _scorer(gpt2)
    [doc] = scorer.score_records([record])
    rows = doc.word_rows()
    assert rows["text"] == regions and rows["word"].tolist() == [0, 1, 2, 3]
    # A region is the words it holds taken together: its corrected surprisal is theirs summed, each
    # boundary inside it costing nothing (the terms of the inner boundary cancel).
    [whole] = scorer.score_texts([record.text])
    split = whole.word_rows()["surprisal_corrected"]
    assert rows["surprisal_corrected"][1] == pytest.approx(split[1] + split[2], abs=TOL)
    assert rows["surprisal"].sum() == pytest.approx(-doc.sum_logprob, abs=1e-6)


def test_cli_words_field_as_a_subprocess(gpt2_dir, tmp_path, forked_scorecli):
    rows = [{"id": "s", "words": ["The", "old man", "the", "boat."]}, {"id": "t", "words": ["Ships", "sail."]}]
    out = tmp_path / "o"

    def score(data, out, *more):
        command = [forked_scorecli, "score", str(data), "-m", str(gpt2_dir), "-o", str(out), "--words-field", "words"]
        return subprocess.run([*command, *more], capture_output=True, text=True, timeout=300)

    proc = score(_jsonl(tmp_path, rows), out, "--words", "-q")
    assert proc.returncode == 0, proc.stderr
    words = pd.read_parquet(out / "words.parquet")
    assert words["text"].tolist() == [w for r in rows for w in r["words"]]
    assert words["word"].tolist() == [0, 1, 2, 3, 0, 1] and words["id"].tolist() == ["s"] * 4 + ["t"] * 2
    assert read_metadata(out / "words.parquet")["words_field"] == "words"
    bad = _jsonl(tmp_path, [{"words": ["ok"]}, {"words": ["a", " b"]}], "bad.jsonl")
    proc = score(bad, tmp_path / "b")
    assert proc.returncode == 3 and proc.stderr.strip().splitlines() == [
        f"scorecli: error: {bad}: line 2: field 'words': word 2 has whitespace at its start or end (' b'); "
        "words are joined by single spaces"
    ]


def test_words_field_goes_alone(gpt2_dir, tmp_path):
    data = _jsonl(tmp_path, [{"words": ["a"], "text": "a"}])
    base = ["score", str(data), "-m", str(gpt2_dir), "-o", str(tmp_path / "o"), "--words-field", "words"]
    line = one_line_error(CliRunner().invoke(app, [*base, "--text-field", "text"]), 2)
    assert line == "scorecli: error: --words-field cannot be combined with --text-field: both say where the text is"
    line = one_line_error(CliRunner().invoke(app, [*base, "--join", " "]), 2)
    assert "--join joins plain texts: it cannot be combined with" in line and "--words-field" in line


# SmolLM2, and minicons -------------------------------------------------------------------------------------


def _stimuli() -> list[str]:
    return [json.loads(line)["text"] for line in (SAMPLES / "stimuli.jsonl").read_text().splitlines()]


@pytest.mark.realmodel
def test_smollm_equals_the_reference_with_windows_and_prompt_response(smollm):
    texts = _stimuli()[:3]
    plain = _scorer(smollm)
    starts, end = plain.word_starts.ids.tolist(), plain.word_starts.end_id
    assert end == smollm.tokenizer.eos_token_id
    for doc, text in zip(plain.score_texts(texts), texts):
        _check(doc, reference_words(smollm, text, starts, end))
    windowed = _scorer(smollm, max_length=8, stride=3)
    for doc, text in zip(windowed.score_texts(texts[:1]), texts):
        _check(doc, reference_words(smollm, text, starts, end, max_length=8, stride=3))
    prompt, response = "Question: what did the cook add?\nAnswer:", " a pinch of salt."
    [doc] = plain.score_records([Record(0, prompt + response, spans=((len(prompt), len(prompt + response)),))])
    _check(doc, reference_words(smollm, prompt + response, starts, end, response=(len(prompt), len(prompt + response))))


def _minicons(loaded, texts):
    """minicons' word_score_tokenized(..., bow_correction=True) surprisals of each text's words, and its B."""
    scorer = pytest.importorskip("minicons.scorer", reason="minicons is in the test extra (pip install minicons)")
    from tokenizers import processors

    # minicons sets a pad token on the tokenizer it is given: a copy, which adds the BOS as scorecli does
    # (tokenised after a "<s>" string instead, a SentencePiece text would lose its first ▁).
    tokenizer = copy.deepcopy(loaded.tokenizer)
    bos = tokenizer.convert_ids_to_tokens(bos_id(tokenizer))
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, bos_id(tokenizer))]
    )
    lm = scorer.IncrementalLMScorer(loaded.model, "cpu", tokenizer=tokenizer)
    got = lm.word_score_tokenized(texts, tokenize_function=str.split, bow_correction=True, surprisal=True)
    return [np.array([float(s) for _, s in words]) for words in got], lm.bow_subword_idx


def _against_minicons(loaded, sentencepiece: bool) -> None:
    """Given minicons' B, every word but a text's first and last agrees within 1e-4, and those two differ by
    exactly the terms minicons leaves out: at the first word, log P(a word start after BOS), which scorecli
    takes where the first token is a word-start token (SentencePiece's "▁The"; "The" of a byte-level text is
    not one, and both leave it out); at the last word, the EOS as a word end after the text."""
    texts = _stimuli()
    theirs, their_b = _minicons(loaded, texts)
    ours = Scorer(loaded.model, loaded.tokenizer, words=True, word_start_ids=their_b).score_texts(texts)
    eos = loaded.tokenizer.eos_token_id
    for doc, want in zip(ours, theirs):
        got = doc.word_rows()["surprisal_corrected"]
        assert len(got) == len(want) > 2
        assert np.abs(got[1:-1] - want[1:-1]).max() <= TOL
        rows = reference_rows(loaded.model, [bos_id(loaded.tokenizer), *doc.token_ids.tolist()])
        start = torch.logsumexp(rows[1][their_b], 0).item() if doc.token_ids[0] in their_b else 0.0
        assert bool(start) == sentencepiece
        assert got[0] - want[0] == pytest.approx(start, abs=TOL)
        end = rows[len(doc.token_ids) + 1]
        without, with_eos = torch.logsumexp(end[their_b], 0).item(), torch.logsumexp(end[[*their_b, eos]], 0).item()
        assert want[-1] - got[-1] == pytest.approx(with_eos - without, abs=TOL)


@pytest.mark.parametrize("style", ["gpt2", "sp"])
def test_minicons_bow_correction_agrees_where_the_definitions_do(request, style):
    loaded = load_model(str(request.getfixturevalue(f"{style}_dir")), device="cpu", dtype="float32")
    _against_minicons(loaded, sentencepiece=style == "sp")


@pytest.mark.realmodel
def test_minicons_bow_correction_agrees_on_smollm(smollm):
    _against_minicons(smollm, sentencepiece=False)


def test_an_interrupted_runs_saved_documents_keep_their_word_indices_and_corrections(gpt2):
    from scorecli.runfolder.runs import _doc_from_json, _doc_to_json

    # "I saw the old man here.", cut after its first tokens; without a BOS the one-token "I" has no row.
    regions = ((0, 1), (2, 5), (6, 9), (10, 17), (18, 23))
    record = Record(0, "I saw the old man here.", regions=regions)
    [doc] = _scorer(gpt2, bos=False, max_length=6, truncate=True).score_records([record])
    assert doc.words.index is not None and doc.word_rows()["word"][0] == 1
    saved = _doc_from_json(json.loads(json.dumps(_doc_to_json(doc))))
    for a, b in ((doc.word_rows(), saved.word_rows()), (doc.sequence_row(), saved.sequence_row())):
        assert list(a) == list(b)
        for key in a:
            assert np.array_equal(np.asarray(a[key], dtype=object), np.asarray(b[key], dtype=object)) or (
                np.allclose(a[key], b[key], equal_nan=True)
            ), key
    assert np.isnan(saved.word_rows()["surprisal_corrected"][-1])
