import math
import random

import numpy as np
import pytest
import torch
from conftest import reference_scores, sample_texts
from torch.utils._python_dispatch import TorchDispatchMode

from scorecli.engine import stats
from scorecli.engine.head import OutputHead, get_response_log_probs, output_head
from scorecli.engine.scorer import Scorer
from scorecli.engine.stats import token_stats
from scorecli.inputs.records import Record

TOL = 1e-4
TEXTS = sample_texts() + sample_texts("edge_cases.jsonl")


def _reference_batch(model, input_ids, labels, attention_mask=None):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, labels[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


def _assert_matches_reference(loaded, scores, texts, bos=True, max_length=None):
    for score, text in zip(scores, texts):
        ref_lp, ref_ent = reference_scores(loaded.model, loaded.tokenizer, text, bos=bos, max_length=max_length)
        assert score.n_tokens == len(ref_lp), text
        if len(ref_lp):
            assert np.abs(score.logprobs - ref_lp.numpy()).max() <= TOL, text
            assert np.abs(score.entropies - ref_ent.numpy()).max() <= TOL, text


def test_token_stats_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    stats = token_stats(logits, torch.tensor([1, 0]))
    logp, ent = stats["logprob"], stats["entropy"]
    # p = (1/4, 3/4) and (1/2, 1/2)
    assert logp.tolist() == pytest.approx([math.log(0.75), math.log(0.5)], abs=1e-6)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert ent.tolist() == pytest.approx([h, math.log(2)], abs=1e-6)


def test_token_stats_with_masked_vocabulary():
    logits = torch.tensor([[0.0, 0.0, float("-inf")]])
    stats = token_stats(logits, torch.tensor([0]))
    logp, ent = stats["logprob"], stats["entropy"]
    assert logp.item() == pytest.approx(math.log(0.5))
    assert ent.item() == pytest.approx(math.log(2))


def test_get_response_log_probs_matches_reference(tiny):
    torch.manual_seed(0)
    vocab = tiny.model.config.vocab_size
    input_ids = torch.randint(0, vocab, (3, 17))
    labels = torch.randint(0, vocab, (3, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        out = get_response_log_probs(tiny.model, input_ids, labels, return_token_entropy=True, attention_mask=mask)
        ref_lp, ref_ent = _reference_batch(tiny.model, input_ids, labels, mask)
    assert out["log_probs"].shape == (3, 17) and out["token_entropy"].shape == (3, 17)
    assert (out["log_probs"] - ref_lp).abs().max() <= TOL
    assert (out["token_entropy"] - ref_ent).abs().max() <= TOL
    assert set(get_response_log_probs(tiny.model, input_ids, labels)) == {"log_probs"}


def test_get_response_log_probs_gradients_match_reference(tiny):
    """The SFT/GRPO use: a masked loss over the response tokens backpropagates as through the plain reference."""
    torch.manual_seed(1)
    vocab = tiny.model.config.vocab_size
    input_ids = torch.randint(0, vocab, (2, 9))
    labels = torch.randint(0, vocab, (2, 9))
    response_mask = torch.zeros(2, 9)
    response_mask[:, 4:] = 1
    weight = tiny.model.get_output_embeddings().weight
    tiny.model.zero_grad()
    loss = -(get_response_log_probs(tiny.model, input_ids, labels)["log_probs"] * response_mask).sum()
    loss.backward()
    ours = weight.grad.clone()
    tiny.model.zero_grad()
    ref = -(_reference_batch(tiny.model, input_ids, labels)[0] * response_mask).sum()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-3)
    assert torch.allclose(ours, weight.grad, atol=1e-5)
    tiny.model.zero_grad()


def test_get_response_log_probs_rejects_ignore_index(tiny):
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="labels must be token ids"):
        get_response_log_probs(tiny.model, ids, torch.full((1, 4), -100))


@pytest.mark.parametrize("bos", [True, False])
def test_scorer_matches_reference(tiny, bos):
    scores = Scorer(tiny.model, tiny.tokenizer, bos=bos).score_texts(TEXTS)
    assert [s.doc for s in scores] == list(range(len(TEXTS)))
    _assert_matches_reference(tiny, scores, TEXTS, bos=bos)


@pytest.mark.parametrize("batch_tokens", [1, 37, 256, 100_000])
def test_scores_do_not_depend_on_batching_or_order(tiny, batch_tokens):
    alone = Scorer(tiny.model, tiny.tokenizer, batch_tokens=1).score_texts(TEXTS)
    order = list(range(len(TEXTS)))
    random.Random(batch_tokens).shuffle(order)
    shuffled = Scorer(tiny.model, tiny.tokenizer, batch_tokens=batch_tokens, buffer_docs=7).score_texts(
        [TEXTS[i] for i in order]
    )
    for pos, i in enumerate(order):
        assert shuffled[pos].n_tokens == alone[i].n_tokens
        if alone[i].n_tokens:
            assert np.abs(shuffled[pos].logprobs - alone[i].logprobs).max() <= TOL
            assert np.abs(shuffled[pos].entropies - alone[i].entropies).max() <= TOL


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_small_buffer_is_split_so_every_worker_has_a_batch(tiny, workers):
    scorer = Scorer(tiny.model, tiny.tokenizer, workers=workers, threads=workers, batch_tokens=100_000)
    records = [Record(i, text, None) for i, text in enumerate(TEXTS)]
    [plan] = scorer.plan_buffers(records)
    fed = [n - 1 for n in (len(e.ids) for e in scorer._encode(records)) if n > 1]
    # One batch of 100,000 tokens would hold them all; with several workers, each gets at least one
    share = 100_000 if workers == 1 else max(max(fed), -(-sum(fed) // workers))
    assert all(p.padded <= share for passes in plan.tasks for p in passes)
    assert len(plan.tasks) >= workers and (workers > 1 or len(plan.tasks) == 1)
    scores = scorer.score_records(records)
    _assert_matches_reference(tiny, scores, TEXTS)


def test_bos_is_scored_context_and_never_doubled(llama_dir):
    from scorecli.engine.models import load_model

    loaded = load_model(str(llama_dir), device="cpu")
    assert loaded.tokenizer("hello")["input_ids"][0] == loaded.tokenizer.bos_token_id  # the tokenizer adds one itself
    scorer = Scorer(loaded.model, loaded.tokenizer)
    [enc] = scorer.encoder.encode(["hello world"])
    assert list(enc.ids).count(loaded.tokenizer.bos_token_id) == 1 and enc.ids[0] == loaded.tokenizer.bos_token_id
    [score] = scorer.score_texts(["hello world"])
    assert score.positions[0] == 0 and score.token_ids[0] != loaded.tokenizer.bos_token_id
    assert score.n_tokens == len(enc.ids) - 1


def test_eos_stands_in_for_a_missing_bos(gpt2_dir):
    from scorecli.engine.models import load_model

    loaded = load_model(str(gpt2_dir), device="cpu")
    assert loaded.tokenizer.bos_token_id is None
    [enc] = Scorer(loaded.model, loaded.tokenizer).encoder.encode(["hello"])
    assert enc.ids[0] == loaded.tokenizer.eos_token_id


def test_no_bos_scores_from_the_second_token(tiny):
    [with_bos] = Scorer(tiny.model, tiny.tokenizer, bos=True).score_texts(["The river widened."])
    [no_bos] = Scorer(tiny.model, tiny.tokenizer, bos=False).score_texts(["The river widened."])
    assert no_bos.n_tokens == with_bos.n_tokens - 1
    assert no_bos.positions.tolist() == with_bos.positions[1:].tolist()
    assert no_bos.starts[0] == with_bos.ends[0]


def test_empty_and_unscorable_texts(tiny):
    scores = Scorer(tiny.model, tiny.tokenizer, bos=False).score_texts(["", "a", "ab cd ef"])
    row = scores[0].sequence_row()
    assert row["n_tokens"] == 0 and row["perplexity"] is None and row["mean_logprob"] is None
    assert row["bits_per_byte"] is None and row["n_bytes"] == 0
    assert scores[1].n_tokens == 0
    assert scores[2].n_tokens > 0


def test_truncation(tiny):
    text = sample_texts()[-1]
    [score] = Scorer(tiny.model, tiny.tokenizer, max_length=10, truncate=True).score_texts([text])
    assert score.truncated and score.n_tokens == 9
    _assert_matches_reference(tiny, [score], [text], max_length=10)
    assert score.n_bytes == len(text[: score.ends[-1]].encode())


def test_sequence_statistics_by_hand(tiny):
    [score] = Scorer(tiny.model, tiny.tokenizer).score_texts(["naïve café"])
    row = score.sequence_row()
    lp = score.logprobs.astype(np.float64)
    assert row["sum_logprob"] == pytest.approx(lp.sum())
    assert row["perplexity"] == pytest.approx(math.exp(-lp.mean()))
    assert row["n_bytes"] == len("naïve café".encode()) == 12
    assert row["bits_per_byte"] == pytest.approx(-lp.sum() / (12 * math.log(2)))
    assert row["mean_entropy"] == pytest.approx(score.entropies.astype(np.float64).mean())


def test_offsets_and_token_texts_cover_the_text(tiny):
    text = "The library stayed open late, zxq!"
    [score] = Scorer(tiny.model, tiny.tokenizer).score_texts([text])
    assert score.starts[0] == 0 and score.ends[-1] == len(text)
    assert "".join(score.tokens) == text
    assert all(text[s:e] == t for s, e, t in zip(score.starts, score.ends, score.tokens))


def test_a_character_split_across_tokens_goes_to_the_token_that_completes_it(tiny):
    text = "東"  # three UTF-8 bytes, unseen in training: one byte-level token per byte
    [score] = Scorer(tiny.model, tiny.tokenizer).score_texts([text])
    assert score.n_tokens == 3
    assert score.starts.tolist() == [0, 0, 0] and score.ends.tolist() == [0, 0, 1]
    assert score.tokens == ["\ufffd"] * 3


def vocab_in_chunks(vocab: int, monkeypatch) -> int:
    """Have the statistics take the tiny models' vocabulary in 4 chunks (a width no other tensor has); their width."""
    assert vocab % 4 == 0 and vocab // 4 not in (16, 32, 64, 128)
    monkeypatch.setattr(stats, "VOCAB_CHUNK", vocab // 4)
    return vocab // 4


class _LargestVocabTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces whose last dimension is the vocabulary (or a chunk's)."""

    def __init__(self, *widths: int):
        super().__init__()
        self.widths = widths
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] in self.widths:
                self.largest = max(self.largest, t.numel())
        return out


def test_no_batch_by_seq_by_vocab_tensor(tiny, monkeypatch):
    """Peak memory must not grow with vocabulary × tokens in flight: logits come a block of rows and a chunk
    of the vocabulary at a time."""
    head = output_head(tiny.model)
    monkeypatch.setattr(head, "chunk_rows", 8)
    chunk = vocab_in_chunks(head.vocab_size, monkeypatch)
    texts = sample_texts("long.jsonl")[:40]
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=4096, max_length=120, workers=1)  # modes are per-thread
    with _LargestVocabTensor(head.vocab_size, chunk) as probe:
        scores = scorer.score_texts(texts)
    assert sum(s.n_tokens for s in scores) > 1000
    assert 0 < probe.largest <= 8 * chunk
    with _LargestVocabTensor(head.vocab_size) as plain:
        reference_scores(tiny.model, tiny.tokenizer, texts[0])
    assert plain.largest > 8 * head.vocab_size  # the probe does see a full log-softmax


def test_head_falls_back_to_model_logits_when_the_head_alone_differs(gpt2_dir, monkeypatch):
    """Models that scale or soft-cap logits after the output layer are still scored exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    original = model.forward

    def capped(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = 5.0 * torch.tanh(out.logits / 5.0)
        return out

    monkeypatch.setattr(model, "forward", capped)
    head = OutputHead(model)
    assert not head.chunked and head.mode.startswith("model logits")
    scores = Scorer(model, tokenizer).score_texts(TEXTS[:6])
    for score, text in zip(scores, TEXTS[:6]):
        ref_lp, ref_ent = reference_scores(model, tokenizer, text)
        assert np.abs(score.logprobs - ref_lp.numpy()).max() <= TOL
        assert np.abs(score.entropies - ref_ent.numpy()).max() <= TOL


@pytest.mark.realmodel
def test_real_model_matches_reference(smollm):
    texts = sample_texts()
    scores = Scorer(smollm.model, smollm.tokenizer, batch_tokens=512).score_texts(texts)
    assert output_head(smollm.model).chunked
    _assert_matches_reference(smollm, scores, texts)
    # A pretrained model finds ordinary English far more predictable than a uniform guess over 49,152 tokens.
    assert math.exp(-sum(s.sum_logprob for s in scores) / sum(s.n_tokens for s in scores)) < 200


def test_progress_reports_reach_the_totals(tiny):
    from scorecli.engine.scorer import ScoreProgress

    seen = []
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, buffer_docs=5)
    scores = list(
        scorer.score_records(
            (Record(i, t) for i, t in enumerate(TEXTS)), progress=lambda s: seen.append((s.docs_done, s.tokens_done))
        )
    )
    assert seen[-1] == (len(TEXTS), sum(s.n_tokens for s in scores))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # 2 of 10 documents read, holding 30 tokens: the other 8 are estimated at 15 tokens each
    assert ScoreProgress(docs_planned=2, tokens_planned=30).tokens_total(10) == 150
    assert ScoreProgress().tokens_total(10) is None and ScoreProgress(2, 30).tokens_total(None) is None


def test_special_token_text_is_scored_as_plain_text(llama_dir):
    from scorecli.engine.models import load_model

    loaded = load_model(str(llama_dir), device="cpu")
    text = "<s>hello</s> world"
    [score] = Scorer(loaded.model, loaded.tokenizer).score_texts([text])
    specials = {loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id}
    assert not specials & set(score.token_ids.tolist())
    assert "".join(score.tokens) == text
    _assert_matches_reference(loaded, [score], [text])


def test_probe_in_train_mode_keeps_the_chunked_head(gpt2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    model.train()  # dropout on: two forward passes differ
    head = OutputHead(model)
    assert head.chunked and model.training


def test_a_pad_token_outside_the_model_vocabulary(gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    assert tokenizer.pad_token_id >= model.config.vocab_size
    texts = TEXTS[:8]
    scores = Scorer(model, tokenizer, batch_tokens=4096).score_texts(texts)
    for score, text in zip(scores, texts):
        ref_lp, _ = reference_scores(model, tokenizer, text)
        assert np.abs(score.logprobs - ref_lp.numpy()).max() <= TOL


def test_no_bos_bytes_start_at_the_first_scored_token(tiny):
    [split_char, words] = Scorer(tiny.model, tiny.tokenizer, bos=False).score_texts(["東京", "ab cd"])
    assert split_char.starts[0] == 0 and split_char.n_bytes == len("東京".encode())
    assert words.n_bytes == len("ab cd"[words.starts[0] :].encode())


def test_perplexity_overflows_to_infinity():
    from scorecli.data.scores import perplexity

    assert perplexity(-800.0) == math.inf and perplexity(-1.0) == pytest.approx(math.e)


def test_worker_threads_give_the_same_scores_and_restore_torch_threads(tiny):
    threads = torch.get_num_threads()
    one = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, workers=1).score_texts(TEXTS)
    three = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, workers=3).score_texts(TEXTS)
    assert torch.get_num_threads() == threads
    for a, b in zip(one, three):
        assert a.doc == b.doc and a.n_tokens == b.n_tokens
        if a.n_tokens:
            assert np.abs(a.logprobs - b.logprobs).max() <= TOL
