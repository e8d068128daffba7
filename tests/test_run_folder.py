"""The run folder protocol under attack: concurrent runs, signals and crashes at each stage of the finish,
damaged parts and manifests on resume, a full disk, a folder removed mid-run. Results are never mixed, lost
or silently partial."""

import errno
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import assert_same_results, sample_texts
from typer.testing import CliRunner

from scorecli.base.faults import FAULT_ENV
from scorecli.cli import app
from scorecli.data.scores import DEFAULT_STATS
from scorecli.runfolder.layout import LOCK_FILE
from scorecli.runfolder.outputs import read_metadata
from scorecli.runfolder.runs import FINISH_STAGES, claim_out_dir

SCORECLI = [sys.executable, "-m", "scorecli"]
RESULTS = ("tokens.parquet", "sequences.parquet", "words.parquet")
runner = CliRunner()


def _score(*args, env=None):
    return runner.invoke(app, ["score", *map(str, args)], env=env)


def _one_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _leftovers(folder):
    return [p for pattern in ("*.partial", ".*", "final") for p in folder.rglob(pattern)]


def _wait_stopped(proc, deadline=180):
    """Wait until a process stopped itself (SIGSTOP at a stage)."""
    end = time.monotonic() + deadline
    while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert proc.poll() is None and time.monotonic() < end, "the run ended before it reached the stage"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """240 documents of a few hundred characters: several parts at a small token budget."""
    texts = sample_texts() + sample_texts("edge_cases.jsonl")
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(240):
            text = " ".join(texts[(i + k) % len(texts)] for k in range(4))
            f.write(json.dumps({"id": f"c{i}", "text": f"{i}: {text}"}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def args(gpt2_dir, corpus):
    return [corpus, "-m", gpt2_dir, "--batch-tokens", 64, "--words", "-q"]


@pytest.fixture(scope="module")
def solo(args, tmp_path_factory):
    out = tmp_path_factory.mktemp("solo") / "o"
    result = _score(*args, "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def cut(args, corpus, tmp_path_factory):
    """An unfinished run with several saved parts: stopped by a bad record near the end of the input."""
    lines = corpus.read_text(encoding="utf-8").splitlines()
    lines[230] = '{"text": 230}'
    data = tmp_path_factory.mktemp("cut") / "corpus.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = data.parent / "o"
    result = _score(data, *args[1:], "-o", out)
    assert result.exit_code == 3, result.output
    assert len(list((out / "parts").glob("0*.json"))) >= 3
    return data, out, _one_line(result.stderr)


def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_is_untouched(
    args, corpus, solo, tmp_path, forked_scorecli
):
    out = tmp_path / "o"
    # The first run stops itself after writing its first part's files (before the manifest)...
    env = {**os.environ, FAULT_ENV: "part-written:STOP"}
    first = subprocess.Popen([*SCORECLI, "score", *map(str, args), "-o", str(out)], env=env, stderr=subprocess.PIPE)
    try:
        _wait_stopped(first)
        # ... while a second process, with other texts under the same ids, tries the same folder.
        other = tmp_path / "other.jsonl"
        other.write_text("".join(json.dumps({"id": f"c{i}", "text": f"other {i}"}) + "\n" for i in range(30)))
        second = subprocess.run(
            [forked_scorecli, "score", str(other), "-m", str(args[2]), "-o", str(out), "-q"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 5, second.stderr
        line = _one_line(second.stderr)
        assert f"--out {out}: the folder is in use by another run (pid {first.pid} on {socket.gethostname()}" in line
        assert "scorecli score" in line and str(corpus) in line
        # A resume and an overwrite are refused just the same.
        for extra in ("--resume", "--overwrite"):
            refused = _score(*args, "-o", out, extra)
            assert refused.exit_code == 5 and "in use by another run" in _one_line(refused.stderr)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_same_results(out, solo, RESULTS)


def test_a_lock_left_by_a_killed_run_does_not_block_and_the_lock_is_taken_before_the_model_loads(args, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK_FILE).write_text('{"pid": 1, "host": "gone", "started": "long ago", "command": "scorecli"}')
    # A bad model fails after the folder is claimed, so the claim (and its release) happens first.
    with claim_out_dir(out / "sub") as held:
        assert held.state is None and (out / "sub" / LOCK_FILE).exists()
        refused = _score(*args[:1], "-m", tmp_path / "no-such-model", "-o", out / "sub")
        assert refused.exit_code == 5 and f"pid {os.getpid()}" in _one_line(refused.stderr)
    assert not (out / "sub").exists()  # created by the claim, empty: removed on release
    fine = _score(*args, "-o", out)  # the stale lock file is no result: the folder counts as empty
    assert fine.exit_code == 0, fine.output
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("stage", FINISH_STAGES)
def test_sigint_at_each_stage_of_the_finish_waits_for_it_and_the_finished_run_stays_as_it_is(
    args, solo, tmp_path, stage
):
    out = tmp_path / "o"
    result = _score(*args, "-o", out, env={FAULT_ENV: stage})
    assert result.exit_code == 130, result.output
    assert _one_line(result.stderr) == f"scorecli: interrupted as the run finished; its results are complete in {out}"
    assert_same_results(out, solo, RESULTS)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _score(*args, "-o", out, "--resume")
    assert again.exit_code == 5
    assert _one_line(again.stderr) == f"scorecli: error: --out {out}: nothing to resume (its run is finished)"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten


@pytest.mark.parametrize("stage", ["part-written", "joining"])
def test_sigterm_in_a_real_process_exits_143_and_loses_nothing(args, solo, tmp_path, forked_scorecli, stage):
    out = tmp_path / "o"
    env = {**os.environ, FAULT_ENV: f"{stage}:TERM"}
    proc = subprocess.run(
        [forked_scorecli, "score", *map(str, args), "-o", str(out)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 143, proc.stderr
    if stage == "joining":  # during the finish, which goes on to the end
        said = f"scorecli: interrupted as the run finished; its results are complete in {out}"
        assert _one_line(proc.stderr) == said
    else:  # mid-run: stopped, and resumed
        assert proc.stderr.startswith("scorecli: interrupted after ") and "Traceback" not in proc.stderr
        assert _score(*args, "-o", out, "--resume").exit_code == 0
    assert_same_results(out, solo, RESULTS)


@pytest.mark.parametrize("stage", ["part-written", "joined", "committed", "moving"])
def test_a_run_killed_at_any_stage_resumes_or_completes_to_the_same_results(
    args, solo, tmp_path, stage, forked_scorecli
):
    out = tmp_path / "o"
    env = {**os.environ, FAULT_ENV: f"{stage}:KILL"}
    killed = subprocess.run([forked_scorecli, "score", *map(str, args), "-o", str(out)], env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    resumed = _score(*args, "-o", out, "--resume")
    if stage in ("committed", "moving", "moved"):
        # Committed before the kill: the resume completes the finish and says the run is finished.
        assert resumed.exit_code == 5 and "nothing to resume (its run is finished)" in resumed.stderr
    else:
        assert resumed.exit_code == 0, resumed.output
    assert_same_results(out, solo, RESULTS)


def _manifest(out, n):
    return json.loads((out / "parts" / f"{n:06d}.json").read_text())


def _rewrite(out, n, **changes):
    (out / "parts" / f"{n:06d}.json").write_text(json.dumps({**_manifest(out, n), **changes}))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "lost-early-manifest": (lambda o: (o / "parts" / "000001.json").unlink(), "part 000001: its manifest"),
    "duplicated-manifest": (
        lambda o: shutil.copy(o / "parts" / "000000.json", o / "parts" / "000002.json"),
        "part 000002: parts/000002.json is the manifest of another part (0)",
    ),
    "overlap": (
        lambda o: _rewrite(o, 2, records=[_manifest(o, 2)["records"][0] - 1, _manifest(o, 2)["records"][1]]),
        "it overlaps what is before it",
    ),
    "gap": (
        lambda o: _rewrite(o, 2, records=[_manifest(o, 2)["records"][0] + 1, _manifest(o, 2)["records"][1]]),
        "records are missing",
    ),
    "truncated-manifest": (
        lambda o: (o / "parts" / "000001.json").write_text((o / "parts" / "000001.json").read_text()[:40]),
        "part 000001: parts/000001.json cannot be read",
    ),
    "truncated-part": (
        lambda o: (o / "parts" / "tokens" / "000002.parquet").write_bytes(
            (o / "parts" / "tokens" / "000002.parquet").read_bytes()[:500]
        ),
        "part 000002: parts/tokens/000002.parquet has 500 bytes, not the",
    ),
    "garbled-part": (
        lambda o: _flip_a_byte(o / "parts" / "words" / "000001.parquet"),
        "part 000001: parts/words/000001.parquet does not match its manifest's checksum",
    ),
    "missing-part": (
        lambda o: (o / "parts" / "sequences" / "000000.parquet").unlink(),
        "part 000000: parts/sequences/000000.parquet is missing",
    ),
    "part-without-manifest": (
        lambda o: shutil.copy(o / "parts" / "tokens" / "000000.parquet", o / "parts" / "tokens" / "000042.parquet"),
        "parts/tokens/000042.parquet has no manifest",
    ),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_verifies_the_saved_parts_and_refuses_a_damaged_run(args, cut, tmp_path, damage):
    data, original, _ = cut
    out = tmp_path / "o"
    shutil.copytree(original, out)
    harm, needle = DAMAGES[damage]
    harm(out)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    result = _score(data, *args[1:], "-o", out, "--resume", "--on-error", "skip")
    assert result.exit_code == 5, result.output
    line = _one_line(result.stderr)
    assert line.startswith(f"scorecli: error: --out {out}: the saved run is damaged: ") and needle in line
    assert line.endswith("pass --overwrite to start the run again")
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


def test_an_intact_unfinished_run_resumes_to_the_same_results(args, cut, solo, tmp_path):
    data, original, _ = cut
    out = tmp_path / "o"
    shutil.copytree(original, out)
    assert _score(data, *args[1:], "-o", out, "--resume", "--on-error", "skip").exit_code == 0
    straight = tmp_path / "straight"
    assert _score(data, *args[1:], "-o", straight, "--on-error", "skip").exit_code == 0
    for name in RESULTS:
        assert pq.read_table(out / name).equals(pq.read_table(straight / name))


def test_a_part_damaged_after_resume_checked_it_is_named_when_the_parts_are_joined(cut, tmp_path):
    from scorecli.base.errors import OutputError
    from scorecli.runfolder.runs import RunWriter

    out = tmp_path / "o"
    shutil.copytree(cut[1], out)
    with claim_out_dir(out, resume=True) as folder:
        # The run's token columns: those of --words (the word-start statistic) beside the defaults.
        stats = (*DEFAULT_STATS, "word_start_logprob")
        writer = RunWriter(folder, folder.state.metadata, words=True, stats=stats)
        (out / "parts" / "tokens" / "000001.parquet").write_bytes(b"PAR1 not really")
        with pytest.raises(OutputError, match="part 000001: parts/tokens/000001.parquet does not match its manifest"):
            writer.finish(records_read=writer.records_done, summary={}, errors_file=False)
    assert not _leftovers(out) and not (out / "tokens.parquet").exists()


@pytest.mark.parametrize("where", ["part", "final"])
def test_a_full_disk_leaves_no_temporary_file_and_the_saved_parts_resume(args, solo, tmp_path, monkeypatch, where):
    out = tmp_path / "o"
    real_fsync = os.fsync
    target = "/parts/tokens/.000002.parquet.partial" if where == "part" else "/parts/final/tokens.parquet"

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = _score(*args, "-o", out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 5
    line = _one_line(result.stderr)
    assert "No space left on device" in line and "saved in" in line and "see --resume" in line
    assert not _leftovers(out) and not (out / "tokens.parquet").exists()
    resumed = _score(*args, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same_results(out, solo, RESULTS)


def test_an_output_folder_removed_mid_run_is_said_plainly(args, tmp_path):
    out = tmp_path / "o"
    env = {**os.environ, FAULT_ENV: "part-written:STOP"}
    proc = subprocess.Popen(
        [*SCORECLI, "score", *map(str, args), "-o", str(out)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_stopped(proc)
        shutil.rmtree(out)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 5
    assert (
        _one_line(err) == f"scorecli: error: --out {out}: the output folder was removed while the run was writing to it"
    )
    assert not out.exists()


def test_a_failed_run_leaves_no_output_folder(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _score("missing.jsonl", "-m", gpt2_dir).exit_code == 3
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    assert _score("in.jsonl", "-m", tmp_path / "no-such-model").exit_code == 4
    assert _score("in.jsonl", "-m", gpt2_dir, "--resume").exit_code == 5
    assert _score("in.jsonl", "-m", tmp_path / "no-such-model", "-o", "new/deeper/o").exit_code == 4
    no_folder = _score("--resume")
    assert no_folder.exit_code == 2 and "--resume without INPUT needs --out DIR" in _one_line(no_folder.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_bad_record_prints_the_command_that_resumes_past_it_with_the_saved_input_and_options(
    args, cut, tmp_path, monkeypatch
):
    data, original, message = cut
    assert "line 231" in message and "'text'" in message
    command = shlex.split(message.split("resume with: ")[1].removesuffix(")"))
    assert command == ["scorecli", "score", "-o", str(original), "--resume", "--on-error", "skip"]
    shutil.copytree(original, tmp_path / "o")
    monkeypatch.chdir(tmp_path)
    resumed = _score("-o", "o", *command[4:])  # no INPUT, no options: those saved in the folder
    assert resumed.exit_code == 0, resumed.output
    straight = _score(data, *args[1:], "-o", tmp_path / "straight", "--on-error", "skip")
    assert straight.exit_code == 0
    for name in (*RESULTS, "errors.jsonl"):
        assert (tmp_path / "o" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()


def test_resume_compares_input_paths_resolved_and_options_given_must_agree(args, cut, tmp_path, monkeypatch):
    data, original, _ = cut
    out = tmp_path / "o"
    shutil.copytree(original, out)
    twin = tmp_path / "elsewhere" / data.name
    twin.parent.mkdir()
    shutil.copy2(data, twin)  # the same name, size and time, but another file
    refused = _score(twin, "-o", out, "--resume")
    assert refused.exit_code == 5
    assert _one_line(refused.stderr) == (
        f"scorecli: error: --resume: the run was started with input {str(data)!r}, not {str(twin)!r}"
    )
    other = _score("-o", out, "--resume", "--batch-tokens", 128)
    assert other.exit_code == 5 and "started with batch_tokens '64', not '128'" in _one_line(other.stderr)
    monkeypatch.chdir(twin.parent)
    typed = os.path.relpath(data)  # the same file, typed from another folder
    assert typed != str(data) and typed.startswith("..")
    resumed = _score(typed, "-o", out, "--resume", "--on-error", "skip", "--batch-tokens", 64)
    assert resumed.exit_code == 0, resumed.output
    assert read_metadata(out / "tokens.parquet")["input"] == str(data)  # as the run was started


def test_after_a_resume_the_summary_counts_each_session_and_says_which_figures_cover_what(args, solo, tmp_path):
    from scorecli.runfolder.runs import _doc_from_json

    out = tmp_path / "o"
    stopped = _score(*args, "-o", out, env={FAULT_ENV: "part-written"})  # Ctrl-C as the first part is saved
    assert stopped.exit_code == 130, stopped.output
    in_flight = json.loads((out / "parts" / "in-flight.json").read_text())
    first_seconds = in_flight["summary"]["seconds"]
    saved_tokens = sum(pq.read_table(out / "parts" / "sequences")["n_tokens"].to_pylist())
    saved_tokens += sum(_doc_from_json(d).n_tokens for d in in_flight["docs"])
    assert first_seconds > 0 and saved_tokens > 0

    resumed = _score(*args[:-1], "-o", out, "--resume")  # not quiet: the summary is shown
    assert resumed.exit_code == 0, resumed.output
    figures = json.loads((out / "summary.json").read_text())["summary"]
    total = json.loads((solo / "summary.json").read_text())["summary"]["scored_tokens"]
    assert figures["sessions"] == 2 and figures["scored_tokens"] == total
    # This session's figures count only what it scored itself, in its own time...
    session_tokens = figures["session_tokens_per_second"] * figures["session_seconds"]
    assert session_tokens == pytest.approx(total - saved_tokens)
    # ... and those of all sessions add the interrupted session's time, up to its interrupt.
    assert figures["seconds"] == pytest.approx(first_seconds + figures["session_seconds"])
    assert figures["tokens_per_second"] == pytest.approx(total / figures["seconds"])
    for row in ("tokens/s (all 2 sessions)", "wall time (all 2 sessions)", "tokens/s (this session)"):
        assert row in resumed.stderr


def test_waiting_for_a_folders_lock_ends_when_its_holder_lets_go_or_at_the_deadline(tmp_path):
    import threading

    from scorecli.runfolder.runs import lock_out_dir, wait_for_release

    assert wait_for_release(tmp_path / "never-locked", 0)
    held = lock_out_dir(tmp_path / "run", "a run still stopping")
    start = time.monotonic()
    assert not wait_for_release(tmp_path / "run", 0.3)
    assert time.monotonic() - start >= 0.3
    threading.Timer(0.4, held.release).start()
    start = time.monotonic()
    assert wait_for_release(tmp_path / "run", 10)
    assert 0.35 <= time.monotonic() - start < 5
    lock_out_dir(tmp_path / "run").release()  # free: a run takes it at once
