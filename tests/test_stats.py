"""The statistics taken a chunk of the vocabulary at a time, against whole-row computations; the 16-bit head."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLES, one_line_error
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.engine import stats
from scorecli.engine.head import OutputHead, head_products
from scorecli.engine.stats import token_stats
from scorecli.runfolder.outputs import read_metadata

ALL = ("logprob", "entropy", "rank", "top_k", "reference")


def _whole_rows(logits: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """Every statistic from whole rows, in float64: log_softmax, a stable sort, sums over the vocabulary."""
    z, r = logits.double(), ref.double()
    logp, ref_logp = torch.log_softmax(z, -1), torch.log_softmax(r, -1)
    p, q = logp.exp(), ref_logp.exp()
    at = labels[:, None]
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
    return {
        "logprob": logp.gather(1, at)[:, 0],
        "entropy": -torch.nansum(p * logp, -1),
        "rank": 1 + (logits > logits.gather(1, at)).sum(-1),
        "top_ids": order,
        "top_logprobs": logp.gather(1, order),
        "ref_logprob": ref_logp.gather(1, at)[:, 0],
        "ref_entropy": -torch.nansum(q * ref_logp, -1),
        "kl": torch.nansum(q * (ref_logp - logp), -1),
        "reverse_kl": torch.nansum(p * (logp - ref_logp), -1),
        "same_top": logits.argmax(-1) == ref.argmax(-1),
    }


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 6),
    vocab=st.integers(1, 40),
    chunk=st.integers(1, 45),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    # Logits spread over up to ~80 nats: every probability is a float32 number above 0 (exp(-87) is the least).
    scale=st.sampled_from([0.1, 3.0, 12.0]),
    ties=st.booleans(),
    masked=st.booleans(),
)
def test_chunked_statistics_equal_whole_rows(rows, vocab, chunk, k, seed, scale, ties, masked):
    """Whatever the chunk size: equal logits, -inf entries, logits far from 0 and KL in both directions."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * scale + 30.0 * (seed % 3 - 1)
    ref = torch.randn(rows, vocab, generator=g) * scale - 7.0
    if ties:  # values on a coarse grid: many equal logits, also straddling the K-th place
        logits, ref = logits.round(), ref.round()
    labels = torch.randint(0, vocab, (rows,), generator=g)
    if masked and vocab > 1:  # an entry the model gives no probability, never the label nor every entry
        masked_at = (labels + 1) % vocab
        logits[torch.arange(rows), masked_at] = -torch.inf
    got = token_stats(logits, labels, ALL, ref_logits=ref, top_k=k, chunk=chunk)
    want = _whole_rows(logits, ref, labels, min(k, vocab))
    for name in ("logprob", "entropy", "top_logprobs", "ref_logprob", "ref_entropy", "kl", "reverse_kl"):
        assert np.allclose(got[name].numpy(), want[name].numpy(), rtol=1e-5, atol=2e-5), name
    for name in ("rank", "top_ids", "same_top"):
        assert np.array_equal(got[name].numpy(), want[name].numpy()), name


def test_kl_of_a_model_against_itself_is_zero_in_every_chunking():
    logits = torch.randn(5, 37) * 8 + 50
    for chunk in (1, 4, 37):
        got = token_stats(logits, torch.zeros(5, dtype=torch.long), ("reference",), ref_logits=logits, chunk=chunk)
        assert got["kl"].abs().max() <= 1e-6 and got["reverse_kl"].abs().max() <= 1e-6


def test_an_entry_the_reference_lacks_makes_reverse_kl_infinite_in_a_later_chunk():
    model = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0, 0.0, -math.inf]])
    got = token_stats(model, torch.tensor([0]), ("reference",), ref_logits=ref, chunk=3)
    assert got["reverse_kl"].item() == math.inf
    assert got["kl"].item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def _copy(tiny, **kwargs):
    """A fresh copy of a tiny model (the session's own stays as it is)."""
    return type(tiny.model).from_pretrained(tiny.model.name_or_path, **kwargs).eval()


def test_sixteen_bit_products_round_each_logit_near_its_rows_largest(tiny):
    """The 16-bit head's logits differ from float32 products of the same 16-bit values by at most half a
    16-bit step of (logit - shift), the shift being the row's largest logit so far, or the chunk's own where
    that is more than REFINE_ABOVE above it: the logits near the top keep their digits, whatever their size."""
    torch.manual_seed(3)
    head = OutputHead(tiny.model).with_products(torch.bfloat16)
    hidden = torch.randn(37, head.head.weight.shape[1]) * 4
    labels = torch.randint(0, head.vocab_size, (37,))
    logits_of, label_logits = head._chunks(hidden, labels)
    exact = hidden.bfloat16().float() @ head.head.weight.detach().bfloat16().float().T
    top = exact.amax(-1, keepdim=True)
    # A row's largest so far just above this chunk's, as a bfloat16 number: no row is taken again, and each
    # logit is within half a bfloat16 step of its distance from that shift.
    above = (top + 0.5).bfloat16().float()
    got = logits_of(0, head.vocab_size, above)
    step = 2.0 ** (torch.floor(torch.log2((exact - above).abs().clamp_min(1e-30))) - 7)
    assert ((got - exact).abs() <= step / 2 + 1e-5 * exact.abs().clamp_min(1)).all()
    # Far below: every row is taken again, relative to its own largest logit (as first rounded) in the chunk.
    got = logits_of(0, head.vocab_size, top - 20)
    assert ((got - exact).abs() <= 2**-8 * ((exact - top).abs() + 1)).all()
    near_top = exact > top - 1
    assert (got - exact)[near_top].abs().max() <= 2**-8
    # The first chunk (no largest logit yet) is float32 products.
    first = logits_of(0, head.vocab_size, torch.full((37, 1), -torch.inf))
    assert (first - exact).abs().max() <= 1e-4
    assert (label_logits - exact.gather(1, labels[:, None])[:, 0]).abs().max() <= 1e-4


def test_sixteen_bit_products_stay_close_to_the_float32_head(smollm):
    """On SmolLM2's own final states: bfloat16 products add a small drift on top of a bfloat16 model's own."""
    from conftest import sample_texts

    texts = sample_texts("long.jsonl")[:4]
    ids = torch.tensor([smollm.tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"][:400]])
    head = OutputHead(smollm.model)
    with torch.inference_mode():
        hidden = head._hidden(ids, None)[0, :-1].bfloat16()  # states and weights as a bfloat16 model has them
        labels = ids[0, 1:]
        logits = (
            hidden.float() @ head.head.weight.bfloat16().float().T,
            (hidden @ head.head.weight.bfloat16().T).float(),
        )
        exact, plain = (token_stats(z, labels, ("logprob", "entropy")) for z in logits)
        fast = head.with_products(torch.bfloat16).score_states(hidden, labels, ("logprob", "entropy"))
    drift = (fast["logprob"] - exact["logprob"]).abs()
    unshifted = (plain["logprob"] - exact["logprob"]).abs()
    assert drift.mean() <= 5e-4 and drift.max() <= 0.01
    assert (fast["entropy"] - exact["entropy"]).abs().mean() <= 1e-3
    assert drift.mean() * 20 <= unshifted.mean()  # rounding near the largest logit, not near 0, is what helps


def test_auto_head_products(tiny):
    assert head_products("auto", tiny.model) == torch.float32  # a float32 model keeps the exact head
    assert head_products("bfloat16", tiny.model) == torch.bfloat16
    model16 = _copy(tiny, dtype=torch.bfloat16)
    fast = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert head_products("auto", model16) == (torch.bfloat16 if fast else torch.float32)


def test_a_head_with_a_bias_keeps_float32_products(tiny):
    model = _copy(tiny)
    out = model.get_output_embeddings()
    out.bias = torch.nn.Parameter(torch.zeros(out.weight.shape[0]))
    head = OutputHead(model).with_products(torch.bfloat16)
    assert head.products == torch.float32 and head.mode == "chunked output head"


def test_gradients_flow_through_the_chunked_statistics():
    """The shift is a constant to autograd: d logprob / d logits is onehot - softmax, whatever the chunks."""
    logits = (torch.randn(3, 11) * 5).requires_grad_()
    labels = torch.tensor([0, 5, 10])
    token_stats(logits, labels, ("logprob",), chunk=4)["logprob"].sum().backward()
    want = F.one_hot(labels, 11) - torch.softmax(logits.detach(), -1)
    assert torch.allclose(logits.grad, want, atol=1e-6)


def test_head_dtype_option(gpt2_dir, tmp_path, monkeypatch):
    """--head-dtype is recorded; bfloat16 products stay near the float32 head of the same bfloat16 model."""
    monkeypatch.setattr(stats, "VOCAB_CHUNK", 100)  # the first chunk's products are float32: have 3 more
    corpus = SAMPLES / "mixed.jsonl"
    common = ["score", str(corpus), "-m", str(gpt2_dir), "--dtype", "bfloat16", "-q"]
    logprobs = {}
    for choice in ("float32", "bfloat16"):
        out = tmp_path / choice
        result = CliRunner().invoke(app, [*common, "--head-dtype", choice, "-o", str(out)])
        assert result.exit_code == 0, result.output
        meta = read_metadata(out / "tokens.parquet")
        assert meta["head_dtype"] == choice
        assert ("bfloat16 products" in meta["head"]) == (choice == "bfloat16")
        logprobs[choice] = pq.read_table(out / "tokens.parquet").column("logprob").to_numpy()
    drift = np.abs(logprobs["bfloat16"] - logprobs["float32"])
    assert 0 < drift.max() <= 0.05
    bad = CliRunner().invoke(app, [*common, "--head-dtype", "float64", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2
    assert one_line_error(bad, 2).endswith(
        "--head-dtype must be one of auto, float32, bfloat16, float16, not 'float64'"
    )
