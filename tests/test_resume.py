"""Never lose work: bad records skipped into errors.jsonl, runs saved in parts, interrupted and resumed."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import weakref

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import interrupt_after, sample_texts
from typer.testing import CliRunner

from scorecli.base import interrupts
from scorecli.cli import app
from scorecli.runfolder.outputs import read_metadata
from scorecli.runfolder.runs import RunWriter

SCORECLI = [sys.executable, "-m", "scorecli"]
RESULTS = ("tokens.parquet", "sequences.parquet", "words.parquet")
runner = CliRunner()


def _score(*args):
    return runner.invoke(app, ["score", *map(str, args)])


def _assert_same_results(a, b, files=RESULTS):
    for name in files:
        left, right = pq.read_table(a / name), pq.read_table(b / name)
        assert left.equals(right), name  # values, row order and schema
        assert read_metadata(a / name) == read_metadata(b / name)
    sa, sb = (json.loads((d / "summary.json").read_text())["summary"] for d in (a, b))
    for timing in ("seconds", "tokens_per_second", "sessions", "session_seconds", "session_tokens_per_second"):
        sa.pop(timing), sb.pop(timing)
    assert sa == sb


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 1,500 short documents: many read-ahead buffers at a small token budget."""
    texts = sample_texts() + sample_texts("edge_cases.jsonl")
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1500):
            f.write(json.dumps({"id": f"c{i}", "text": f"{i}: {texts[i % len(texts)]}"}, ensure_ascii=False) + "\n")
    return path


def test_skip_writes_rejected_records_and_scores_the_rest(gpt2_dir, tmp_path):
    good = sample_texts()[:6]
    lines = [json.dumps({"text": t}) for t in good]
    lines[1:1] = ['{"text": "unterminated']  # line 2
    lines[4:4] = ['{"body": "no text field"}', '{"text": null}']  # lines 5 and 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": t}) + "\n" for t in good))

    result = _score(bad, "-m", gpt2_dir, "-o", tmp_path / "o", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "3 record(s) were rejected" in result.stderr
    errors = [json.loads(line) for line in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["doc"]) for e in errors] == [(2, 1), (5, 4), (6, 5)]
    assert "not valid JSON" in errors[0]["reason"] and "field 'text' is missing" in errors[1]["reason"]
    assert "is null" in errors[2]["reason"] and errors[1]["record"] == '{"body": "no text field"}'
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())["summary"]
    assert summary["rejected"] == 3 and summary["documents"] == 6

    assert _score(clean, "-m", gpt2_dir, "-o", tmp_path / "c").exit_code == 0
    skipped = pd.read_parquet(tmp_path / "o" / "tokens.parquet")
    reference = pd.read_parquet(tmp_path / "c" / "tokens.parquet")
    # doc numbers are input positions, rejected records included: the good ones keep theirs
    assert sorted(skipped["doc"].unique()) == [0, 2, 3, 6, 7, 8]
    assert (skipped["logprob"].to_numpy() == reference["logprob"].to_numpy()).all()


def test_stop_keeps_finished_parts_and_resume_with_skip_completes(gpt2_dir, corpus, tmp_path):
    lines = corpus.read_text(encoding="utf-8").splitlines()
    lines[1200] = '{"text": 12}'
    data = tmp_path / "late-bad.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = [data, "-m", gpt2_dir, "--batch-tokens", 64, "--words"]

    stopped = _score(*args, "-o", tmp_path / "o")
    assert stopped.exit_code == 3
    message = stopped.stderr.strip()
    assert "line 1201: field 'text' must be a string" in message and "saved in" in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "o" / "tokens.parquet").exists() and list((tmp_path / "o" / "parts").glob("*.json"))
    saved = pd.read_parquet(tmp_path / "o" / "parts" / "sequences")  # the saved parts read as one dataset
    assert saved["doc"].tolist() == list(range(len(saved))) and 0 < len(saved) <= 1200

    resumed = _score(*args, "-o", tmp_path / "o", "--resume", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    assert _score(*args, "-o", tmp_path / "straight", "--on-error", "skip").exit_code == 0
    _assert_same_results(tmp_path / "o", tmp_path / "straight")
    assert (tmp_path / "o" / "errors.jsonl").read_text() == (tmp_path / "straight" / "errors.jsonl").read_text()
    assert not (tmp_path / "o" / "parts").exists()


def test_interrupt_then_resume_equals_an_uninterrupted_run(gpt2_dir, corpus, tmp_path):
    # Ctrl-C in a real process; SIGTERM's handling is the same code, tested in-process below (where its
    # exception is swallowed) and in real processes by test_run_folder's SIGTERM tests.
    out = tmp_path / "o"
    args = [str(corpus), "-m", str(gpt2_dir), "--batch-tokens", "64", "--words", "-q"]
    proc = subprocess.Popen([*SCORECLI, "score", *args, "-o", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "parts" / "000001.json").exists():  # two parts saved, many to go
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not (out / "sequences.parquet").exists()
    said = err.strip().splitlines()
    assert said[0].startswith("scorecli: interrupted after ") and "documents, saved in" in said[0]
    command = shlex.split(said[-1])
    assert command[0] == "scorecli" and command[-1] == "--resume"

    resumed = runner.invoke(app, command[1:])  # in this process: the interrupted one was real
    assert resumed.exit_code == 0, resumed.output
    assert _score(*args, "-o", tmp_path / "straight").exit_code == 0
    _assert_same_results(out, tmp_path / "straight")


def _signal_where_it_is_swallowed(sig):
    """Send this process `sig` inside a weakref callback, where Python swallows what its handler raises."""

    class Garbage:
        pass

    garbage = Garbage()
    ref = weakref.ref(garbage, lambda _: os.kill(os.getpid(), sig))
    del garbage  # the callback runs now, and the handler inside it
    return ref


@pytest.mark.parametrize(
    ("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated)]
)
def test_a_signal_whose_exception_was_swallowed_is_raised_again(monkeypatch, sig, raised):
    heard = []
    monkeypatch.setattr(sys, "unraisablehook", heard.append)

    class Noisy:
        def __del__(self):
            raise ValueError("not ours")

    with interrupts.as_exceptions():
        _signal_where_it_is_swallowed(sig)  # returns: the handler's exception was swallowed
        Noisy()
        with pytest.raises(raised):
            interrupts.reraise()
        interrupts.reraise()  # raised once, not again
    interrupts.reraise()  # nor after the block
    # No "Exception ignored in" traceback for the signal's exception; others' swallowed errors still reach the hook
    assert [type(u.exc_value) for u in heard] == [ValueError]
    assert sys.unraisablehook == heard.append


def test_sigterm_swallowed_by_the_garbage_collector_still_stops_the_run(gpt2_dir, corpus, tmp_path, monkeypatch):
    # What CI once met: SIGTERM arrived while a weakref callback ran, Python printed "Exception ignored in"
    # and the run went on to the end with exit code 0.
    save = RunWriter.save

    def save_then_signal(self, *args):
        save(self, *args)
        if self.parts == 2:
            _signal_where_it_is_swallowed(signal.SIGTERM)

    monkeypatch.setattr(RunWriter, "save", save_then_signal)
    args = [corpus, "-m", gpt2_dir, "--batch-tokens", "64", "--words", "-q"]
    out = tmp_path / "o"
    stopped = _score(*args, "-o", out)
    assert stopped.exit_code == 143, stopped.output
    assert stopped.stderr.startswith("scorecli: interrupted after ") and "Traceback" not in stopped.stderr
    assert not (out / "sequences.parquet").exists()
    monkeypatch.undo()
    assert _score("-o", out, "--resume", "-q").exit_code == 0
    assert _score(*args, "-o", tmp_path / "straight").exit_code == 0
    _assert_same_results(out, tmp_path / "straight")


def test_resume_checks_the_run_and_refuses_what_does_not_match(gpt2_dir, corpus, tmp_path):
    out = tmp_path / "o"
    assert _score(corpus, "-m", gpt2_dir, "-o", out).exit_code == 0
    finished = _score(corpus, "-m", gpt2_dir, "-o", out, "--resume")
    assert finished.exit_code == 5 and "nothing to resume (its run is finished)" in finished.stderr
    refused = _score(corpus, "-m", gpt2_dir, "-o", out)
    assert refused.exit_code == 5 and "--overwrite" in refused.stderr

    # A run cut short by a bad record, then resumed with other settings
    lines = corpus.read_text(encoding="utf-8").splitlines()
    lines[1400] = "[]"
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cut = tmp_path / "cut"
    assert _score(data, "-m", gpt2_dir, "-o", cut, "--batch-tokens", 64).exit_code == 3
    other = _score(data, "-m", gpt2_dir, "-o", cut, "--batch-tokens", 64, "--resume", "--max-length", 100)
    assert other.exit_code == 5
    assert other.stderr.strip() == "scorecli: error: --resume: the run was started with max_length '512', not '100'"
    overwritten = _score(data, "-m", gpt2_dir, "-o", cut, "--overwrite", "--on-error", "skip")
    assert overwritten.exit_code == 0 and not (cut / "parts").exists()


def test_rejects_saved_by_a_skipping_session_reach_errors_jsonl_whatever_the_resumed_one_says(tmp_path):
    from scorecli.inputs.records import Rejected
    from scorecli.runfolder.runs import RunWriter, claim_out_dir

    out = tmp_path / "o"
    with claim_out_dir(out) as folder:
        first = RunWriter(folder, {"model": "m"}, words=False)
        first.reject(Rejected(3, "in.jsonl", 4, "field 'text' is null", '{"text": null}'))
        first.save([], records_done=10, summary={})
    with claim_out_dir(out, resume=True) as folder:
        state = folder.state
        assert (state.records_done, state.parts, state.rejected) == (10, 1, 1)
        second = RunWriter(folder, {"model": "m"}, words=False)
        second.finish(records_read=10, summary={}, errors_file=False)
    [line] = (out / "errors.jsonl").read_text().splitlines()
    assert json.loads(line) == {
        "doc": 3,
        "input": "in.jsonl",
        "line": 4,
        "reason": "field 'text' is null",
        "record": '{"text": null}',
    }
    assert not (out / "parts").exists() and pq.read_table(out / "sequences.parquet").num_rows == 0


def test_finished_documents_of_an_interrupted_buffer_are_kept_and_not_scored_again(tiny):
    from scorecli.engine.scorer import Scorer, ScoringInterrupted
    from scorecli.inputs.records import Record
    from scorecli.runfolder.runs import _doc_from_json, _doc_to_json

    texts = (sample_texts() + sample_texts("edge_cases.jsonl")) * 3
    records = [Record(i, t) for i, t in enumerate(texts)]
    scorer = Scorer(tiny.model, tiny.tokenizer, batch_tokens=48, max_length=24, stride=8, workers=1)
    [straight] = list(scorer.score_buffers(records))
    with pytest.raises(ScoringInterrupted) as caught:
        list(scorer.score_buffers(records, progress=interrupt_after(12)))
    finished = caught.value.finished
    assert 0 < len(finished) < len(records)
    done = {d.doc: _doc_from_json(json.loads(json.dumps(_doc_to_json(d)))) for d in finished}
    scored = []
    counting = Scorer(tiny.model, tiny.tokenizer, batch_tokens=48, max_length=24, stride=8, workers=1)
    original = counting._score_batch
    counting._score_batch = lambda batch, encoded: scored.append([w.doc for w in batch]) or original(batch, encoded)
    [resumed] = list(counting.score_buffers(records, done=done))
    # Batches of finished documents alone are not run again, and every number is the same as before
    assert not any(all(d in done for d in batch) for batch in scored)
    for a, b in zip(straight, resumed, strict=True):
        assert a.doc == b.doc and np.array_equal(a.logprobs, b.logprobs) and np.array_equal(a.entropies, b.entropies)
        assert a.sequence_row() == b.sequence_row() and a.tokens == b.tokens
        assert a.stats.keys() == b.stats.keys() and all(np.array_equal(a.stats[c], b.stats[c]) for c in a.stats)


def test_resume_alone_reads_every_saved_option_by_name(gpt2_dir, corpus, tmp_path):
    # A run with many options away from their defaults, stopped by a bad record, resumed with none of them:
    # each must come back as itself (a value read into another option would change the results or be refused).
    lines = corpus.read_text(encoding="utf-8").splitlines()[:300]
    lines[250] = '{"text": 12}'
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = ["-m", gpt2_dir, "--batch-tokens", 64, "--max-length", 24, "--stride", 8, "--top-k", 2, "--no-bos"]
    options += ["--words", "--min-shared-prefix", 3, "--no-prefix-sharing", "--limit", 280, "--threads", 1]
    assert _score(data, *options, "-o", tmp_path / "cut").exit_code == 3
    resumed = _score("-o", tmp_path / "cut", "--resume", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    assert _score(data, *options, "--on-error", "skip", "-o", tmp_path / "straight").exit_code == 0
    _assert_same_results(tmp_path / "cut", tmp_path / "straight")
    saved = json.loads((tmp_path / "cut" / "summary.json").read_text())["metadata"]
    assert (saved["max_length"], saved["stride"], saved["top_k"], saved["limit"]) == ("24", "8", "2", "280")


def test_a_run_saved_before_prefix_sharing_existed_resumes_without_it(gpt2_dir, corpus, tmp_path):
    # Such a run was scored without sharing and its folder says nothing of it: resumed, it goes on without
    # sharing (and says so), giving the results of a run without sharing.
    lines = corpus.read_text(encoding="utf-8").splitlines()[:300]
    lines[250] = '{"text": 12}'
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = ["-m", gpt2_dir, "--batch-tokens", 64, "--words"]
    assert _score(data, *options, "--no-prefix-sharing", "-o", tmp_path / "old").exit_code == 3
    run_file = tmp_path / "old" / "parts" / "run.json"
    run = json.loads(run_file.read_text())
    del run["metadata"]["prefix_sharing"], run["options"]["prefix_sharing"]
    run_file.write_text(json.dumps(run))

    resumed = _score("-o", tmp_path / "old", "--resume", "--on-error", "skip")
    assert resumed.exit_code == 0, resumed.output
    straight = _score(data, *options, "--no-prefix-sharing", "--on-error", "skip", "-o", tmp_path / "straight")
    assert straight.exit_code == 0
    _assert_same_results(tmp_path / "old", tmp_path / "straight")
    assert json.loads((tmp_path / "old" / "summary.json").read_text())["metadata"]["prefix_sharing"] == "off"
