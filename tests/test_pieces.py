"""Long texts are tokenised in pieces, so memory is bounded by a piece rather than by the longest text; the
tokens and offsets must be exactly those of tokenising the whole text, whatever the text and the tokenizer."""

import random

import numpy as np
import pytest
from conftest import sample_texts

from scorecli.engine.batching import Encoder
from scorecli.engine.scorer import Scorer

WHOLE = 10**9  # a piece size no test text reaches: the text is tokenised whole


def _texts() -> list[str]:
    rng = random.Random(0)
    chunks = ["é", "東京", "Привет", "🎉", "a", "ü", " ", "\n", "  ", "1234", "<s>", "<|im_start|>", ".", "ß", "\t"]
    mixed = "".join(rng.choice(chunks) for _ in range(2500))
    return [
        " ".join(sample_texts("long.jsonl")[:12]),  # ordinary prose
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4000)),  # no whitespace at all
        mixed,  # multi-byte characters split across byte-level tokens, special-token look-alikes
        mixed.replace(" ", "").replace("\n", "").replace("\t", ""),  # multi-byte, no whitespace
        "x" * 3000,
        " " * 2000 + "end",
        "\n\n" * 800,
        "".join(rng.choice("0123456789.,") for _ in range(3000)),
    ]


def _counted(encoder: Encoder) -> list[int]:
    """Record the length of the longest text of each tokenizer call the encoder makes."""
    calls = []
    tokenise = encoder._tokenise
    encoder._tokenise = lambda texts, chat: calls.append(max(map(len, texts))) or tokenise(texts, chat)
    return calls


def _check_pieces_equal_whole(tokenizer, sizes=(64, 200, 1000)):
    texts = _texts()
    for chat in (False, True):  # plain text, and rendered chats whose special tokens stay whole
        whole = Encoder(tokenizer, piece_chars=WHOLE).encode(texts, chat=chat)
        for size in sizes:
            encoder = Encoder(tokenizer, piece_chars=size)
            calls = _counted(encoder)
            pieces = encoder.encode(texts, chat=chat)
            for text, a, b in zip(texts, whole, pieces):
                assert np.array_equal(a.ids, b.ids), (size, chat, text[:40])
                assert np.array_equal(a.offsets, b.offsets), (size, chat, text[:40])
            # The texts were really cut: no call saw a whole text (prose is never tokenised beyond a piece).
            assert max(calls) < max(map(len, texts))
    # Truncation reads only as many pieces as the window needs, with the same tokens and flag.
    for max_length in (2, 50, 700):
        cut = Encoder(tokenizer, max_length=max_length, truncate=True, piece_chars=64).encode(texts)
        full = Encoder(tokenizer, max_length=max_length, truncate=True, piece_chars=WHOLE).encode(texts)
        for a, b in zip(full, cut):
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
            assert a.truncated == b.truncated


def test_prose_is_tokenised_piece_by_piece(tiny):
    encoder = Encoder(tiny.tokenizer, piece_chars=200)
    calls = _counted(encoder)
    [enc] = encoder.encode([_texts()[0]])
    assert max(calls) <= 200 and len(calls) > len(_texts()[0]) // 200
    assert np.array_equal(enc.ids, Encoder(tiny.tokenizer, piece_chars=WHOLE).encode([_texts()[0]])[0].ids)


def test_pieces_equal_whole_tiny_models(tiny):
    _check_pieces_equal_whole(tiny.tokenizer)


@pytest.mark.realmodel
def test_pieces_equal_whole_smollm(smollm):
    _check_pieces_equal_whole(smollm.tokenizer)


def test_scores_of_texts_tokenised_in_pieces_are_unchanged(tiny):
    texts = [" ".join(sample_texts("long.jsonl")[:3]), "short text", "東京🎉" * 300]
    reference = Scorer(tiny.model, tiny.tokenizer, max_length=128).score_texts(texts)
    pieces = Scorer(tiny.model, tiny.tokenizer, max_length=128)
    pieces.encoder.piece_chars = 100
    for a, b in zip(reference, pieces.score_texts(texts)):
        assert np.array_equal(a.token_ids, b.token_ids) and np.array_equal(a.starts, b.starts)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
