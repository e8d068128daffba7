"""Token offsets partition the text they cover: joined in order, text[start:end] rebuilds it exactly.

The expected spans are computed independently from the tokens' own bytes: a token ends after the last
character that its bytes (and all tokens' before it) complete.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorecli.engine.batching import Encoder, partition_offsets
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import Record

SPLIT = ["über Straße", "東京 is", "Привет мир", "party 🎉🎉 now", "x\u3000y", "東", "a  b\n\nc"]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the byte each character of a byte-level token stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


BYTES = _byte_decoder()


def expected_spans(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """Each token's span: from where the previous token's complete characters end to where its own do.

    None where the tokens do not hold every byte of the text (SmolLM2's vocabulary has no token for a few
    bytes, such as 0xF1, and drops them).
    """
    data = text.encode("utf-8")
    spans, consumed, start = [], 0, 0
    for token in tokenizer.convert_ids_to_tokens(ids):
        consumed += len(bytes(BYTES[c] for c in token))
        end = len(data[:consumed].decode("utf-8", errors="ignore"))
        spans.append((start, end))
        start = end
    return spans if consumed == len(data) else None


def _check_encoding(tokenizer, text: str, every_byte: bool = False) -> None:
    [enc] = Encoder(tokenizer, bos=True).encode([text])
    spans = [tuple(s) for s in enc.offsets.tolist()]
    expected = expected_spans(tokenizer, text, enc.ids[enc.n_prefix :])
    assert expected is not None or not every_byte
    joined = "".join(text[a:b] for a, b in spans)
    if expected is not None:
        assert spans == expected
        assert joined == text
    else:  # bytes the vocabulary lacks are dropped: the tokens rebuild the text from the first to the last
        assert joined == (text[spans[0][0] : spans[-1][1]] if spans else "")


def test_partition_by_hand():
    # "party 🎉 now" as SmolLM2 splits it: " " + a byte of 🎉, two more of its bytes, " now"
    raw = np.array([(0, 5), (5, 7), (6, 7), (6, 7), (7, 11)])
    assert partition_offsets(raw).tolist() == [[0, 5], [5, 6], [6, 6], [6, 7], [7, 11]]
    # a gap (a space the tokenizer's offsets left out) goes to the token after it
    assert partition_offsets(np.array([(0, 2), (3, 5)])).tolist() == [[0, 2], [2, 5]]
    assert partition_offsets(np.zeros((0, 2), np.int64)).shape == (0, 2)


@pytest.mark.parametrize("text", SPLIT)
def test_split_characters_tiny(tiny, text):
    _check_encoding(tiny.tokenizer, text, every_byte=True)


@pytest.mark.realmodel
@pytest.mark.parametrize("text", SPLIT)
def test_split_characters_smollm(smollm, text):
    _check_encoding(smollm.tokenizer, text, every_byte=True)


def _sample_records(per_file: int) -> list[tuple[str, Record]]:
    """The first `per_file` records of every sample: plain texts, prompt + response pairs and chats."""
    out = []
    for path in sorted(SAMPLES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines()[:per_file]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # bad.jsonl's bad lines
                continue
            if "messages" in row:
                out.append(
                    (
                        path.name,
                        Record(len(out), "", messages=tuple((m["role"], m["content"]) for m in row["messages"])),
                    )
                )
            elif "prompt" in row or "question" in row:  # a response, or the choices that follow a context
                context = row.get("prompt", row.get("question"))
                replies = (
                    [row["response"]] if "response" in row else row.get("choices") or [row["chosen"], row["rejected"]]
                )
                for reply in replies:
                    text = context + reply
                    out.append((path.name, Record(len(out), text, spans=((len(context), len(text)),))))
            elif isinstance(row.get("text"), str):
                out.append((path.name, Record(len(out), row["text"])))
            elif "sentence_good" in row:  # minimal pairs: each sentence a text
                out += [
                    (path.name, Record(len(out) + k, row[f])) for k, f in enumerate(["sentence_good", "sentence_bad"])
                ]
    return out


def _check_samples(loaded, chats: bool, per_file: int, **options) -> None:
    records = [(n, r) for n, r in _sample_records(per_file) if chats or r.messages is None]
    assert {name for name, _ in records} >= {"mixed.jsonl", "long.jsonl", "book.jsonl", "pairs.jsonl", "stimuli.jsonl"}
    scorer = Scorer(loaded.model, loaded.tokenizer, all_tokens=True, **options)
    for (name, record), score in zip(records, scorer.score_records(r for _, r in records)):
        text, where = score.text, (name, record.doc)
        if not score.n_rows:
            continue
        starts, ends = score.starts.tolist(), score.ends.tolist()
        assert starts[1:] == ends[:-1], where
        assert "".join(text[a:b] for a, b in zip(starts, ends)) == text[starts[0] : ends[-1]], where
        if record.messages is None:
            assert (starts[0], ends[-1]) == (0, len(text)), where  # with a BOS every token is a row
        # data/words.py: a token that only starts a character belongs to the word of the token that completes it
        response = np.flatnonzero(score.is_response)
        words = score.words.token_word
        for k, i in enumerate(response[:-1]):
            if starts[i] == ends[i] and not text[starts[i]].isspace():
                assert words[k] == words[k + 1], where


def test_samples_tiny(tiny):
    _check_samples(tiny, chats=False, per_file=1000, max_length=64)


@pytest.mark.realmodel
def test_samples_smollm(smollm):
    # Offsets come from the tokenizer alone: SmolLM2's tokenizer (and chat template) with a tiny model of its
    # vocabulary scores the same tokens as SmolLM2 itself, in a fraction of the time.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=smollm.model.config.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=smollm.model.config.max_position_embeddings,
    )
    tiny = SimpleNamespace(model=LlamaForCausalLM(config).eval(), tokenizer=smollm.tokenizer)
    _check_samples(tiny, chats=True, per_file=40, max_length=256)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_random_unicode_tiny(tiny, text):
    _check_encoding(tiny.tokenizer, text, every_byte=True)


@pytest.mark.realmodel
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_random_unicode_smollm(smollm, text):
    _check_encoding(smollm.tokenizer, text)
