"""Signals in bursts: three SIGINTs (or SIGINTs and SIGTERMs) 50 ms apart, sent from here to a real `scorecli
score` process while it scores, saves a part, finishes or exits. Each run ends in the first signal's exit
code (130, or 143 for SIGTERM) with its one message, never in an abort or a traceback, and loses nothing.

The processes are forked by the fork server (tests/forkserver.py): real processes with pids of their own,
ending as Python ends. A signal to the `scorecli` shim would not reach the child, so each burst goes to the
child's pid, which the child wrote into its output folder's lock file. benchmarks/stress_signals.py repeats
these scenarios many times over."""

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_same_results, interrupt_after, sample_texts
from typer.testing import CliRunner

from scorecli.base import interrupts
from scorecli.base.faults import FAULT_ENV
from scorecli.cli import app
from scorecli.runfolder.layout import LOCK_FILE

GAP = 0.05  # seconds between the signals of a burst
RESULTS = ("tokens.parquet", "sequences.parquet", "words.parquet")
BAD_SIGNS = ("Traceback", "Exception ignored", "terminate called", "Aborted")
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """600 short documents: about five parts at a small token budget."""
    texts = sample_texts() + sample_texts("edge_cases.jsonl")
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(600):
            f.write(json.dumps({"id": f"c{i}", "text": f"{i}: {texts[i % len(texts)]}"}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def args(gpt2_dir, corpus):
    # Four batches scored side by side in threads: the worker threads a late signal must not cut short.
    return [str(corpus), "-m", str(gpt2_dir), "--batch-tokens", "64", "--words", "--threads", "4", "-q"]


@pytest.fixture(scope="module")
def solo(args, tmp_path_factory):
    out = tmp_path_factory.mktemp("solo") / "o"
    result = runner.invoke(app, ["score", *args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _until(check, proc, what, deadline=180):
    end = time.monotonic() + deadline
    while not check():
        assert proc.poll() is None and time.monotonic() < end, f"the run ended before {what}"
        time.sleep(0.005)


def _run_pid(out, proc):
    """The pid of the forked process running the command: it wrote it into its folder's lock file."""
    _until(lambda: (out / LOCK_FILE).exists(), proc, "it locked its folder")
    while True:
        try:
            return json.loads((out / LOCK_FILE).read_text())["pid"]
        except ValueError:  # being written
            time.sleep(0.005)


def _stopped(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "T"


def _burst(pid, names, resume=False):
    """Send the signals `names` 50 ms apart; with `resume`, the process stopped itself: the first signal is
    sent while it is stopped (so it lands exactly there), then SIGCONT."""
    for i, name in enumerate(names.split()):
        if i:
            time.sleep(GAP)
        try:
            os.kill(pid, getattr(signal, f"SIG{name}"))
            if resume and not i:
                os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # it has ended: the rest of the burst has nothing left to reach
            return


def _start(forked_scorecli, args, out, at=None):
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update({FAULT_ENV: at} if at else {})
    cmd = [str(forked_scorecli), "score", *args, "-o", str(out)]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def _clean(stderr):
    assert not any(sign in stderr for sign in BAD_SIGNS), stderr
    return [line for line in stderr.splitlines() if line.strip()]


def test_only_the_first_signal_raises_and_an_application_keeps_its_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    later = []
    with pytest.raises(KeyboardInterrupt) as stopped:
        with interrupts.as_exceptions():
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                # The run is stopping: raised here, these would replace the first and cut its saving short.
                for sig in (signal.SIGTERM, signal.SIGINT):
                    os.kill(os.getpid(), sig)
                    later.append(sig)
                raise
    assert type(stopped.value) is KeyboardInterrupt and len(later) == 2
    # This process is not the `scorecli` command: its handlers are its own again, and raise as before.
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with pytest.raises(KeyboardInterrupt):
        with interrupts.as_exceptions():
            os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_as_the_worker_threads_are_joined_waits_for_them(gpt2_dir, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from scorecli.engine.models import load_model
    from scorecli.engine.scorer import Scorer, ScoringInterrupted
    from scorecli.inputs.records import Record

    loaded = load_model(str(gpt2_dir), device="cpu", dtype="float32")
    scorer = Scorer(loaded.model, loaded.tokenizer, batch_tokens=48, workers=4)
    shutdown = ThreadPoolExecutor.shutdown

    def ctrl_c_again(pool, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C as the workers are told to stop and joined
        shutdown(pool, *args, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "shutdown", ctrl_c_again)
    records = [Record(i, text) for i, text in enumerate(sample_texts() * 4)]
    with pytest.raises(ScoringInterrupted):
        list(scorer.score_buffers(records, progress=interrupt_after(6)))
    # Joined before the interrupt went on: no worker is left running as an interpreter would shut down.
    assert not [t.name for t in threading.enumerate() if t.name.startswith("scorecli")]


@pytest.mark.parametrize(
    ("at", "burst", "code"),
    [
        (None, "INT INT INT", 130),  # while batches are scored
        (None, "TERM INT TERM", 143),
        ("part-written:STOP", "INT TERM INT", 130),  # while a part is saved
    ],
)
def test_a_burst_while_scoring_or_saving_a_part_exits_with_the_first_signals_code_and_the_run_resumes(
    args, solo, tmp_path, forked_scorecli, at, burst, code
):
    out = tmp_path / "o"
    proc = _start(forked_scorecli, args, out, at)
    pid = _run_pid(out, proc)
    if at:
        _until(lambda: _stopped(pid), proc, "it stopped as it saved a part")
    else:
        _until(lambda: (out / "parts" / "000001.json").exists(), proc, "two parts were saved")
    _burst(pid, burst, resume=bool(at))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    said = _clean(err)
    assert len(said) == 2 and said[0].startswith("scorecli: interrupted after ") and f"saved in {out}" in said[0]
    assert shlex.split(said[1]) == ["scorecli", "score", "-o", str(out), "--resume"]
    resumed = runner.invoke(app, ["score", "-o", str(out), "--resume", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert_same_results(out, solo, RESULTS)


@pytest.mark.parametrize(
    ("at", "burst", "code"), [("joining", "TERM INT INT", 143), ("committed", "INT TERM INT", 130)]
)
def test_a_burst_during_the_finish_waits_for_it_and_exits_with_the_first_signals_code(
    args, solo, tmp_path, forked_scorecli, at, burst, code
):
    out = tmp_path / "o"
    proc = _start(forked_scorecli, args, out, f"{at}:STOP")
    pid = _run_pid(out, proc)
    _until(lambda: _stopped(pid), proc, f"it stopped at {at}")
    _burst(pid, burst, resume=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert _clean(err) == [f"scorecli: interrupted as the run finished; its results are complete in {out}"]
    assert_same_results(out, solo, RESULTS)


@pytest.mark.parametrize(("interrupted", "burst"), [(True, "TERM INT TERM"), (False, "INT TERM INT")])
def test_a_burst_while_the_interpreter_shuts_down_changes_nothing(
    args, solo, tmp_path, forked_scorecli, interrupted, burst
):
    out = tmp_path / "o"
    proc = _start(forked_scorecli, args, out, "exiting:STOP")  # stops in an atexit callback
    pid = _run_pid(out, proc)
    if interrupted:
        _until(lambda: (out / "parts" / "000001.json").exists(), proc, "two parts were saved")
        os.kill(pid, signal.SIGINT)
    _until(lambda: _stopped(pid), proc, "it stopped as Python shut down")
    _burst(pid, burst, resume=True)
    _, err = proc.communicate(timeout=300)
    said = _clean(err)
    if interrupted:  # the exit code of the interrupt, whatever came after it
        assert proc.returncode == 130, err
        assert said[0].startswith("scorecli: interrupted after ") and said[1].endswith("--resume")
        assert runner.invoke(app, ["score", "-o", str(out), "--resume", "-q"]).exit_code == 0
    else:  # the run was complete: its exit code stays 0
        assert proc.returncode == 0 and said == [], err
    assert_same_results(out, solo, RESULTS)
