"""Shared prefixes fed once: the plan by hand, and the scores with sharing against those without, in every mode."""

import json
import os
import random
import shlex
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import interrupt_after, reference_scores, reference_sequence, sample_texts
from test_engine import _LargestVocabTensor, vocab_in_chunks
from test_response import TEMPLATE, _with_chat_template
from test_resume import _assert_same_results
from typer.testing import CliRunner

from scorecli.base.faults import FAULT_ENV
from scorecli.cli import app
from scorecli.engine.head import output_head
from scorecli.engine.prefix import SharedPrefix, plan_prefixes
from scorecli.engine.scorer import CACHED_WEIGHT, ScoreProgress, Scorer, ScoringInterrupted
from scorecli.inputs.records import Record

TOL = 1e-4
FLOATS = ("logprob", "entropy", "top_logprobs", "ref_logprob", "ref_entropy", "kl", "reverse_kl")
runner = CliRunner()
WORDS = sample_texts()


def _seqs(*rows):
    return [np.array(r, dtype=np.int32) for r in rows]


# The plan, by hand


def test_plan_groups_the_start_that_saves_most():
    start = list(range(1, 11))
    seqs = _seqs(
        [*start, 20, 21],  # 0
        [*start, 30],  # 1
        start,  # 2: a prefix of 0 and 1
        [*start, 20, 21],  # 3: the same as 0
        [*start[:5], 99, 98, 97],  # 4: shares only 5 tokens with the others
        [7, 8, 9, 10, 11, 12],  # 5: shares nothing
    )
    # All of 0-4 share 5 tokens (saving 4 x 4); 0-3 share 10 (saving 3 x 9); 0 and 3 share 12 (saving 1 x 11).
    assert plan_prefixes(seqs, 4) == [SharedPrefix(9, (0, 1, 2, 3))]
    assert plan_prefixes(seqs, 11) == [SharedPrefix(11, (0, 3))]
    assert plan_prefixes(seqs, 13) == []
    # The plan depends on the sequences, not on their order
    order = list(range(len(seqs)))
    random.Random(0).shuffle(order)
    [group] = plan_prefixes([seqs[i] for i in order], 4)
    assert group.length == 9 and sorted(order[i] for i in group.members) == [0, 1, 2, 3]


def test_plan_splits_a_shared_system_prompt_into_its_questions_where_that_saves_more():
    system, questions = [1, 2, 3, 4, 5, 6], [[100 + 20 * q + t for t in range(20)] for q in range(2)]
    seqs = _seqs(*([*system, *questions[q], 50 + r] for q in range(2) for r in range(4)))
    # One group at the system prompt saves 7 x 5 = 35 tokens; one per question saves 2 x 3 x 25 = 150.
    assert plan_prefixes(seqs, 4) == [SharedPrefix(25, (0, 1, 2, 3)), SharedPrefix(25, (4, 5, 6, 7))]
    # With a single response per question, only the system prompt is shared.
    assert plan_prefixes(_seqs(*(s for s in seqs[::4])), 4) == [SharedPrefix(5, (0, 1))]


def test_fed_tokens_of_a_group():
    group = SharedPrefix(9, (0, 2))
    assert group.fed([12, 99, 10]) == 9 + (12 - 1 - 9) + (10 - 1 - 9)


# Scores with sharing against scores without


def _grpo(n_prompts=3, n_responses=4, seed=0):
    """Prompt/response records: each prompt (several sample sentences) with several responses."""
    rng = random.Random(seed)
    records = []
    for p in range(n_prompts):
        prompt = " ".join(rng.sample(WORDS, 3)) + f"\nQuestion {p}: what happens next?\nAnswer:"
        for _ in range(n_responses):
            response = " " + rng.choice(WORDS)
            records.append(Record(len(records), prompt + response, spans=((len(prompt), len(prompt + response)),)))
    return records


def _edge_cases():
    """Plain texts: identical ones, one that is the start of another, partly shared ones, and unrelated ones."""
    base = " ".join(WORDS[:3])
    return [
        Record(i, t)
        for i, t in enumerate([base, base, base + " And then more.", base[: len(base) // 2], WORDS[5], "", "a"])
    ]


def _compare(loaded, records, min_shared=4, **options):
    """Score with and without sharing; check sharing spared tokens and changed no number beyond TOL."""
    progress = []
    shared = list(
        Scorer(loaded.model, loaded.tokenizer, min_shared_prefix=min_shared, **options).score_records(
            records, progress=progress.append
        )
    )
    plain = Scorer(loaded.model, loaded.tokenizer, prefix_sharing=False, **options).score_records(records)
    assert progress[-1].tokens_shared > 0  # sharing did happen
    for a, b in zip(shared, plain, strict=True):
        assert a.doc == b.doc and a.token_ids.tolist() == b.token_ids.tolist()
        assert a.positions.tolist() == b.positions.tolist() and a.is_response.tolist() == b.is_response.tolist()
        assert a.stats.keys() == b.stats.keys()
        for c in a.stats:
            if c in FLOATS:
                assert np.abs(a.stats[c] - b.stats[c]).max(initial=0) <= TOL, c
            elif c != "top_tokens":
                _assert_equal_but_near_ties(a.stats[c], b.stats[c], c)
    return shared, progress[-1]


def _assert_equal_but_near_ties(a: np.ndarray, b: np.ndarray, column: str) -> None:
    """Integer columns (rank, top_ids) agree, but for a rare near-tie that float32 rounding within TOL may swap."""
    differ = (a != b).reshape(len(a), -1).any(axis=1) if len(a) else np.zeros(0, dtype=bool)
    assert differ.sum() <= max(1, len(a) // 100), column
    if column == "rank":
        assert np.abs(a.astype(np.int64) - b).max(initial=0) <= 2, column


def test_plain_texts(tiny):
    records = [Record(r.doc, r.text) for r in _grpo()] + [Record(100 + r.doc, r.text) for r in _edge_cases()]
    scores, state = _compare(tiny, records, batch_tokens=128)
    assert state.tokens_fed + state.tokens_shared == sum(len(s.token_ids) for s in scores)  # BOS + all, one window
    for score, record in zip(scores[-7:], records[-7:]):  # and against the plain reference, one text at a time
        ref_lp, _ = reference_scores(tiny.model, tiny.tokenizer, record.text)
        assert np.abs(score.logprobs - ref_lp.numpy()).max(initial=0) <= TOL


@pytest.mark.parametrize("all_tokens", [False, True])
def test_prompt_and_response(tiny, all_tokens):
    _compare(tiny, _grpo(), all_tokens=all_tokens, batch_tokens=256)


def _spy_groups(monkeypatch):
    """Record each shared group the engine scores: its member windows, its shared length, their first targets."""
    groups = []
    original = Scorer._score_shared

    def spy(self, shared, encoded):
        for group, length in shared:
            groups.append((list(group), length, [int(encoded[w.doc].targets.argmax()) for w in group]))
        return original(self, shared, encoded)

    monkeypatch.setattr(Scorer, "_score_shared", spy)
    return groups


def test_windows_and_a_shared_start_longer_than_a_window(tiny, monkeypatch):
    long = " ".join(WORDS)
    texts = [long + " The end.", long + " Another end.", long[:300] + " cut short", WORDS[2], WORDS[2] + " more"]
    records = [Record(i, t) for i, t in enumerate(texts)]
    groups = _spy_groups(monkeypatch)
    scores, _ = _compare(tiny, records, max_length=48, stride=16, batch_tokens=96)
    assert scores[0].n_tokens > 48  # scored in several windows
    # A shared start lies within each member's window, never across its edge, even where the documents
    # share far more than a window: then whole windows (48 tokens, 47 fed) are shared, none beyond.
    assert all(length + 1 <= w.end - w.begin <= 48 for members, length, _ in groups for w in members)
    assert max(length for _, length, _ in groups) == 47
    assert any(w.begin > 0 for members, _, _ in groups for w in members)  # later windows share their own starts


def _chats():
    """Chats opening with one system prompt, two user turns among them, an answer each (one repeated)."""
    system = ("system", " ".join(WORDS[:2]))
    chats = [(system, ("user", WORDS[3 + i % 2]), ("assistant", WORDS[6 + i])) for i in range(6)]
    return [Record(i, "", messages=m) for i, m in enumerate([*chats, chats[0]])]


@pytest.mark.parametrize("all_tokens", [False, True])
@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_chats(style, all_tokens, request, tmp_path):
    from scorecli.engine.models import load_model

    folder = request.getfixturevalue(f"{style}_dir")
    loaded = load_model(str(_with_chat_template(folder, tmp_path / "model")), device="cpu")
    _compare(loaded, _chats(), roles=("user", "assistant"), all_tokens=all_tokens)


def test_prompts_sharing_only_their_start_identical_records_and_one_the_start_of_another(tiny, monkeypatch):
    """Prompt/response records whose prompts share an instruction but not their question, and edge cases."""
    instruction = " ".join(WORDS[:2]) + "\n"
    records = []
    for q in range(5):
        prompt = instruction + f"Question {q}: {WORDS[4 + q]}\nAnswer:"
        for r in range(1 if q < 4 else 3):  # most questions have one response: they share the instruction only
            records.append((prompt, " " + WORDS[10 + r]))
    records += [records[-1], (records[-1][0], records[-1][1] + " And more.")]  # identical; one continues another
    records.append((instruction, " " + WORDS[15]))  # the instruction alone as a prompt
    records = [Record(i, p + r, spans=((len(p), len(p + r)),)) for i, (p, r) in enumerate(records)]
    groups = _spy_groups(monkeypatch)
    _compare(tiny, records, batch_tokens=512)
    # A group shares only part of its members' prompts: its shared tokens end before their first scored one
    assert any(sum(length + 1 < first for first in firsts) >= 2 for _, length, firsts in groups)
    # The identical records and the one continuing them are scored from one shared start
    assert any({6, 7, 8} <= {w.doc for w in members} for members, _, _ in groups)


def test_reference_model_and_top_k(tiny_pair):
    model, ref = tiny_pair
    _compare(model, _grpo(), ref_model=ref.model, top_k=3, batch_tokens=256)


def test_expanded_cache_stays_within_the_token_budget(tiny, monkeypatch):
    """Each continuation batch holds rows x (fed + cached / CACHED_WEIGHT) tokens within the budget."""
    head = output_head(tiny.model)
    calls = []
    original = head.cached_states

    def spy(input_ids, past_key_values=None, position_ids=None, attention_mask=None):
        cached = 0 if past_key_values is None else past_key_values.get_seq_length()
        calls.append((input_ids.shape[0], cached, input_ids.shape[1]))
        return original(input_ids, past_key_values, position_ids, attention_mask)

    monkeypatch.setattr(head, "cached_states", spy)
    _compare(tiny, _grpo(n_prompts=2, n_responses=8), batch_tokens=1000, workers=1)
    continued = [(rows, cached, fed) for rows, cached, fed in calls if cached]
    assert continued and max(rows for rows, _, _ in continued) > 1  # the cache was expanded
    assert all(rows * (fed + cached // CACHED_WEIGHT) <= 1000 or rows == 1 for rows, cached, fed in continued)


def test_interrupted_and_resumed_with_sharing_is_bit_for_bit(tiny):
    records = _grpo(n_prompts=4, n_responses=4) + [Record(16 + r.doc, r.text) for r in _edge_cases()]
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=96, min_shared_prefix=4, workers=1)
    _assert_resumed_bit_for_bit(scorer, records, interrupt_after(4))


def _assert_resumed_bit_for_bit(scorer: Scorer, records: list[Record], interrupt: object) -> None:
    """Scoring interrupted by `interrupt`, then resumed from what it finished, equals scoring straight through."""
    [straight] = list(scorer.score_buffers(records))
    with pytest.raises(ScoringInterrupted) as caught:
        list(scorer.score_buffers(records, progress=interrupt))
    done = {d.doc: d for d in caught.value.finished}
    assert 0 < len(done) < len(records)
    [resumed] = list(scorer.score_buffers(records, done=done))
    for a, b in zip(straight, resumed, strict=True):
        assert a.doc == b.doc and a.stats.keys() == b.stats.keys()
        assert all(np.array_equal(a.stats[c], b.stats[c]) for c in a.stats)


def test_cli_words_flags_metadata_and_summary(gpt2_dir, tmp_path):
    path = tmp_path / "grpo.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in _grpo():
            start, end = r.spans[0]
            f.write(json.dumps({"prompt": r.text[:start], "response": r.text[start:end]}) + "\n")
    common = [str(path), "-m", str(gpt2_dir), "--prompt-field", "prompt", "--response-field", "response", "--words"]
    on = runner.invoke(app, ["score", *common, "-o", str(tmp_path / "on"), "--min-shared-prefix", "8"])
    off = runner.invoke(app, ["score", *common, "-o", str(tmp_path / "off"), "--no-prefix-sharing"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    assert "tokens fed" in on.stderr and "sharing saved" in on.stderr and "sharing saved" not in off.stderr
    for name, column in (("tokens", "logprob"), ("words", "surprisal"), ("sequences", "mean_logprob")):
        a, b = (pd.read_parquet(tmp_path / d / f"{name}.parquet") for d in ("on", "off"))
        assert len(a) == len(b) and np.abs(a[column] - b[column]).max() <= TOL, name
    summaries = {d: json.loads((tmp_path / d / "summary.json").read_text()) for d in ("on", "off")}
    on_s, off_s = summaries["on"]["summary"], summaries["off"]["summary"]
    assert on_s["fed_tokens"] + on_s["shared_tokens"] == off_s["fed_tokens"] and off_s["shared_tokens"] == 0
    assert on_s["shared_tokens"] > 0
    assert summaries["on"]["metadata"]["prefix_sharing"].startswith("on (starts of at least 8 tokens")
    assert summaries["off"]["metadata"]["prefix_sharing"] == "off"
    bad = runner.invoke(app, ["score", *common, "-o", str(tmp_path / "bad"), "--min-shared-prefix", "1"])
    assert bad.exit_code == 2 and "--min-shared-prefix must be at least 2, not 1" in bad.stderr


@pytest.mark.realmodel
def test_smollm_prompt_response_and_few_shot(smollm):
    _compare(smollm, _grpo(n_prompts=2, n_responses=3), min_shared=32, batch_tokens=512)
    preamble = "\n".join(WORDS[:4]) + "\n"
    records = [Record(i, preamble + f"Q: {WORDS[10 + i]}\nA:") for i in range(4)]
    scores, state = _compare(smollm, records, min_shared=32, batch_tokens=512)
    assert state.tokens_shared > 3 * 32
    for score, record in zip(scores, records):
        ref_lp, ref_ent = reference_scores(smollm.model, smollm.tokenizer, record.text)
        assert np.abs(score.logprobs - ref_lp.numpy()).max() <= TOL
        assert np.abs(score.entropies - ref_ent.numpy()).max() <= TOL


def test_a_cache_that_cannot_be_copied_to_rows_is_scored_apart(tiny, monkeypatch):
    """Models whose cache holds more than keys and values (recurrent states, sliding windows) are not shared."""
    import scorecli.engine.scorer

    monkeypatch.setattr(scorecli.engine.scorer, "_plain_cache", lambda cache: False)
    progress = []
    records = _grpo()
    scorer = Scorer(tiny.model, tiny.tokenizer, min_shared_prefix=4)
    shared = list(scorer.score_records(records, progress=progress.append))
    plain = Scorer(tiny.model, tiny.tokenizer, prefix_sharing=False).score_records(records)
    assert progress[-1].tokens_shared == 0 and progress[-1].tokens_fed > 0
    for a, b in zip(shared, plain, strict=True):
        assert np.abs(a.logprobs - b.logprobs).max(initial=0) <= TOL


def test_a_base_model_replaced_for_plain_batches_leaves_the_shared_path_on_the_model_itself(tiny):
    """A compiled base (`--compile`) serves batches without a cache; shared prefixes run the model's own base."""
    scorer = Scorer(tiny.model, tiny.tokenizer, min_shared_prefix=4)
    calls = []
    base = scorer.head.base

    def wrapped(**kwargs):
        calls.append(kwargs.get("use_cache"))
        return base(**kwargs)

    scorer.head = scorer.head.with_base(wrapped)
    progress = []
    records = _grpo() + [Record(99, "Something else entirely.")]
    shared = list(scorer.score_records(records, progress=progress.append))
    plain = Scorer(tiny.model, tiny.tokenizer, prefix_sharing=False).score_records(records)
    assert progress[-1].tokens_shared > 0 and calls == [False]  # the one document that shares nothing
    for a, b in zip(shared, plain, strict=True):
        assert np.abs(a.logprobs - b.logprobs).max(initial=0) <= TOL


def test_no_batch_by_seq_by_vocab_tensor_on_the_sharing_path(tiny, monkeypatch):
    """The shared start's pass and the continuations after its cache keep vocabulary-wide tensors to one chunk."""
    head = output_head(tiny.model)
    monkeypatch.setattr(head, "chunk_rows", 8)
    progress = []
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=4096, min_shared_prefix=4, workers=1)
    chunk = vocab_in_chunks(head.vocab_size, monkeypatch)
    with _LargestVocabTensor(head.vocab_size, chunk) as probe:  # modes are per thread: one worker
        scores = list(scorer.score_records(_grpo(n_prompts=2, n_responses=8), progress=progress.append))
    assert progress[-1].tokens_shared > 200 and sum(s.n_tokens for s in scores) > 100
    assert 0 < probe.largest <= 8 * chunk


def test_compiled_with_sharing_equals_eager_and_compiles_nothing_per_prefix_length(
    llama_dir, tmp_path, monkeypatch, inductor_in_process
):
    """With --compile, shared starts of many lengths add no compiled graph, and scores equal eager ones."""
    from torch._dynamo.utils import counters

    from scorecli.engine.models import load_model

    monkeypatch.setenv("SCORECLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    loaded = load_model(str(llama_dir), device="cpu", dtype="float32")
    rng = random.Random(1)

    def records(stem):
        """Prompts of many lengths, each with a few responses; then the same documents that share nothing."""
        out = []
        for p in range(6):
            prompt = " ".join(WORDS[p : p + 1 + p % 3]) + f"\n{stem}{p}:"
            for r in range(3):
                response = " " + rng.choice(WORDS)[: 20 + 15 * r]
                out.append(Record(len(out), prompt + response, spans=((len(prompt), len(prompt + response)),)))
        return out + [Record(len(out) + i, f"{i} " + WORDS[12 + i][: 10 + 9 * i]) for i in range(6)]

    counters.clear()
    scorer = Scorer(loaded.model, loaded.tokenizer, compile="on", min_shared_prefix=4, batch_tokens=256, workers=1)
    eager = Scorer(loaded.model, loaded.tokenizer, prefix_sharing=False, batch_tokens=256, workers=1)
    assert scorer.metadata["compile"] == "inductor (dynamic shapes, decoder layers)"
    compiles = []
    for stem in ("Q", "A longer question, number "):  # other prompts: other shared lengths, the same plain batches
        batch = records(stem)
        progress = []
        compiled_scores = list(scorer.score_records(batch, progress=progress.append))
        compiles.append(counters["stats"]["unique_graphs"])
        assert progress[-1].tokens_shared > 0
        for a, b in zip(compiled_scores, eager.score_records(batch), strict=True):
            assert a.token_ids.tolist() == b.token_ids.tolist()
            assert np.abs(a.logprobs - b.logprobs).max(initial=0) <= TOL
            assert np.abs(a.entropies - b.entropies).max(initial=0) <= TOL
    # A handful of graphs, and none for the second set's new shared lengths (shared starts run the eager model)
    assert 0 < compiles[0] <= 4 and compiles[1] == compiles[0]


@pytest.mark.realmodel
@pytest.mark.parametrize("mode", ["windows", "all_tokens", "chats", "ref_model", "resume"])
def test_smollm_modes(smollm, mode):
    """SmolLM2 with and without sharing, each mode on a few short records (the tiny models cover the rest)."""
    import copy
    import dataclasses

    preamble = " ".join(WORDS[:2]) + "\n"
    plain = [Record(i, preamble + f"Q: {WORDS[10 + i]}") for i in range(3)]
    if mode == "windows":  # the preamble (over 64 tokens) is longer than a window
        _compare(smollm, plain, min_shared=8, max_length=64, stride=32, batch_tokens=256)
    elif mode == "all_tokens":
        _compare(smollm, _grpo(n_prompts=1, n_responses=3), min_shared=32, all_tokens=True, batch_tokens=512)
    elif mode == "chats":
        tokenizer = copy.deepcopy(smollm.tokenizer)
        tokenizer.chat_template = TEMPLATE
        loaded = dataclasses.replace(smollm, tokenizer=tokenizer)
        _compare(loaded, _chats()[:4], min_shared=8, roles=("user", "assistant"))
    elif mode == "ref_model":  # the same model as its own reference: KL 0, both share the start
        shared, _ = _compare(smollm, plain, min_shared=32, ref_model=smollm.model, batch_tokens=512)
        assert all(np.abs(s.stats["kl"]).max() <= TOL for s in shared)
    else:
        scorer = Scorer(smollm.model, smollm.tokenizer, batch_tokens=256, min_shared_prefix=8, workers=1)
        records = plain + [Record(3, WORDS[16]), Record(4, WORDS[17])]
        _assert_resumed_bit_for_bit(scorer, records, interrupt_after(2))


@pytest.mark.parametrize("where", ["first batch", "first part saved"])
def test_ctrl_c_then_resume_with_sharing_equals_an_uninterrupted_run_bit_for_bit(
    gpt2_dir, tmp_path, where, forked_scorecli
):
    """SIGINT sent by an injected fault (no timing): mid-buffer after a shared group, or as a part is saved."""
    data = tmp_path / "grpo.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for r in _grpo(n_prompts=24, n_responses=4):
            start, end = r.spans[0]
            f.write(json.dumps({"prompt": r.text[:start], "response": r.text[start:end]}) + "\n")
    args = [str(data), "-m", str(gpt2_dir), "--prompt-field", "prompt", "--response-field", "response"]
    args += ["--batch-tokens", "64", "--words", "-q"]
    hook = {FAULT_ENV: "batch" if where == "first batch" else "part-written"}
    out = tmp_path / "o"
    proc = subprocess.run(
        [forked_scorecli, "score", *args, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **hook},
    )
    assert proc.returncode == 130, proc.stderr
    assert not (out / "tokens.parquet").exists()
    said = proc.stderr.strip().splitlines()
    assert said[0].startswith("scorecli: interrupted after ")
    command = shlex.split(said[-1])
    assert command[0] == "scorecli" and command[-1] == "--resume"
    resumed = runner.invoke(app, command[1:])  # in this process: the interrupted one was real
    assert resumed.exit_code == 0, resumed.output
    straight = runner.invoke(app, ["score", *args, "-o", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output
    _assert_same_results(out, tmp_path / "straight")
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["shared_tokens"] > 0 and summary["sessions"] == 2


# Many groups scored together: prefixes of several groups in one padded pass, their continuations in shared passes


def _questions(vocab: int, n: int = 12, seed: int = 0):
    """Token sequences as lm-eval asks for them: questions (contexts of many lengths) with 1-5 choices of 1-6 tokens.

    Returns the sequences, each one's first scored position, and the unshared sequences mixed in (their indices).
    """
    rng = random.Random(seed)
    seqs, first, alone = [], [], []
    for q in range(n):
        context = [rng.randrange(2, vocab) for _ in range(6 + (q * 7) % 31)]
        for _ in range(1 + q % 5):  # a question of one choice shares with nothing
            choice = [rng.randrange(2, vocab) for _ in range(rng.randint(1, 6))]
            seqs.append(context + choice)
            first.append(len(context))
        if q % 3 == 0:
            alone.append(len(seqs))
            seqs.append([rng.randrange(2, vocab) for _ in range(rng.randint(2, 20))])
            first.append(rng.randint(1, len(seqs[-1]) - 1))
    return seqs, first, alone


def _spy_tasks(monkeypatch):
    """Record the prefix lengths of the groups of each shared task the engine scores."""
    tasks = []
    original = Scorer._score_shared

    def spy(self, shared, encoded):
        tasks.append([length for _, length in shared])
        return original(self, shared, encoded)

    monkeypatch.setattr(Scorer, "_score_shared", spy)
    return tasks


def _assert_sequences_equal_the_reference(model, seqs, first, scores):
    """Each sequence's log-probs and entropies from `first` on equal the plain reference, one sequence at a time."""
    for seq, start, score in zip(seqs, first, scores, strict=True):
        ref_lp, ref_ent = reference_sequence(model, seq)
        assert len(score["logprob"]) == len(seq) - start
        assert np.abs(score["logprob"] - ref_lp[start - 1 :].numpy()).max() <= TOL
        assert np.abs(score["entropy"] - ref_ent[start - 1 :].numpy()).max() <= TOL


@pytest.mark.parametrize("batch_tokens", [48, 4096])
def test_many_groups_scored_together_equal_the_plain_reference(tiny, monkeypatch, batch_tokens):
    seqs, first, alone = _questions(len(tiny.tokenizer))
    tasks = _spy_tasks(monkeypatch)
    state = ScoreProgress()
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=batch_tokens, min_shared_prefix=4, workers=1)
    scores = scorer.score_sequences(seqs, first, state)
    _assert_sequences_equal_the_reference(tiny.model, seqs, first, scores)
    # Tokens fed: each group's start once, then every continuation (the plan's, whatever the batches)
    groups = plan_prefixes([np.array(s) for s in seqs], 4)
    lengths = [len(s) for s in seqs]
    grouped = {i for g in groups for i in g.members}
    assert not grouped & set(alone) and len(groups) == sum(1 + q % 5 > 1 for q in range(12))
    fed = sum(g.fed(lengths) for g in groups) + sum(n - 1 for i, n in enumerate(lengths) if i not in grouped)
    assert (state.tokens_fed, state.tokens_shared) == (fed, sum(n - 1 for n in lengths) - fed)
    assert state.tokens_done == sum(len(s) - f for s, f in zip(seqs, first)) and state.docs_done == len(seqs)
    assert sorted(n for t in tasks for n in t) == sorted(g.length for g in groups)
    if batch_tokens == 4096:  # every group in a few tasks, prefixes of many lengths in one pass
        assert max(len(t) for t in tasks) >= 4 and max(len(set(t)) for t in tasks) >= 4
    else:  # padded prefixes within the budget, unless alone
        assert len(tasks) > 2 and all(len(t) * max(t) <= batch_tokens for t in tasks if len(t) > 1)
        assert any(len(t) > 1 for t in tasks)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_many_groups_with_eager_attention(style, request):
    """The mask over cached and new positions gives the same scores under eager attention as under SDPA."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(f"{style}_dir")
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    seqs, first, _ = _questions(len(tokenizer), n=8, seed=1)
    scorer = Scorer(model, tokenizer, batch_tokens=256, min_shared_prefix=4, workers=1)
    assert model.config._attn_implementation == "eager"
    _assert_sequences_equal_the_reference(model, seqs, first, scorer.score_sequences(seqs, first))


def _few_shot(n=10, seed=0):
    """Prompt/response records: questions after preambles of 1-4 sample sentences, 1-4 responses each, and others."""
    rng = random.Random(seed)
    records = []
    for q in range(n):
        prompt = " ".join(w[:20] for w in rng.sample(WORDS, 1 + q % 4)) + f"\nQuestion {q}: which?\nAnswer:"
        for r in range(1 + (q * 3) % 4):
            response = " " + rng.choice(WORDS)[: 5 + 7 * r]
            records.append(Record(len(records), prompt + response, spans=((len(prompt), len(prompt + response)),)))
        if q % 4 == 0:
            records.append(Record(len(records), rng.choice(WORDS)))
    return records


def test_many_groups_with_a_reference_model_and_top_k(tiny_pair, monkeypatch):
    model, ref = tiny_pair
    tasks = _spy_tasks(monkeypatch)
    _compare(model, _few_shot(), ref_model=ref.model, top_k=3, batch_tokens=2048, workers=1)
    assert any(len(set(t)) > 1 for t in tasks)  # groups of other prefix lengths scored together


def test_many_groups_in_prompt_response_records_and_the_plan(tiny, monkeypatch):
    tasks = _spy_tasks(monkeypatch)
    records = _few_shot(n=14, seed=2)
    scores, state = _compare(tiny, records, batch_tokens=256)
    assert any(len(set(t)) > 1 for t in tasks)
    for score, record in zip(scores, records):  # the responses against the plain reference
        ref_lp, _ = reference_scores(tiny.model, tiny.tokenizer, record.text)
        assert np.abs(score.logprobs - ref_lp[-len(score.logprobs) :].numpy()).max(initial=0) <= TOL
    # The plan counts the passes that run: prefixes of several groups in one, padded within the budget
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=256, min_shared_prefix=4)
    passes = [p for plan in scorer.plan_buffers(records) for task in plan.tasks for p in task]
    assert sum(p.tokens for p in passes) == state.tokens_fed
    prefixes = [p for task in (t for plan in scorer.plan_buffers(records) for t in plan.tasks) for p in task[:1]]
    assert any(p.rows > 1 for p in prefixes if not p.cached)
    assert all(p.padded <= 256 for p in passes if p.rows > 1 and not p.cached)
    assert all(p.rows * (p.width + p.cached // CACHED_WEIGHT) <= 256 or p.rows == 1 for p in passes if p.cached)


@pytest.mark.realmodel
def test_smollm_many_questions_scored_together(smollm):
    seqs, first, _ = _questions(smollm.tokenizer.vocab_size, n=6, seed=3)
    scorer = Scorer(smollm.model, smollm.tokenizer, batch_tokens=512, min_shared_prefix=4, workers=1)
    _assert_sequences_equal_the_reference(smollm.model, seqs, first, scorer.score_sequences(seqs, first))
