"""Choices (--choices-field): each (context, choice) against the same pair scored as its own prompt/response record."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES, assert_same_results, reference_sequence
from typer.testing import CliRunner

import scorecli
from scorecli.cli import app
from scorecli.data.choices import NORMALISATIONS, margin, predict
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import Fields, Record, read_rows
from scorecli.runfolder.outputs import read_metadata

TOL = 1e-4  # nats per token
runner = CliRunner()
QUESTIONS = [
    ("Question: which season is the coldest?\nAnswer:", [" Winter", " Summer", " Spring", " Autumn"], 0),
    ("The river widened near the old", [" mill.", " mill", " bridge over the water.", " x"], " bridge over the water."),
    ("Pick a number:", ["1", "22", "333"], 2),
    ("", ["A sentence with no context at all.", "Sentences with no context at all."], 1),
]
PAIRS = [
    ("The cats on the mat are sleeping.", "The cats on the mat is sleeping."),
    ("Every child knows the song.", "Every child know the song."),
    ("He did not see anybody there.", "He did not saw anybody there."),
]


def _score(*args, env=None):
    return runner.invoke(app, ["score", *map(str, args)], env=env)


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    """Questions with choices and labels, the same pairs as prompt/response records, and the choices alone."""
    folder = tmp_path_factory.mktemp("questions")
    rows = [{"id": f"q{i}", "question": q, "choices": c, "label": label} for i, (q, c, label) in enumerate(QUESTIONS)]
    flat = [
        {"id": f"q{i}-{k}", "prompt": q, "response": c}
        for i, (q, cs, _) in enumerate(QUESTIONS)
        for k, c in enumerate(cs)
    ]
    alone = [{"id": f"q{i}-{k}", "text": c} for i, (_, cs, _) in enumerate(QUESTIONS) for k, c in enumerate(cs)]
    return _write(folder / "q.jsonl", rows), _write(folder / "flat.jsonl", flat), _write(folder / "alone.jsonl", alone)


def _best(scores):
    """The highest score's index, the lowest among ties, written out by hand."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def _labels():
    out = []
    for _, choices, label in QUESTIONS:
        out.append(label if isinstance(label, int) else choices.index(label))
    return out


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_choices_equal_each_pair_scored_as_a_prompt_response_record(model, questions, tmp_path, request):
    folder = request.getfixturevalue(f"{model}_dir")
    data, flat, alone = questions
    args = ["-m", folder, "--batch-tokens", 64]
    result = _score(
        data,
        *args,
        "--prompt-field",
        "question",
        "--choices-field",
        "choices",
        "--label-field",
        "label",
        "--unconditional",
        "-o",
        tmp_path / "c",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert (
        _score(
            flat, *args, "--prompt-field", "prompt", "--response-field", "response", "-o", tmp_path / "f", "-q"
        ).exit_code
        == 0
    )
    assert _score(alone, *args, "-o", tmp_path / "a", "-q").exit_code == 0
    choices = pd.read_parquet(tmp_path / "c" / "choices.parquet")
    ref = pd.read_parquet(tmp_path / "f" / "sequences.parquet")
    ref_tokens = pd.read_parquet(tmp_path / "f" / "tokens.parquet")
    uncond = pd.read_parquet(tmp_path / "a" / "sequences.parquet")
    texts = [c for _, cs, _ in QUESTIONS for c in cs]
    assert choices["doc"].tolist() == [i for i, (_, cs, _) in enumerate(QUESTIONS) for _ in cs]
    assert choices["choice"].tolist() == [k for _, cs, _ in QUESTIONS for k in range(len(cs))]
    assert choices["text"].tolist() == texts and choices["name"].isna().all()
    assert choices["n_tokens"].tolist() == ref["n_tokens"].tolist()
    n = choices["n_tokens"].to_numpy()
    assert np.all(np.abs(choices["sum_logprob"] - ref["sum_logprob"]) <= TOL * n)
    assert choices["n_chars"].tolist() == [len(t) for t in texts]
    assert choices["n_bytes"].tolist() == [len(t.encode()) for t in texts]
    s = choices["sum_logprob"].to_numpy()
    assert np.allclose(choices["mean_logprob"], s / n) and np.allclose(
        choices["logprob_per_char"], s / choices["n_chars"]
    )
    assert np.allclose(choices["logprob_per_byte"], s / choices["n_bytes"])
    # is_greedy: every token of the choice ranked first, from the prompt/response run's own token rows
    ranks = ref_tokens[ref_tokens["is_response"]].groupby("doc")["rank"].max()
    assert choices["is_greedy"].tolist() == [bool(ranks.get(i, 2) == 1) for i in range(len(texts))]
    # --unconditional: the choice after BOS alone, as a plain text
    assert np.all(np.abs(choices["unconditional_sum_logprob"] - uncond["sum_logprob"]) <= TOL * uncond["n_tokens"])
    assert np.allclose(choices["pmi"], choices["sum_logprob"] - choices["unconditional_sum_logprob"])
    # the tokens of a choice run are the prompt/response run's, with a choice column
    tokens = pd.read_parquet(tmp_path / "c" / "tokens.parquet")
    flat_choice = [k for _, cs, _ in QUESTIONS for k in range(len(cs))]
    assert tokens["choice"].tolist() == [flat_choice[d] for d in ref_tokens["doc"]]
    assert tokens["token_id"].tolist() == ref_tokens["token_id"].tolist()
    assert np.all(np.abs(tokens["logprob"].to_numpy() - ref_tokens["logprob"].to_numpy()) <= TOL)
    # sequences: one row per record, each normalisation's prediction and correctness, by hand
    seqs = pd.read_parquet(tmp_path / "c" / "sequences.parquet")
    assert seqs["n_choices"].tolist() == [len(cs) for _, cs, _ in QUESTIONS] and seqs["label"].tolist() == _labels()
    for doc, label in enumerate(_labels()):
        mine = choices[choices["doc"] == doc]
        for name, (column, _) in NORMALISATIONS.items():
            predicted = _best(mine[column].tolist())
            assert seqs[f"predicted_{name}"][doc] == predicted, (doc, name)
            assert seqs[f"correct_{name}"][doc] == (predicted == label)
        others = [v for k, v in enumerate(mine["sum_logprob"]) if k != label]
        assert seqs["margin"][doc] == pytest.approx(mine["sum_logprob"].iloc[label] - max(others))
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    figures, metadata = summary["summary"], summary["metadata"]
    for name, (_, lm_eval) in NORMALISATIONS.items():
        assert figures[f"accuracy_{name}"] == pytest.approx(seqs[f"correct_{name}"].mean())
        low, high = figures[f"accuracy_{name}_ci"]
        assert 0 <= low <= figures[f"accuracy_{name}"] <= high <= 1
        if lm_eval:
            assert figures[lm_eval] == figures[f"accuracy_{name}"]
    assert figures["choice_records"] == figures["labelled_records"] == len(QUESTIONS)
    assert metadata["choices_field"] == "choices" and metadata["label_field"] == "label"
    assert metadata["unconditional"] == "true" and metadata["model_fingerprint"]
    assert read_metadata(tmp_path / "c" / "choices.parquet")["choices_field"] == "choices"


def test_the_summary_shows_each_accuracy_beside_lm_evals_name(gpt2_dir, questions, tmp_path):
    data, _, _ = questions
    args = ["--prompt-field", "question", "--choices-field", "choices", "--label-field", "label", "--unconditional"]
    result = _score(data, "-m", gpt2_dir, *args, "-o", tmp_path / "c")
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "c" / "summary.json").read_text())["summary"]
    shown = runner.invoke(app, ["summary", str(tmp_path / "c")])
    assert shown.exit_code == 0, shown.output
    for text in (result.stderr, shown.output):
        assert f"choices: {len(QUESTIONS)} labelled records" in text
        for label, lm_eval, key in (("per character", "acc_norm", "per_char"), ("pmi", "acc_mutual_info", "pmi")):
            line = next(line for line in text.splitlines() if line.strip().startswith(label))
            assert lm_eval in line and f"{100 * figures[f'accuracy_{key}']:.3f}%" in line


def test_parquet_inputs_hold_choices_as_a_list_column(gpt2_dir, questions, tmp_path):
    import pyarrow as pa

    data, _, _ = questions
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    labels = _labels()
    table = pa.table(
        {"question": [r["question"] for r in rows], "choices": [r["choices"] for r in rows], "label": labels}
    )
    pq.write_table(table, tmp_path / "q.parquet")
    args = ["-m", gpt2_dir, "--prompt-field", "question", "--choices-field", "choices", "--label-field", "label", "-q"]
    assert _score(tmp_path / "q.parquet", *args, "-o", tmp_path / "p").exit_code == 0
    assert _score(data, *args, "-o", tmp_path / "j").exit_code == 0
    a, b = (pd.read_parquet(tmp_path / d / "choices.parquet") for d in ("p", "j"))
    assert a["sum_logprob"].tolist() == b["sum_logprob"].tolist() and a["text"].tolist() == b["text"].tolist()
    pq.write_table(table.set_column(1, "choices", pa.array(["x"] * len(rows))), tmp_path / "bad.parquet")
    refused = _score(tmp_path / "bad.parquet", *args, "-o", tmp_path / "x")
    assert refused.exit_code == 3 and "column 'choices' has type string, expected a list of strings" in refused.stderr


def test_token_rows_carry_their_choice(gpt2_dir, questions, tmp_path):
    data, _, _ = questions
    result = _score(
        data, "-m", gpt2_dir, "--prompt-field", "question", "--choices-field", "choices", "-o", tmp_path / "c", "-q"
    )
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(tmp_path / "c" / "tokens.parquet")
    choices = pd.read_parquet(tmp_path / "c" / "choices.parquet")
    counted = tokens.groupby(["doc", "choice"]).size()
    assert counted.tolist() == choices["n_tokens"].tolist()
    assert list(counted.index) == list(zip(choices["doc"], choices["choice"]))
    assert "label" in pq.read_schema(tmp_path / "c" / "sequences.parquet").names
    assert pd.read_parquet(tmp_path / "c" / "sequences.parquet")["label"].isna().all()


def test_minimal_pairs_without_context_are_plain_texts_and_fields_name_their_choices(gpt2_dir, tmp_path):
    data = _write(tmp_path / "pairs.jsonl", [{"good": g, "bad": b} for g, b in PAIRS])
    texts = _write(tmp_path / "texts.jsonl", [{"text": t} for pair in PAIRS for t in pair])
    result = _score(data, "-m", gpt2_dir, "--choices-field", "good,bad", "-o", tmp_path / "c", "-q")
    assert result.exit_code == 0, result.output
    assert _score(texts, "-m", gpt2_dir, "-o", tmp_path / "t", "-q").exit_code == 0
    choices = pd.read_parquet(tmp_path / "c" / "choices.parquet")
    plain = pd.read_parquet(tmp_path / "t" / "sequences.parquet")
    assert choices["name"].tolist() == ["good", "bad"] * len(PAIRS)
    assert np.all(np.abs(choices["sum_logprob"] - plain["sum_logprob"]) <= TOL * plain["n_tokens"])
    seqs = pd.read_parquet(tmp_path / "c" / "sequences.parquet")
    sums = choices["sum_logprob"].to_numpy().reshape(-1, 2)
    # without a label: the best choice's sum minus the other's
    assert np.allclose(seqs["margin"], np.abs(sums[:, 0] - sums[:, 1]))
    figures = json.loads((tmp_path / "c" / "summary.json").read_text())["summary"]
    assert figures["mean_margin"] == pytest.approx(np.abs(sums[:, 0] - sums[:, 1]).mean())
    assert figures["labelled_records"] == 0 and figures["accuracy_sum"] is None


def test_ties_go_to_the_lowest_index_and_margins_are_in_nats():
    assert predict(np.array([-2.0, -1.0, -1.0])) == 1
    assert predict(np.array([-1.0, np.nan, -1.0])) == 0
    assert predict(np.array([np.nan, np.nan])) is None
    assert margin(np.array([-1.0, -3.0, -2.5]), 2) == pytest.approx(-1.5)
    assert margin(np.array([-1.0, -3.0, -2.5]), None) == pytest.approx(1.5)
    assert margin(np.array([-1.0]), 0) is None


def test_identical_choices_tie_to_the_first_and_a_text_label_names_the_first(gpt2_dir):
    rows = [{"q": "Say it:", "choices": [" the same", " the same", " other words here"], "label": " the same"}]
    frame = scorecli.score(
        rows, str(gpt2_dir), prompt_field="q", choices_field="choices", label_field="label", device="cpu"
    )
    row = frame.iloc[0]
    assert row["label"] == 0
    choices = scorecli.score(
        rows, str(gpt2_dir), prompt_field="q", choices_field="choices", rows="choices", device="cpu"
    )
    s = choices["sum_logprob"].tolist()
    assert s[0] == s[1]  # the same tokens in the same batch
    assert row["predicted_sum"] == (0 if s[0] >= s[2] else 2)


def test_library_choice_rows_equal_the_run_folders(gpt2_dir, questions, tmp_path):
    data, _, _ = questions
    args = ["--prompt-field", "question", "--choices-field", "choices", "--label-field", "label"]
    assert _score(data, "-m", gpt2_dir, *args, "-o", tmp_path / "c", "-q").exit_code == 0
    kwargs = {"prompt_field": "question", "choices_field": "choices", "label_field": "label", "device": "cpu"}
    frame = scorecli.score(data, str(gpt2_dir), rows="choices", **kwargs)
    saved = pd.read_parquet(tmp_path / "c" / "choices.parquet")
    pd.testing.assert_frame_equal(frame, saved, check_exact=False, atol=1e-4)
    seqs = scorecli.score(data, str(gpt2_dir), **kwargs)
    saved = pd.read_parquet(tmp_path / "c" / "sequences.parquet")
    assert seqs.columns.tolist() == saved.columns.tolist()
    assert seqs["predicted_sum"].tolist() == saved["predicted_sum"].tolist()
    with pytest.raises(scorecli.UsageError, match="choices"):
        scorecli.score(data, str(gpt2_dir), rows="choices", device="cpu")


def test_with_a_reference_model_each_choice_has_its_reference_sum_and_log_ratio(
    gpt2_dir, gpt2_ref_dir, questions, tmp_path
):
    data, flat, _ = questions
    ref = ["--ref-model", gpt2_ref_dir, "--top-k", 3]
    assert (
        _score(
            data,
            "-m",
            gpt2_dir,
            *ref,
            "--prompt-field",
            "question",
            "--choices-field",
            "choices",
            "-o",
            tmp_path / "c",
            "-q",
        ).exit_code
        == 0
    )
    assert (
        _score(
            flat,
            "-m",
            gpt2_dir,
            *ref,
            "--prompt-field",
            "prompt",
            "--response-field",
            "response",
            "-o",
            tmp_path / "f",
            "-q",
        ).exit_code
        == 0
    )
    choices = pd.read_parquet(tmp_path / "c" / "choices.parquet")
    flat_rows = pd.read_parquet(tmp_path / "f" / "sequences.parquet")
    assert np.all(np.abs(choices["ref_sum_logprob"] - flat_rows["ref_sum_logprob"]) <= TOL * flat_rows["n_tokens"])
    assert np.allclose(choices["log_ratio"], choices["sum_logprob"] - choices["ref_sum_logprob"])
    tokens = pd.read_parquet(tmp_path / "c" / "tokens.parquet")
    flat_tokens = pd.read_parquet(tmp_path / "f" / "tokens.parquet")
    assert tokens["top_ids"].map(list).tolist() == flat_tokens["top_ids"].map(list).tolist()
    assert {"choice", "kl", "ref_logprob"} <= set(tokens.columns)


def test_words_and_kept_fields_compose(gpt2_dir, tmp_path):
    rows = [{"id": f"p{i}", "good": g, "bad": b, "topic": {"n": i}} for i, (g, b) in enumerate(PAIRS)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    texts = _write(tmp_path / "texts.jsonl", [{"text": t} for pair in PAIRS for t in pair])
    args = ["-m", gpt2_dir, "--words", "-q"]
    assert (
        _score(data, *args, "--choices-field", "good,bad", "--keep-fields", "topic", "-o", tmp_path / "c").exit_code
        == 0
    )
    assert _score(texts, *args, "-o", tmp_path / "t").exit_code == 0
    words = pd.read_parquet(tmp_path / "c" / "words.parquet")
    plain = pd.read_parquet(tmp_path / "t" / "words.parquet")
    assert words["choice"].tolist() == [d % 2 for d in plain["doc"]]
    assert words["text"].tolist() == plain["text"].tolist()
    assert np.allclose(words["surprisal"], plain["surprisal"], atol=1e-3)
    seqs = pd.read_parquet(tmp_path / "c" / "sequences.parquet")
    assert seqs["topic"].tolist() == [{"n": i} for i in range(len(PAIRS))] and seqs["id"].tolist() == ["p0", "p1", "p2"]
    refused = _score(data, *args, "--choices-field", "good,bad", "--keep-fields", "margin", "-o", tmp_path / "x")
    assert refused.exit_code == 2 and "margin" in refused.stderr


def test_json_lines_hold_a_record_with_its_choices(gpt2_dir, questions, tmp_path):
    data, _, _ = questions
    args = [data, "-m", gpt2_dir, "--prompt-field", "question", "--choices-field", "choices", "--label-field", "label"]
    assert _score(*args, "-o", tmp_path / "c", "-q").exit_code == 0
    streamed = _score(*args, "--out", "-", "--keep-fields", "question")
    assert streamed.exit_code == 0, streamed.output
    lines = [json.loads(line) for line in streamed.stdout.splitlines()]
    seqs = pd.read_parquet(tmp_path / "c" / "sequences.parquet")
    choices = pd.read_parquet(tmp_path / "c" / "choices.parquet")
    assert [line["doc"] for line in lines] == seqs["doc"].tolist()
    assert [line["predicted_sum"] for line in lines] == seqs["predicted_sum"].tolist()
    assert [line["question"] for line in lines] == [q for q, _, _ in QUESTIONS]
    assert [c["text"] for line in lines for c in line["choices"]] == choices["text"].tolist()
    got = [c["sum_logprob"] for line in lines for c in line["choices"]]
    assert np.allclose(got, choices["sum_logprob"], atol=1e-4)
    per_choice = _score(*args, "--out", "-", "--rows", "choices")
    assert [json.loads(line)["choice"] for line in per_choice.stdout.splitlines()] == choices["choice"].tolist()


BAD = [
    ({"q": "a", "label": 0}, "field 'choices' must be a non-empty array of choices (strings), got missing"),
    (
        {"q": "a", "choices": [], "label": 0},
        "field 'choices' must be a non-empty array of choices (strings), got an empty array",
    ),
    ({"q": "a", "choices": ["x", 3], "label": 0}, "field 'choices': choice 1 must be a string, got a number"),
    ({"q": "a", "choices": ["x", ""], "label": 0}, "field 'choices': choice 1 is empty"),
    ({"q": "a", "choices": ["x", "y"], "label": 2}, "field 'label': 2 is out of range (0 to 1)"),
    ({"q": "a", "choices": ["x", "y"], "label": "z"}, "field 'label': 'z' is none of the 2 choices"),
    ({"q": "a", "choices": ["x", "y"], "label": True}, "field 'label' must be a choice's index or text, got a boolean"),
]


def test_bad_records_are_one_line_naming_record_and_field(gpt2_dir, tmp_path):
    good = {"q": "Pick:", "choices": [" one", " two"], "label": 1}
    rows = [good] + [row for row, _ in BAD] + [good]
    data = _write(tmp_path / "bad.jsonl", rows)
    args = [data, "-m", gpt2_dir, "--prompt-field", "q", "--choices-field", "choices", "--label-field", "label", "-q"]
    stopped = _score(*args, "-o", tmp_path / "stop")
    assert stopped.exit_code == 3
    assert stopped.stderr.strip() == f"scorecli: error: {data}: line 2: {BAD[0][1]}"
    skipped = _score(*args, "-o", tmp_path / "skip", "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    errors = [json.loads(line) for line in (tmp_path / "skip" / "errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["reason"]) for e in errors] == [(i + 2, reason) for i, (_, reason) in enumerate(BAD)]
    assert pd.read_parquet(tmp_path / "skip" / "sequences.parquet")["doc"].tolist() == [0, len(BAD) + 1]


def test_options_that_cannot_go_together_are_usage_errors(gpt2_dir, questions, tmp_path):
    data, _, _ = questions
    cases = [
        (["--label-field", "label"], "--label-field goes with --choices-field"),
        (["--choices-field", "choices", "--unconditional", "--no-bos"], "--unconditional needs --bos"),
        (["--choices-field", "choices", "--text-field", "question"], "--text-field cannot be combined with --choices"),
        (["--choices-field", "a,,b"], "--choices-field must name one field"),
    ]
    for extra, said in cases:
        result = _score(data, "-m", gpt2_dir, *extra, "-o", tmp_path / "x")
        assert result.exit_code == 2 and said in result.stderr, (extra, result.stderr)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Enough records with choices for several read-ahead buffers at a small token budget."""
    rows = []
    for i in range(120):
        q, cs, label = QUESTIONS[i % 3]
        rows.append({"id": f"r{i}", "question": f"{i}. {q}", "choices": cs, "label": label})
    return _write(tmp_path_factory.mktemp("many") / "many.jsonl", rows)


RESULTS = ("tokens.parquet", "sequences.parquet", "choices.parquet")


def test_interrupted_and_resumed_equals_an_uninterrupted_run_bit_for_bit(gpt2_dir, many, tmp_path, forked_scorecli):
    args = [
        many,
        "-m",
        gpt2_dir,
        "--batch-tokens",
        64,
        "--prompt-field",
        "question",
        "--choices-field",
        "choices",
        "--label-field",
        "label",
        "--unconditional",
        "-q",
    ]
    assert _score(*args, "-o", tmp_path / "straight").exit_code == 0
    # Ctrl-C after a batch: the finished choices of the buffer in flight are kept, and not scored again
    stopped = _score(*args, "-o", tmp_path / "o", env={"SCORECLI_FAULT": "batch"})
    assert stopped.exit_code == 130, stopped.output
    in_flight = json.loads((tmp_path / "o" / "parts" / "in-flight.json").read_text())
    assert in_flight["docs"] and all(d["choice"] is not None for d in in_flight["docs"])
    assert _score("-o", tmp_path / "o", "--resume").exit_code == 0
    assert_same_results(tmp_path / "o", tmp_path / "straight", RESULTS, same_listing=False)
    # a real process killed as its first part is written, resumed
    env = {**os.environ, "SCORECLI_FAULT": "part-written:KILL"}
    killed = subprocess.run([forked_scorecli, "score", *map(str, args), "-o", str(tmp_path / "k")], env=env)
    assert killed.returncode < 0
    assert _score("-o", tmp_path / "k", "--resume").exit_code == 0
    assert_same_results(tmp_path / "k", tmp_path / "straight", RESULTS, same_listing=False)
    # Ctrl-C once a part is saved: the resume reads that part back (a choice run's own sequence columns)
    stopped = _score(*args, "-o", tmp_path / "p", env={"SCORECLI_FAULT": "part-saved"})
    assert stopped.exit_code == 130 and (tmp_path / "p" / "parts" / "000000.json").exists(), stopped.output
    assert _score("-o", tmp_path / "p", "--resume").exit_code == 0
    assert_same_results(tmp_path / "p", tmp_path / "straight", RESULTS, same_listing=False)


def test_a_run_of_the_installed_command_writes_the_choice_tables(gpt2_dir, tmp_path):
    out = tmp_path / "o"
    command = [
        sys.executable,
        "-m",
        "scorecli",
        "score",
        str(SAMPLES / "minimal_pairs.jsonl"),
        "-m",
        str(gpt2_dir),
        "--choices-field",
        "sentence_good,sentence_bad",
        "-o",
        str(out),
        "-q",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_parquet(out / "choices.parquet")) == 2 * len(pd.read_parquet(out / "sequences.parquet"))


@pytest.mark.realmodel
def test_a_choice_after_a_chat_is_the_assistants_next_turn(smollm):
    chat = [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "Another one?"},
    ]
    choices = [" A pear.", "A banana, ripe and yellow."]
    fields = Fields(messages="messages", choices=("choices",))
    records = list(read_rows([{"messages": chat, "choices": choices}], fields))
    scorer = Scorer(smollm.model, smollm.tokenizer, batch_tokens=256, min_shared_prefix=2)
    docs = list(scorer.score_records(records))
    assert [d.choice.index for d in docs] == [0, 1]
    tok = smollm.tokenizer
    for d, choice in zip(docs, choices):
        text = tok.apply_chat_template([*chat, {"role": "assistant", "content": choice}], tokenize=False)
        at = text.rindex(choice)
        # the rendered chat begins with its own start token, which plays BOS (as test_response's chats)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        lp, _ = reference_sequence(smollm.model, enc["input_ids"])
        mask = np.array([a < at + len(choice) and b > at for a, b in enc["offset_mapping"]])[1:]
        assert d.n_tokens == mask.sum()
        assert abs(d.sum_logprob - float(lp.numpy()[mask].sum())) <= TOL * d.n_tokens
        # the same as a prompt/response record of the rendered chat before the choice
        [alone] = scorer.score_records([Record(0, text, spans=((at, at + len(choice)),), chat=True)])
        assert abs(alone.sum_logprob - d.sum_logprob) <= TOL * d.n_tokens


def test_progress_counts_records_not_choices(tiny):
    fields = Fields(prompt="q", choices=("choices",), unconditional=True)
    rows = [{"q": q, "choices": cs} for q, cs, _ in QUESTIONS]
    seen = []
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=64, buffer_docs=5)
    docs = list(scorer.score_records(read_rows(rows, fields), progress=lambda state: seen.append(state.docs_done)))
    assert len(docs) == 2 * sum(len(cs) for _, cs, _ in QUESTIONS)
    assert seen[-1] == len(QUESTIONS) and seen == sorted(seen)
    # buffers of 5 documents never split a record's choices (and those alone): here a buffer per record
    buffers = list(scorer.score_buffers(read_rows(rows, fields)))
    assert [[d.doc for d in b] for b in buffers] == [[i] * 2 * len(cs) for i, (_, cs, _) in enumerate(QUESTIONS)]
