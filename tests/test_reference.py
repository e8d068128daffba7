"""Rank, top-k and a reference model: against plain full-vocabulary references and hand-worked examples."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLES, bos_id, reference_pair, sample_texts
from test_engine import _LargestVocabTensor, vocab_in_chunks
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.data.tables import sequence_schema, token_schema
from scorecli.engine.head import get_response_kl, get_response_log_probs, output_head
from scorecli.engine.scorer import Scorer
from scorecli.engine.stats import token_stats

TOL = 1e-4
TEXTS = sample_texts() + sample_texts("edge_cases.jsonl")
runner = CliRunner()


def _score(*args):
    return runner.invoke(app, ["score", *map(str, args)])


def _seq(tokenizer, text):
    return [bos_id(tokenizer)] + tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _assert_matches_pair(model, ref_model, tokenizer, scores, texts, top_k=5):
    for score, text in zip(scores, texts, strict=True):
        seq = _seq(tokenizer, text)
        if len(seq) < 2:
            assert score.n_tokens == 0
            continue
        want = reference_pair(model, ref_model, seq, top_k)
        assert score.token_ids.tolist() == seq[1:]
        got = score.stats
        assert np.array_equal(got["rank"], want["rank"].numpy()), text
        if "top_ids" in got:
            assert np.array_equal(got["top_ids"], want["top_ids"].numpy()), text
            assert np.abs(got["top_logprobs"] - want["top_logprobs"].numpy()).max() <= TOL
            assert got["top_tokens"].tolist() == [[tokenizer.decode([i]) for i in row] for row in got["top_ids"]]
        if "kl" in got:
            for name in ("ref_logprob", "ref_entropy", "kl", "reverse_kl"):
                assert np.abs(got[name] - want[name].numpy()).max() <= TOL, (name, text)
            assert np.array_equal(got["same_top"], want["same_top"].numpy())


# Hand-worked examples on a vocabulary of three tokens


def test_rank_and_top_k_by_hand_ties_by_the_lower_id():
    logits = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [3.0, 1.0, 1.0], [0.0, 5.0, float("-inf")]])
    stats = token_stats(logits, torch.tensor([0, 2, 2, 2]), ("logprob", "rank", "top_k"), top_k=2)
    # Rank: 1 + the entries with a strictly larger logit; tied entries share the better rank.
    assert stats["rank"].tolist() == [3, 1, 2, 3]
    # Top 2, most likely first; equal logits by the lower id, also where the tie straddles the K-th place.
    assert stats["top_ids"].tolist() == [[1, 2], [0, 1], [0, 1], [1, 0]]
    lse = [
        math.log(math.e + 2 * math.e**2),
        math.log(3),
        math.log(math.e**3 + 2 * math.e),
        5 + math.log(1 + math.e**-5),
    ]
    want = [[2 - lse[0], 2 - lse[0]], [-lse[1]] * 2, [3 - lse[2], 1 - lse[2]], [5 - lse[3], -lse[3]]]
    assert np.abs(stats["top_logprobs"].numpy() - np.array(want)).max() <= 1e-6


def test_kl_both_directions_by_hand():
    p = [0.5, 0.25, 0.25]  # the model
    q = [0.2, 0.2, 0.6]  # the reference
    stats = token_stats(
        torch.tensor([p]).log(), torch.tensor([2]), ("logprob", "reference"), ref_logits=torch.tensor([q]).log() + 7.0
    )
    assert stats["kl"].item() == pytest.approx(sum(b * math.log(b / a) for a, b in zip(p, q)), abs=1e-6)
    assert stats["reverse_kl"].item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(p, q)), abs=1e-6)
    assert stats["ref_logprob"].item() == pytest.approx(math.log(0.6), abs=1e-6)
    assert stats["ref_entropy"].item() == pytest.approx(-sum(b * math.log(b) for b in q), abs=1e-6)
    assert stats["same_top"].tolist() == [False]


def test_kl_where_a_model_gives_an_entry_no_probability():
    model = torch.tensor([[0.0, 0.0, float("-inf")]])
    ref = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    stats = token_stats(model, torch.tensor([0]), ("reference",), ref_logits=ref)
    assert stats["kl"].item() == pytest.approx(math.log(2))  # 1·log(1/0.5)
    assert stats["reverse_kl"].item() == math.inf  # the model puts mass where the reference has none


# The engine against the plain reference


def test_rank_and_top_k_match_the_plain_reference(tiny):
    scores = Scorer(tiny.model, tiny.tokenizer, top_k=5).score_texts(TEXTS)
    for score, text in zip(scores, TEXTS):
        seq = _seq(tiny.tokenizer, text)
        if len(seq) < 2:
            continue
        want = reference_pair(tiny.model, tiny.model, seq)
        assert np.array_equal(score.stats["rank"], want["rank"].numpy()), text
        assert np.array_equal(score.stats["top_ids"], want["top_ids"].numpy()), text
        assert np.abs(score.stats["top_logprobs"] - want["top_logprobs"].numpy()).max() <= TOL
    row = scores[0].sequence_row()
    assert row["top1_rate"] == pytest.approx(np.mean(scores[0].stats["rank"] == 1))


def test_a_top_k_beyond_the_vocabulary_is_refused_and_the_whole_vocabulary_listed(tiny_pair, smollm):
    from scorecli.base.errors import UsageError

    model, ref = tiny_pair
    vocab = model.model.get_output_embeddings().weight.shape[0]
    for ref_model in (None, ref.model):
        with pytest.raises(UsageError, match=f"^top_k {vocab + 1} exceeds the model's vocabulary of {vocab:,} tokens"):
            Scorer(model.model, model.tokenizer, top_k=vocab + 1, ref_model=ref_model)
        # K = the vocabulary lists every token once, none left out.
        [score] = Scorer(model.model, model.tokenizer, top_k=vocab, ref_model=ref_model).score_texts([TEXTS[0]])
        assert score.stats["top_ids"].shape == (score.n_tokens, vocab)
        assert (np.sort(score.stats["top_ids"], axis=1) == np.arange(vocab)).all()
    with pytest.raises(UsageError, match="^top_k 100000 exceeds the model's vocabulary of 49,152 tokens"):
        Scorer(smollm.model, smollm.tokenizer, top_k=100_000)


def test_cli_a_top_k_beyond_the_vocabulary_is_a_usage_error(gpt2_dir, gpt2_ref_dir, tmp_path):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(gpt2_dir).vocab_size
    for ref in ([], ["--ref-model", gpt2_ref_dir]):
        result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, *ref, "--top-k", vocab + 1, "-o", tmp_path / "o")
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (
            f"scorecli: error: --top-k {vocab + 1} exceeds the model's vocabulary of {vocab:,} tokens "
            "(the most there are to list)"
        )
        assert not (tmp_path / "o").exists()


def test_reference_model_matches_the_plain_reference(tiny_pair):
    model, ref = tiny_pair
    scores = Scorer(model.model, model.tokenizer, top_k=3, ref_model=ref.model).score_texts(TEXTS)
    _assert_matches_pair(model.model, ref.model, model.tokenizer, scores, TEXTS, top_k=3)
    score = max(scores, key=lambda s: s.n_tokens)
    row, n = score.sequence_row(), score.n_tokens
    ref_lp = score.stats["ref_logprob"].astype(np.float64)
    assert row["ref_sum_logprob"] == pytest.approx(ref_lp.sum())
    assert row["ref_perplexity"] == pytest.approx(math.exp(-ref_lp.sum() / n))
    assert row["mean_kl"] == pytest.approx(score.stats["kl"].astype(np.float64).mean())
    assert row["mean_reverse_kl"] == pytest.approx(score.stats["reverse_kl"].astype(np.float64).mean())
    assert row["top1_agreement"] == pytest.approx(np.mean(score.stats["same_top"]))
    assert 0 < row["mean_kl"] and 0 < row["mean_reverse_kl"] and row["mean_kl"] != row["mean_reverse_kl"]


def test_a_model_against_itself(tiny):
    scores = Scorer(tiny.model, tiny.tokenizer, ref_model=tiny.model).score_texts(TEXTS)
    for score in scores:
        assert (
            np.abs(score.stats["kl"]).max(initial=0) <= 1e-6
            and np.abs(score.stats["reverse_kl"]).max(initial=0) <= 1e-6
        )
        assert np.array_equal(score.stats["ref_logprob"], score.logprobs)
        if score.n_tokens:
            assert score.sequence_row()["top1_agreement"] == 1.0


@pytest.mark.parametrize("batch_tokens", [1, 37, 100_000])
def test_reference_scores_do_not_depend_on_batching_or_order(tiny_pair, batch_tokens):
    model, ref = tiny_pair
    alone = Scorer(model.model, model.tokenizer, batch_tokens=1, ref_model=ref.model, top_k=4).score_texts(TEXTS)
    order = list(range(len(TEXTS)))
    random.Random(batch_tokens).shuffle(order)
    scorer = Scorer(
        model.model, model.tokenizer, batch_tokens=batch_tokens, buffer_docs=7, ref_model=ref.model, top_k=4
    )
    shuffled = scorer.score_texts([TEXTS[i] for i in order])
    for pos, i in enumerate(order):
        a, b = shuffled[pos].stats, alone[i].stats
        assert a.keys() == b.keys()
        for name in a:
            if a[name].dtype.kind == "f":
                assert np.abs(a[name] - b[name]).max(initial=0) <= TOL, name
            else:
                assert np.array_equal(a[name], b[name]), name


def test_windows_with_a_reference_match_scoring_each_window_alone(tiny_pair):
    model, ref = tiny_pair
    text = sample_texts("long.jsonl")[0]
    [score] = Scorer(model.model, model.tokenizer, max_length=32, stride=16, ref_model=ref.model).score_texts([text])
    whole = _seq(model.tokenizer, text)
    assert score.n_tokens == len(whole) - 1
    # The first window scores its first 31 targets with the context before them, as the plain reference does.
    want = reference_pair(model.model, ref.model, whole[:32])
    assert np.abs(score.stats["kl"][:31] - want["kl"].numpy()).max() <= TOL


def test_no_vocabulary_sized_tensor_for_all_positions_with_a_reference(tiny_pair, monkeypatch):
    model, ref = tiny_pair
    heads = output_head(model.model), output_head(ref.model)
    for head in heads:
        monkeypatch.setattr(head, "chunk_rows", 8)
    texts = sample_texts("long.jsonl")[:20]
    scorer = Scorer(model.model, model.tokenizer, batch_tokens=4096, max_length=120, workers=1, ref_model=ref.model)
    chunk = vocab_in_chunks(heads[0].vocab_size, monkeypatch)
    with _LargestVocabTensor(heads[0].vocab_size, chunk) as probe:
        scores = scorer.score_texts(texts)
    assert sum(s.n_tokens for s in scores) > 500
    assert 0 < probe.largest <= 8 * chunk


def test_a_reference_with_another_number_of_logits_is_refused(gpt2_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from scorecli.base.errors import ModelError
    from scorecli.engine.models import load_model

    model = load_model(str(gpt2_dir), device="cpu", dtype="float32")
    wider = GPT2LMHeadModel(GPT2Config(vocab_size=model.model.config.vocab_size + 8, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ModelError, match="ref_model has .* output logits, the model"):
        Scorer(model.model, model.tokenizer, ref_model=wider)


# The training-loop function


def test_get_response_kl_matches_the_plain_reference_and_trains_the_model_only(tiny_pair):
    model, ref = tiny_pair
    torch.manual_seed(2)
    vocab = model.model.config.vocab_size
    input_ids = torch.randint(0, vocab, (2, 11))
    labels = torch.randint(0, vocab, (2, 11))
    mask = torch.zeros(2, 11)
    mask[:, 5:] = 1
    ref.model.zero_grad()
    model.model.zero_grad()
    out = get_response_kl(model.model, ref.model, input_ids, labels)
    assert set(out) == {"log_probs", "ref_log_probs", "kl", "reverse_kl"} and out["kl"].shape == (2, 11)
    loss = -(out["log_probs"] * mask).sum() + 0.1 * (out["reverse_kl"] * mask).sum()
    loss.backward()
    weight = model.model.get_output_embeddings().weight
    ours = weight.grad.clone()
    assert all(p.grad is None or not p.grad.any() for p in ref.model.parameters())
    model.model.zero_grad()
    logp = torch.log_softmax(model.model(input_ids).logits.float(), -1)
    with torch.no_grad():
        ref_logp = torch.log_softmax(ref.model(input_ids).logits.float(), -1)
    lp = logp.gather(-1, labels[..., None])[..., 0]
    reverse = (logp.exp() * (logp - ref_logp)).sum(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    plain = -(lp * mask).sum() + 0.1 * (reverse * mask).sum()
    plain.backward()
    assert (out["log_probs"] - lp).abs().max() <= TOL and (out["kl"] - kl).abs().max() <= TOL
    assert (out["ref_log_probs"] - ref_logp.gather(-1, labels[..., None])[..., 0]).abs().max() <= TOL
    assert torch.allclose(ours, weight.grad, atol=1e-5)
    model.model.zero_grad()
    # get_response_log_probs keeps its contract
    assert set(get_response_log_probs(model.model, input_ids, labels)) == {"log_probs"}


# The command line


def test_cli_ref_model_columns_and_summary(gpt2_dir, gpt2_ref_dir, tmp_path):
    out = tmp_path / "o"
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "--ref-model", gpt2_ref_dir, "--top-k", "3", "-o", out)
    assert result.exit_code == 0, result.output
    stats = ("logprob", "entropy", "rank", "top_ids", "top_logprobs", "top_tokens")
    stats += ("ref_logprob", "ref_entropy", "kl", "reverse_kl", "same_top")
    tokens = pq.read_table(out / "tokens.parquet")
    assert tokens.schema.remove_metadata() == token_schema(stats)
    assert pq.read_table(out / "sequences.parquet").schema.remove_metadata() == sequence_schema(stats)
    meta = json.loads((out / "summary.json").read_text())
    assert meta["metadata"]["ref_model"] == str(gpt2_ref_dir) and meta["metadata"]["ref_model_fingerprint"]
    assert meta["metadata"]["top_k"] == "3"
    figures, t = meta["summary"], tokens.to_pandas()
    lp, ref_lp, kl = (t[c].to_numpy(np.float64) for c in ("logprob", "ref_logprob", "kl"))
    dp = np.exp(lp) - np.exp(ref_lp)
    n = len(t)
    assert figures["ref_perplexity"] == pytest.approx(math.exp(-ref_lp.mean()))
    assert figures["ln_ppl_ratio"] == pytest.approx(ref_lp.mean() - lp.mean())
    assert figures["mean_kl"] == pytest.approx(kl.mean())
    assert figures["mean_kl_se"] == pytest.approx(kl.std() / math.sqrt(n - 1))
    assert figures["kl_p99"] == pytest.approx(np.percentile(kl, 99)) and figures["kl_max"] == pytest.approx(kl.max())
    assert figures["delta_p_rms"] == pytest.approx(math.sqrt((dp**2).mean()))
    assert figures["delta_p_median"] == pytest.approx(np.median(dp))
    assert figures["same_top"] == pytest.approx(t["same_top"].mean())
    assert figures["top1_rate"] == pytest.approx((t["rank"] == 1).mean())
    assert "mean KL(ref‖model)" in result.stderr and "same top token" in result.stderr
    assert "top-1 rate" in result.stderr


def test_cli_ref_model_with_prompt_response_words_and_stdout(gpt2_dir, gpt2_ref_dir, tmp_path):
    out = tmp_path / "o"
    args = ["--prompt-field", "prompt", "--response-field", "response", "--ref-model", gpt2_ref_dir]
    result = _score(SAMPLES / "pairs.jsonl", "-m", gpt2_dir, *args, "--all-tokens", "--words", "-o", out)
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(out / "tokens.parquet")
    sequences = pd.read_parquet(out / "sequences.parquet")
    response = tokens[tokens.is_response]
    # KL over the response tokens only, as GRPO uses it
    mean_kl = response.groupby("doc").kl.apply(lambda x: x.astype(np.float64).mean())
    assert np.allclose(sequences.set_index("doc").mean_kl.loc[mean_kl.index], mean_kl)
    assert (tokens[~tokens.is_response].kl >= 0).all()
    lines = _score(SAMPLES / "pairs.jsonl", "-m", gpt2_dir, *args, "-o", "-").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows[0]["mean_kl"] == pytest.approx(sequences.mean_kl[0]) and "top1_agreement" in rows[0]


def test_cli_resume_with_a_reference(gpt2_dir, gpt2_ref_dir, llama_dir, tmp_path):
    texts = sample_texts()
    lines = [json.dumps({"text": f"{i}: {texts[i % len(texts)]}"}) for i in range(600)]
    lines[500] = '{"text": 5}'
    data = tmp_path / "late-bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    args = [data, "-m", gpt2_dir, "--ref-model", gpt2_ref_dir, "--batch-tokens", 64, "--top-k", 2]
    assert _score(*args, "-o", tmp_path / "o").exit_code == 3  # stops at the bad record, parts saved
    assert list((tmp_path / "o" / "parts").glob("*.json"))
    other = _score(
        data,
        "-m",
        gpt2_dir,
        "--ref-model",
        gpt2_dir,
        "--batch-tokens",
        64,
        "--top-k",
        2,
        "-o",
        tmp_path / "o",
        "--resume",
        "--on-error",
        "skip",
    )
    assert other.exit_code == 5 and "the run was started with ref_model" in other.stderr
    # The run's folder keeps its options: the reference and --top-k too.
    resumed = _score("--resume", "-o", tmp_path / "o", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    assert _score(*args, "-o", tmp_path / "straight", "--on-error", "skip").exit_code == 0
    for name in ("tokens.parquet", "sequences.parquet"):
        assert pq.read_table(tmp_path / "o" / name).equals(pq.read_table(tmp_path / "straight" / name)), name
    a, b = (json.loads((tmp_path / d / "summary.json").read_text())["summary"] for d in ("o", "straight"))
    for timing in ("seconds", "tokens_per_second", "sessions", "session_seconds", "session_tokens_per_second"):
        a.pop(timing, None), b.pop(timing, None)
    assert a.pop("highest") == b.pop("highest") and a.pop("lowest") == b.pop("lowest")
    for interval in ("perplexity_ci", "bits_per_byte_ci"):
        assert a.pop(interval) == pytest.approx(b.pop(interval))
    assert a == pytest.approx(b) and "kl_p99" in a


def test_cli_reference_errors_are_one_line(gpt2_dir, llama_dir, tmp_path):
    out = tmp_path / "o"
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "--ref-model", llama_dir, "-o", out)
    assert result.exit_code == 4
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("scorecli: error: --ref-model: the reference model's tokenizer differs from the model's")
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "--ref-model", tmp_path / "nowhere", "-o", out)
    assert result.exit_code == 4
    [line] = result.stderr.strip().splitlines()
    assert line == f"scorecli: error: --ref-model {tmp_path / 'nowhere'}: no such model folder or file"
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "--ref-model", gpt2_dir, "--ref-dtype", "half", "-o", out)
    assert result.exit_code == 2 and result.stderr.startswith("scorecli: error: --ref-dtype must be one of")
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "--top-k", -1, "-o", out)
    assert result.exit_code == 2 and result.stderr.strip() == "scorecli: error: --top-k must be at least 0, not -1"
    assert not list(out.glob("*.parquet")) and not (out / "parts").exists()


@pytest.mark.realmodel
def test_smollm_against_a_perturbed_copy(smollm, smollm_perturbed_dir):
    from scorecli.engine.models import load_model

    ref = load_model(str(smollm_perturbed_dir), device="cpu", dtype="float32")
    texts = sample_texts()[:6]
    scores = Scorer(smollm.model, smollm.tokenizer, top_k=5, ref_model=ref.model).score_texts(texts)
    _assert_matches_pair(smollm.model, ref.model, smollm.tokenizer, scores, texts)
    assert all(s.sequence_row()["mean_kl"] > 1e-3 for s in scores if s.n_tokens)


_LIMITED = """
import resource, sys
from scorecli.cli import app
vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
limit = vm + 1500 * 2**20  # 1.5 GB of address space beyond what is mapped now: the small model fits, not the big one
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["scorecli", "score", *sys.argv[1:]]
app()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and limits the address space")
def test_cli_a_reference_that_does_not_fit_in_memory_is_one_line(gpt2_dir, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GPT2Config

    big = tmp_path / "big"
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    tokenizer.save_pretrained(big)
    # About 5 billion parameters (20 GB in float32), of which only the embeddings are saved.
    GPT2Config(vocab_size=len(tokenizer), n_embd=4096, n_layer=24, n_head=32, n_positions=512).save_pretrained(big)
    save_file({"transformer.wte.weight": torch.zeros(len(tokenizer), 4096)}, big / "model.safetensors")
    script = tmp_path / "limited.py"
    script.write_text(_LIMITED)
    out = tmp_path / "o"
    args = [SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "--ref-model", big, "-o", out]
    proc = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"scorecli: error: --ref-model {big}: does not fit in memory beside the models already")
    assert not out.exists() or not list(out.iterdir())  # nothing half-written


def test_library_checks_the_reference_tokenizer_where_given(gpt2_dir, llama_dir):
    from scorecli.base.errors import ModelError
    from scorecli.engine.models import load_model

    gpt2, llama = (load_model(str(d), device="cpu", dtype="float32") for d in (gpt2_dir, llama_dir))
    with pytest.raises(ModelError, match="tokenizer differs from the model's: it maps '.*' to id"):
        Scorer(gpt2.model, gpt2.tokenizer, ref_model=llama.model, ref_tokenizer=llama.tokenizer)


def _spy_on_revisions(monkeypatch) -> dict:
    """Record the revision from_pretrained is given for each model folder (model and tokenizer alike)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scorecli.engine import models

    seen = {}
    for auto in (AutoModelForCausalLM, AutoTokenizer):
        original = auto.from_pretrained.__func__

        def spy(cls, source, *args, _original=original, **kwargs):
            seen.setdefault(str(source), set()).add(kwargs.get("revision"))
            return _original(cls, source, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(models, "_loaded", {})
    return seen


def _late_bad_corpus(tmp_path) -> Path:
    """300 sample texts with a bad record at line 251: a run stops there with its first parts saved."""
    texts = sample_texts()
    lines = [json.dumps({"text": texts[i % len(texts)]}) for i in range(300)]
    lines[250] = '{"text": 5}'
    data = tmp_path / "late-bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return data


def test_ref_revision_reaches_the_reference_only_and_is_saved_for_resume(gpt2_dir, gpt2_ref_dir, tmp_path, monkeypatch):
    from scorecli.runfolder.outputs import read_metadata

    seen = _spy_on_revisions(monkeypatch)
    args = [_late_bad_corpus(tmp_path), "-m", gpt2_dir, "--ref-model", gpt2_ref_dir, "--batch-tokens", 64]
    assert _score(*args, "--ref-revision", "main", "-o", tmp_path / "o").exit_code == 3  # parts saved
    assert seen == {str(gpt2_dir): {None}, str(gpt2_ref_dir): {"main"}}
    # Resumed with no options, the reference is loaded at the saved revision again.
    seen.clear()
    monkeypatch.setattr("scorecli.engine.models._loaded", {})
    resumed = _score("--resume", "-o", tmp_path / "o", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    assert seen == {str(gpt2_dir): {None}, str(gpt2_ref_dir): {"main"}}
    meta = read_metadata(tmp_path / "o" / "tokens.parquet")
    assert meta["ref_revision"] == "main" and "revision" not in meta
    # --revision pins the model only.
    seen.clear()
    monkeypatch.setattr("scorecli.engine.models._loaded", {})
    assert _score(*args, "--revision", "main", "--on-error", "skip", "-o", tmp_path / "r").exit_code == 0
    assert seen == {str(gpt2_dir): {"main"}, str(gpt2_ref_dir): {None}}
    meta = read_metadata(tmp_path / "r" / "tokens.parquet")
    assert meta["revision"] == "main" and "ref_revision" not in meta
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "--ref-model", fake, "--ref-revision", "v1")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "scorecli: error: --ref-revision applies to hub models and model folders, not to GGUF files"
    )


def test_a_run_saved_before_ref_revision_existed_resumes(gpt2_dir, gpt2_ref_dir, tmp_path, monkeypatch):
    seen = _spy_on_revisions(monkeypatch)
    args = [_late_bad_corpus(tmp_path), "-m", gpt2_dir, "--ref-model", gpt2_ref_dir, "--batch-tokens", 64]
    assert _score(*args, "-o", tmp_path / "old").exit_code == 3
    run_file = tmp_path / "old" / "parts" / "run.json"
    run = json.loads(run_file.read_text())
    del run["options"]["ref_revision"]
    run_file.write_text(json.dumps(run))
    seen.clear()
    monkeypatch.setattr("scorecli.engine.models._loaded", {})
    resumed = _score("--resume", "-o", tmp_path / "old", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    assert seen == {str(gpt2_dir): {None}, str(gpt2_ref_dir): {None}}
    assert _score(*args, "--on-error", "skip", "-o", tmp_path / "straight").exit_code == 0
    for name in ("tokens.parquet", "sequences.parquet"):
        assert pq.read_table(tmp_path / "old" / name).equals(pq.read_table(tmp_path / "straight" / name)), name


def test_ray_jobs_load_the_reference_at_ref_revision(gpt2_dir, gpt2_ref_dir, tmp_path, monkeypatch):
    # The job --ray builds, scored as one shard here (the Ray tests run real clusters).
    from scorecli.cli import EXIT_INTERRUPTED
    from scorecli.executors import scaleout
    from scorecli.runfolder.outputs import read_metadata

    jobs = []

    def captured(job, *args, **kwargs):
        jobs.append(job)
        raise KeyboardInterrupt

    monkeypatch.setattr(scaleout, "require_ray", lambda: None)
    monkeypatch.setattr(scaleout, "score_sharded", captured)
    data = str(SAMPLES / "mixed.jsonl")
    args = ["--ray", "-m", gpt2_dir, "--ref-model", gpt2_ref_dir, "--ref-revision", "main", "-o", tmp_path / "o"]
    assert _score(data, *args).exit_code == EXIT_INTERRUPTED
    [job] = jobs
    assert job.options["ref_revision"] == "main" and job.options["revision"] is None
    seen = _spy_on_revisions(monkeypatch)
    scaleout.score_shard(scaleout.plan_shards([data], 1)[0], job, tmp_path / "shard")
    assert seen == {str(gpt2_dir): {None}, str(gpt2_ref_dir): {"main"}}
    meta = read_metadata(tmp_path / "shard" / "tokens.parquet")
    assert meta["ref_revision"] == "main" and "revision" not in meta
