"""Prompt/response and chat scoring: only response tokens count, checked against masks built by hand."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import bos_id, reference_sequence
from typer.testing import CliRunner

from scorecli.cli import app
from scorecli.engine.chat import render_chat
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import Record

TOL = 1e-4
PAIRS = [
    ("Question: what colour is the sky?\nAnswer:", " Blue, on a clear day."),
    ("Translate to French: cat\n", "chat"),
    ("The riv", "er widened near the old mill."),  # the boundary falls inside a word
    ("An empty response:", ""),
]


def _records(pairs):
    return [Record(i, p + r, spans=((len(p), len(p + r)),)) for i, (p, r) in enumerate(pairs)]


def _reference(loaded, prompt, response):
    """Full-vocabulary reference of prompt + response; the response mask built by hand from offsets."""
    enc = loaded.tokenizer(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    seq = [bos_id(loaded.tokenizer)] + enc["input_ids"]
    lp, ent = reference_sequence(loaded.model, seq)
    mask = np.array([end > len(prompt) for _, end in enc["offset_mapping"]], dtype=bool)
    return lp.numpy(), ent.numpy(), mask


@pytest.mark.parametrize("all_tokens", [False, True])
def test_only_response_tokens_count(tiny, all_tokens):
    scorer = Scorer(tiny.model, tiny.tokenizer, all_tokens=all_tokens, batch_tokens=64)
    for score, (prompt, response) in zip(scorer.score_records(_records(PAIRS)), PAIRS):
        lp, ent, mask = _reference(tiny, prompt, response)
        rows = np.ones_like(mask) if all_tokens else mask
        assert score.n_rows == rows.sum() and score.is_response.tolist() == mask[rows].tolist()
        assert np.abs(score.logprobs - lp[rows]).max(initial=0) <= TOL
        assert np.abs(score.entropies - ent[rows]).max(initial=0) <= TOL
        assert score.n_tokens == mask.sum()
        assert score.sum_logprob == pytest.approx(lp[mask].astype(np.float64).sum(), abs=1e-3)
        assert score.n_bytes == len(response.encode())
        if not response:
            assert score.sequence_row()["perplexity"] is None


def test_a_token_straddling_the_boundary_is_response(tiny):
    prompt, response = PAIRS[2]
    [score] = Scorer(tiny.model, tiny.tokenizer).score_records(_records([PAIRS[2]]))
    assert score.starts[0] < len(prompt) < score.ends[0]  # "riv|er": the first response row starts in the prompt
    assert score.is_response.all()


def test_smollm_prompt_response_matches_reference(smollm):
    pairs = PAIRS[:3]
    scores = list(Scorer(smollm.model, smollm.tokenizer).score_records(_records(pairs)))
    for score, (prompt, response) in zip(scores, pairs):
        lp, _, mask = _reference(smollm, prompt, response)
        assert np.abs(score.logprobs - lp[mask]).max() <= TOL


CHAT = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is a river?"},
    {"role": "assistant", "content": "A river is water that flows across land to the sea."},
    {"role": "user", "content": "And a lake?"},
    {"role": "assistant", "content": "  A lake is water that stays in one place.  "},
]


def test_render_chat_finds_each_turn(smollm):
    messages = tuple((m["role"], m["content"]) for m in CHAT)
    text, spans = render_chat(smollm.tokenizer, messages, roles=("assistant",))
    assert text == smollm.tokenizer.apply_chat_template(CHAT, tokenize=False)
    # SmolLM2's template keeps contents as they are (spaces included); others trim them, which is also found
    assert [text[a:b] for a, b in spans] == [CHAT[2]["content"], CHAT[4]["content"]]
    _, both = render_chat(smollm.tokenizer, messages, roles=("user", "assistant"))
    assert len(both) == 4


def test_smollm_chat_scores_assistant_turns_against_a_hand_built_mask(smollm):
    tok = smollm.tokenizer
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"][0] == tok.bos_token_id  # SmolLM2's template starts with its BOS: not doubled
    spans = []
    for turn in (CHAT[2], CHAT[4]):
        start = rendered.index(turn["content"])
        spans.append((start, start + len(turn["content"])))
    mask = np.array([any(s < b and e > a for a, b in spans) for s, e in enc["offset_mapping"]])[1:]
    lp, ent = reference_sequence(smollm.model, enc["input_ids"])
    messages = tuple((m["role"], m["content"]) for m in CHAT)
    [score] = Scorer(smollm.model, smollm.tokenizer).score_records([Record(0, "", messages=messages)])
    assert score.text == rendered and score.n_tokens == mask.sum() > 20
    assert np.abs(score.logprobs - lp.numpy()[mask]).max() <= TOL
    assert np.abs(score.entropies - ent.numpy()[mask]).max() <= TOL
    covered = {c for a, b in zip(score.starts, score.ends) for c in range(a, b)}
    assert all(set(range(a, b)) <= covered for a, b in spans)  # every content character is scored
    assert all(any(a < e and b > s for a, b in spans) for s, e in zip(score.starts, score.ends))


def test_cli_prompt_response_and_all_tokens(gpt2_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "q": p, "a": r}) + "\n" for i, (p, r) in enumerate(PAIRS)))
    runner = CliRunner()
    base = ["score", str(data), "-m", str(gpt2_dir), "--prompt-field", "q", "--response-field", "a"]
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(tmp_path / "r" / "tokens.parquet")
    seqs = pd.read_parquet(tmp_path / "r" / "sequences.parquet")
    assert tokens["is_response"].all() and seqs["n_tokens"].iloc[-1] == 0
    result = runner.invoke(app, [*base, "--all-tokens", "-o", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    every = pd.read_parquet(tmp_path / "all" / "tokens.parquet")
    assert (~every["is_response"]).sum() > 0 and every["is_response"].sum() == len(tokens)
    # prompt rows are written, never counted
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "all" / "sequences.parquet"), seqs)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["metadata"]["prompt_field"] == "q"


def test_cli_chat_needs_a_template(gpt2_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": CHAT}) + "\n")
    args = ["score", str(data), "-m", str(gpt2_dir), "--messages-field", "messages", "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4 and "chat template" in result.stderr


def test_render_chat_finds_trimmed_contents():
    class Trimming:
        """A template that trims contents, as Llama 3's does."""

        def apply_chat_template(self, messages, tokenize):
            return "".join(f"<{m['role']}>{m['content'].strip()}</{m['role']}>" for m in messages)

    text, spans = render_chat(Trimming(), (("user", " hi "), ("assistant", " hello there ")), roles=("assistant",))
    assert [text[a:b] for a, b in spans] == ["hello there"]


def test_a_reply_found_in_the_template_text_is_still_the_reply(smollm):
    # "a" appears in "<|im_start|>assistant" before the reply: a search for the content would land there
    text, [(start, end)] = render_chat(smollm.tokenizer, (("user", "Hi"), ("assistant", "a")))
    assert text[start:end] == "a" and text[start - len("assistant\n") : start] == "assistant\n"


TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"


def _with_chat_template(folder, target):
    """A copy of a tiny model folder whose tokenizer has a simple chat template."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(folder, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(target)
    return target


def test_roles_that_no_turn_has_are_a_usage_error(gpt2_dir, tmp_path):
    model = _with_chat_template(gpt2_dir, tmp_path / "model")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(3)))
    base = ["score", str(data), "-m", str(model), "--messages-field", "messages", "-q"]
    result = CliRunner().invoke(app, [*base, "--roles", "user", "-o", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(tmp_path / "ok" / "sequences.parquet")["n_tokens"].min() > 0
    result = CliRunner().invoke(app, [*base, "--roles", "wizard,bard", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    roles = ", ".join(sorted({m["role"] for m in CHAT}))
    assert result.stderr == (
        "scorecli: error: --roles bard, wizard: no conversation has a turn with these roles, so nothing was "
        f"scored (roles in the data: {roles})\n"
    )
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_responses_empty_in_every_record_are_a_usage_error(gpt2_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    base = ["score", str(data), "-m", str(gpt2_dir), "--prompt-field", "q", "--response-field", "a", "-q"]
    data.write_text("".join(json.dumps({"q": p, "a": ""}) + "\n" for p, _ in PAIRS))
    result = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "--response-field a: the response is empty in every record" in result.stderr
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    # One non-empty response is enough: the empty ones are scored as documents without tokens.
    data.write_text("".join(json.dumps({"q": p, "a": "" if i else " yes"}) + "\n" for i, (p, _) in enumerate(PAIRS)))
    result = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(tmp_path / "one" / "sequences.parquet")["n_tokens"].tolist()[1:] == [0] * 3
