"""`score --ray`, for real: local Ray clusters (one started with `ray start --head`, one started by scorecli)
score shards on 1 or 2 workers; their outputs must equal a single-process run's.

Each run is a new Ray job, whose workers are new processes that import torch and transformers and load the
model: most of a run's time. So each run checks all it can, and runs on 1 worker (which keeps its model for
its next shards) where 2 would test nothing more; the run whose output depends on the order in which shards
end (standard output's lines) has 2."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RAY_QUIET, SAMPLES
from typer.testing import CliRunner

from scorecli.base import interrupts
from scorecli.base.faults import FAULT_ENV
from scorecli.cli import app
from scorecli.inputs.corpus import expand_inputs, read_corpus
from scorecli.inputs.records import Fields
from scorecli.runfolder.rundocs import read_result, run_metadata

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

SCORECLI = [sys.executable, "-m", "scorecli"]
# Small batches make small buffers (256 characters a batch token): shards save several parts each.
SCORING = ["--batch-tokens", "64", "--threads", "1"]
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def quiet_ray():
    saved = {k: os.environ.get(k) for k in RAY_QUIET}
    os.environ.update(RAY_QUIET)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three kinds of input: JSONL (cut into line ranges), Parquet in row groups, and a .txt."""
    folder = tmp_path_factory.mktemp("ray-corpus")
    lines = (SAMPLES / "long.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "a.jsonl").write_text("".join(lines[:30]) + "\n" + "".join(lines[30:40]), encoding="utf-8")
    rows = [json.loads(line) for line in (SAMPLES / "mixed.jsonl").read_text(encoding="utf-8").splitlines()]
    table = pa.table({"id": [f"m{i}" for i in range(len(rows))], "text": [r["text"] for r in rows]})
    pq.write_table(table, folder / "b.parquet", row_group_size=5)
    (folder / "c.txt").write_text("A short note, written for this test.\nIt has two lines.\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def single(corpus: Path, gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process run the Ray runs must equal."""
    out = tmp_path_factory.mktemp("single") / "run"
    result = runner.invoke(app, ["score", str(corpus), "-m", str(gpt2_dir), *SCORING, "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


# Two files, so two shards at least, whose kept fields are typed apart: ints here, floats there (double over the
# run), a string here, a number there (JSON text), objects of other keys. Each file's documents share a long
# start (its own), so prefix sharing spares tokens within each file's shard and a single run's buffer alike.
FIELD_FILES = {
    "a.jsonl": (
        "This shared opening paragraph of file a introduces every record that follows it in the same way. ",
        lambda i: {"lang": "en", "n": i, "tag": f"t{i}", "meta": {"x": i}},
    ),
    "b.jsonl": (
        "File b begins each of its records with another common preamble, long enough to be fed only once. ",
        lambda i: {"lang": "de", "n": i + 0.5, "tag": i, "meta": {"y": "s"} if i else None},
    ),
}
KEPT = "lang,n,tag,meta"


@pytest.fixture(scope="module")
def fields_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two JSONL files whose kept fields have different JSON types in each, and whose documents share starts."""
    folder = tmp_path_factory.mktemp("ray-fields")
    for name, (start, fields) in FIELD_FILES.items():
        records = [
            {"id": f"{name[0]}{i}", "text": f"{start}Then record {i} says its own thing.", **fields(i)}
            for i in range(5)
        ]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


def assert_same_run(ray_run: Path, single_run: Path) -> None:
    """Equal rows to a single-process run: numbers, ids and tokens exactly, scores to 1e-4; same metadata."""
    for kind in ("sequences.parquet", "tokens.parquet"):
        a, b = read_result(single_run, kind), read_result(ray_run, kind)
        assert a.schema.names == b.schema.names and a.num_rows == b.num_rows
        for name in a.schema.names:
            x, y = a.column(name).to_numpy(zero_copy_only=False), b.column(name).to_numpy(zero_copy_only=False)
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(y, x, atol=1e-4, rtol=1e-5, equal_nan=True, err_msg=f"{kind} {name}")
            else:
                assert list(x) == list(y), f"{kind} {name}"
    meta_a, meta_b = run_metadata(single_run), run_metadata(ray_run)
    assert meta_b.pop("shards").isdigit()
    assert meta_a == meta_b
    sa, sb = (json.loads((d / "summary.json").read_text())["summary"] for d in (single_run, ray_run))
    for key in ("documents", "scored_tokens", "words", "unscored", "rejected"):
        assert sa[key] == sb[key], key
    for key in ("perplexity", "bits_per_byte", "mean_entropy", "mean_doc_perplexity"):
        assert sb[key] == pytest.approx(sa[key], rel=1e-6), key
    assert [d["doc"] for d in sa["highest"]] == [d["doc"] for d in sb["highest"]]
    assert sb["perplexity_ci"] == pytest.approx(sa["perplexity_ci"], rel=1e-6)


def test_plan_cuts_files_line_ranges_and_row_groups(corpus: Path):
    from scorecli.executors.scaleout import plan_shards, shard_records

    sources = expand_inputs([str(corpus)])
    fields = Fields()
    planned = plan_shards(sources, 40)  # a share of them by size: the small Parquet file gets a few
    by_file = [sum(s.source == src for s in planned) for src in sources]
    assert by_file[0] > 1 and by_file[1] > 1 and by_file[2] == 1  # JSONL and Parquet are cut, .txt is not
    parquet = [s for s in planned if s.source.endswith(".parquet")]
    assert all(s.records % 5 == 0 for s in parquet[:-1])  # whole row groups of 5 rows
    whole = [(r.doc, r.id, r.text, r.line) for r in read_corpus(sources, fields)]
    cut = [(r.doc, r.id, r.text, r.line) for s in planned for r in shard_records(s, fields, None)]
    assert cut == whole
    assert [s.first_doc for s in planned] == [r[0] for r in whole if any(r[0] == s.first_doc for s in planned)]
    limited = plan_shards(sources, 8, limit=45)
    assert sum(s.records for s in limited) == 45
    assert [r.doc for s in limited for r in shard_records(s, fields, None)] == list(range(45))
    # A resumed shard starts after the records its saved parts hold.
    resumed = [r.doc for r in shard_records(planned[1], fields, None, skip=3)]
    assert resumed == list(range(planned[1].first_doc + 3, planned[1].first_doc + planned[1].records))


def test_joined_cluster_equals_single_process_kept_fields_typed_apart_in_shards(
    fields_corpus, ray_head, gpt2_dir, tmp_path
):
    args = ["score", str(fields_corpus), "-m", str(gpt2_dir), "--threads", "1", "--keep-fields", KEPT]
    single_run, out = tmp_path / "single", tmp_path / "ray"
    result = runner.invoke(app, [*args, "-o", str(single_run), "-q"])
    assert result.exit_code == 0, result.output
    ray_args = ["--ray", "--ray-address", ray_head, "--workers", "1", "--shards", "2"]
    result = runner.invoke(app, [*args, "-o", str(out), *ray_args])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (out / "tokens").iterdir())
    assert files == ["00000.parquet", "00001.parquet"]  # a shard per file
    assert sorted(p.name for p in (out / "sequences").iterdir()) == files
    assert "Ray: 2 of 2 shards scored" in result.output, result.output
    assert not (out / "shards").exists()
    single = pq.read_table(single_run / "sequences.parquet")
    sharded = pq.read_table(out / "sequences")
    assert sharded.schema.remove_metadata() == single.schema.remove_metadata()
    for name in ("lang", "n", "tag", "meta"):  # the kept fields: same types (and field metadata), same values
        assert sharded.schema.field(name).equals(single.schema.field(name), check_metadata=True), name
        assert sharded.column(name).to_pylist() == single.column(name).to_pylist(), name
    assert single.schema.field("n").type == pa.float64() and single.column("n").to_pylist()[:2] == [0.0, 1.0]
    assert run_metadata(single_run)["kept_types"] == run_metadata(out)["kept_types"]
    assert json.loads(run_metadata(out)["kept_types"])["tag"] == "json"
    assert_same_run(out, single_run)
    # Each file's documents share a start within the file, so within a shard: tokens fed and shared are equal too.
    summary = json.loads((out / "summary.json").read_text())["summary"]
    want = json.loads((single_run / "summary.json").read_text())["summary"]
    assert (summary["fed_tokens"], summary["shared_tokens"]) == (want["fed_tokens"], want["shared_tokens"])
    assert summary["shared_tokens"] > 0 and summary["fed_tokens"] + summary["shared_tokens"] >= summary["scored_tokens"]
    # The datasets are one table to pyarrow (and so pandas, polars, duckdb), in input order.
    assert sharded.column("doc").to_pylist() == list(range(10))
    # summary, compare and report read the layout.
    result = runner.invoke(app, ["summary", str(out)])
    assert result.exit_code == 0 and "perplexity" in result.output
    result = runner.invoke(app, ["compare", str(single_run), str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["documents"] == 10
    result = runner.invoke(app, ["show", str(out), "--doc", "7"])
    assert result.exit_code == 0 and "b2" in result.output  # doc 7: the second file's 3rd record, id b2
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.html").is_file()
    # The same command again: nothing to do.
    result = runner.invoke(app, [*args, "-o", str(out), *ray_args])
    assert result.exit_code == 0 and "nothing to do" in result.output


HINT = "run the same command again"


def _interrupted(command: list[str], env: dict | None = None, signal_at: str | None = None) -> tuple[int, str]:
    """Run `command`, made to send itself SIGINT at the test hook's stage `signal_at`: its exit code and stderr."""
    env = {**os.environ, **(env or {}), **({FAULT_ENV: signal_at} if signal_at else {})}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stderr


def _complete_shards(out: Path) -> dict[str, int]:
    """The complete shards of an unfinished run: their names and their tokens files' mtimes."""
    return {p.parent.name: (p.parent / "tokens.parquet").stat().st_mtime_ns for p in out.glob("shards/*/summary.json")}


def test_ctrl_c_while_scoring_after_a_shard_and_while_joining_then_the_same_command_completes(
    corpus, single, ray_head, gpt2_dir, tmp_path
):
    # Two workers on six shards (the report): each interrupt ends in 130 (143 for SIGTERM) with the rerun
    # hint, never inside Ray; each next run of the same command goes on from there.
    out = tmp_path / "run"
    command = [*SCORECLI, "score", str(corpus), "-m", str(gpt2_dir), *SCORING, "-o", str(out)]
    command += ["--ray", "--ray-address", ray_head, "--workers", "2", "--shards", "6"]
    # Mid-shard: as soon as a shard reports its first saved part.
    code, err = _interrupted(command, signal_at="ray-scoring")
    assert code == 130 and HINT in err, err
    planned = len(json.loads((out / "shards" / "plan.json").read_text())["shards"])
    assert len(_complete_shards(out)) < planned
    # After a shard: SIGTERM, for real, as soon as one more shard is complete (with a worker still busy on another,
    # whose task may complete meanwhile: the moment that crashed inside Ray when the driver cancelled it).
    before = len(_complete_shards(out))
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while len(_complete_shards(out)) <= before:
        assert proc.poll() is None and time.monotonic() < deadline, proc.poll() is not None and proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and HINT in err, err
    complete = _complete_shards(out)
    assert before < len(complete) < planned
    # While joining: after the first shard's files are moved into the datasets.
    code, err = _interrupted(command, signal_at="ray-joining")
    assert code == 130 and HINT in err, err
    assert (out / "tokens" / "00000.parquet").is_file() and (out / "shards").is_dir()
    assert not (out / "summary.json").exists()
    # The same command again completes the join, scoring nothing again.
    rerun = runner.invoke(app, command[3:])
    assert rerun.exit_code == 0, rerun.output
    assert f"Ray: 0 of {planned} shards scored" in rerun.output
    for name, mtime in complete.items():  # moved into the dataset, never written again
        assert (out / "tokens" / f"{name}.parquet").stat().st_mtime_ns == mtime
    assert_same_run(out, single)


def _listening(pids: set[int]) -> set[tuple[str, str]]:
    """The addresses the processes `pids` listen on (TCP) or are bound to (UDP), with the process names."""
    import psutil

    found = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            name = process.name()
            sockets = process.net_connections(kind="inet")
        except psutil.Error:  # it ended meanwhile
            continue
        for c in sockets:
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                found.add((name, c.laddr.ip))
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_auto_started_cluster_listens_on_loopback_only_keeps_ray_quiet_and_survives_a_killed_worker(
    corpus, single, gpt2_dir, tmp_path
):
    import psutil

    out, marker, home = tmp_path / "run", tmp_path / "killed", tmp_path / "home"
    home.mkdir()
    # Ray's defaults, as a user has them: token authentication on (its token made in this HOME) and its notice.
    # The fault (a worker killed once) the driver hands to its workers.
    env = {**os.environ, "HOME": str(home), FAULT_ENV: f"part-saved:KILL:{marker}"}
    env.pop("RAY_AUTH_MODE", None)
    command = [*SCORECLI, "score", str(corpus), "-m", str(gpt2_dir), *SCORING, "-o", str(out), "--ray"]
    command += ["--workers", "1", "-q"]
    # Ctrl-C as Ray starts: held until the cluster is up (its start never cut halfway), then it is stopped, and
    # the interrupt is reported in one line, nothing from Ray.
    code, err = _interrupted(command, env, signal_at="ray-start")
    assert code == 130 and err.splitlines() == [
        f"scorecli: interrupted; complete shards and the parts of the others are kept in {out}; run the same "
        f"command again (or: scorecli score -o {out} --resume) to go on"
    ]
    assert not (out / "shards").exists()  # nothing was planned
    # The same command: every process of its cluster listens on loopback only, the whole time.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    driver, seen = psutil.Process(proc.pid), set()
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            seen |= _listening({proc.pid, *(p.pid for p in driver.children(recursive=True))})
        time.sleep(0.1)
    stdout, err = proc.communicate()
    assert proc.returncode == 0, err
    names = {name for name, _ in seen}
    assert {"gcs_server", "raylet"} <= names and any("_score_shard_task" in n for n in names), seen
    assert all(_loopback(ip) for _, ip in seen), seen
    # Ray's lines (the token notice, its banner, the raylet's word of the killed worker) are kept in its log folder:
    # with -q, nothing on stderr nor stdout (where Ray prints what the cluster tells the driver).
    assert err == "" and stdout == ""
    logs = Path(tempfile.gettempdir(), "ray").glob(f"session_*/logs/scorecli-driver-{proc.pid}.log")
    logs = {p.resolve() for p in logs}  # session_latest is a link to one of them
    assert len(logs) == 1 and "Token authentication is enabled" in logs.pop().read_text()
    assert (home / ".ray" / "auth_token").is_file()
    assert marker.is_file()  # the worker did SIGKILL itself after saving a part; its shard was retried in a new one
    assert_same_run(out, single)


def _handlers() -> dict:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def test_signals_held_while_ray_starts_are_handled_after_it_by_the_handlers_from_before():
    from scorecli.executors.scaleout import _is_loopback, _signals_held

    # Only the first signal of an `as_exceptions` block raises (the run is stopping): one block per check.
    with interrupts.as_exceptions():
        before = _handlers()
        done = []
        with pytest.raises(KeyboardInterrupt):
            with _signals_held():
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(15))  # as ray.init does
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                done.append("the block")  # not cut: the signal is only noted
        assert done == ["the block"]
        assert _handlers() == before  # as_exceptions' handlers again, not the block's
    with interrupts.as_exceptions():
        before = _handlers()
        # A block that raises: its exception goes on, and the signal noted meanwhile is dropped; so with `drop`.
        with pytest.raises(ValueError):
            with _signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                raise ValueError
        with _signals_held(drop=True):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert _handlers() == before
    with interrupts.as_exceptions():
        before = _handlers()
        # Not held: a signal is handled at once, and the handlers from before are put back all the same.
        with pytest.raises(KeyboardInterrupt):
            with _signals_held(hold=False):
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(15))
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert _handlers() == before
    assert [_is_loopback(h) for h in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost")] == [True] * 4
    assert [_is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.2", "")] == [False] * 4


@pytest.mark.realmodel
def test_smollm_on_ray_equals_single_process(ray_head, tmp_path):
    args = ["score", str(SAMPLES / "long.jsonl"), "--limit", "6", "--max-length", "64", "--threads", "1"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "single"), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, [*args, "-o", str(tmp_path / "ray"), "--ray", "--ray-address", ray_head, "--workers", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert_same_run(tmp_path / "ray", tmp_path / "single")


def test_a_choice_run_on_ray_equals_single_process(ray_head, gpt2_dir, tmp_path):
    rows = [
        {"id": f"r{i}", "q": f"Question {i}:", "choices": [" yes", " no", f" {i}"], "label": i % 3} for i in range(9)
    ]
    data = tmp_path / "choices.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["score", str(data), "-m", str(gpt2_dir), "--threads", "1", "--prompt-field", "q"]
    args += ["--choices-field", "choices", "--label-field", "label", "--unconditional"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "single"), "-q"])
    assert result.exit_code == 0, result.output
    ray_args = ["--ray", "--ray-address", ray_head, "--workers", "1", "--shards", "2"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "ray"), *ray_args, "-q"])
    assert result.exit_code == 0, result.output
    assert_same_run(tmp_path / "ray", tmp_path / "single")
    single, sharded = (
        read_result(tmp_path / "single", "choices.parquet"),
        read_result(tmp_path / "ray", "choices.parquet"),
    )
    assert (
        sharded.column("doc").to_pylist() == single.column("doc").to_pylist() == [d for d in range(9) for _ in range(3)]
    )
    np.testing.assert_allclose(sharded.column("pmi").to_numpy(), single.column("pmi").to_numpy(), atol=1e-4)
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text())["summary"] for d in ("single", "ray"))
    assert sb["accuracy_sum"] == sa["accuracy_sum"] and sb["accuracy_sum_ci"] == sa["accuracy_sum_ci"]
    streamed = runner.invoke(app, [*args, "--out", "-", *ray_args])
    assert streamed.exit_code == 0, streamed.output
    lines = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [len(line["choices"]) for line in lines] == [3] * 9


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    result = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-o", str(tmp_path / "r"), "--ray"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "scorecli: error: --ray needs Ray, which is not installed: pip install 'scorecli[ray]'"
    ]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "4"], "--shards goes with --ray"),
        (["--ray", "-o", "-", "--words"], "--rows words writes word rows"),
        (["--ray", "--rows", "tokens"], "--rows is for --out -"),
        (["--ray", "--join", " "], "--join scores the input as one document"),
        (["--ray", "--workers", "0"], "--workers must be at least 1, not 0"),
    ],
)
def test_ray_usage_errors(args, message, tmp_path):
    out = [] if "-o" in args else ["-o", str(tmp_path / "r")]
    result = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), *out, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_device_cuda_is_checked_against_the_cluster_not_the_driver(ray_head, gpt2_dir, tmp_path):
    # This driver has no CUDA either: the message must be about the cluster's GPUs, found through Ray.
    out = tmp_path / "r"
    args = ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(out), "--device", "cuda"]
    result = runner.invoke(app, [*args, "--ray", "--ray-address", ray_head])
    assert result.exit_code == 2, result.output
    assert result.stderr == "scorecli: error: --device cuda: no task would get a GPU (the Ray cluster has no GPU)\n"
    assert not out.exists()


def _same_line(got: dict, want: dict) -> None:
    """Equal JSON lines: the same keys in order, values exactly but for floats (to 1e-4)."""
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-4, rel=1e-5), key
        else:
            assert got[key] == value, key


# Standard output's lines are written in input order, each shard's once all before it are: with 2 workers the
# shards can end out of order. Words rows on 1 worker: its words are all the run checks.
@pytest.mark.parametrize(("rows", "workers"), [("sequences", "2"), ("words", "1")])
def test_stdout_streams_the_lines_and_skipped_records_of_a_single_process_run(
    fields_corpus, ray_head, gpt2_dir, tmp_path, monkeypatch, rows, workers
):
    # Bad records in both files (so in both shards): each is named on stderr, the file as typed (relative here).
    (tmp_path / "bad").mkdir()
    for name in FIELD_FILES:
        good = (fields_corpus / name).read_text(encoding="utf-8").splitlines()
        lines = [good[0], '{"id": "cut", "text": "an unfinished', good[1], json.dumps({"text": 7}), *good[2:]]
        (tmp_path / "bad" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    args = ["score", "bad", "-m", str(gpt2_dir), "--threads", "1", "--keep-fields", KEPT, "--on-error", "skip"]
    args += ["-o", "-", "--rows", rows]
    single = runner.invoke(app, args)
    assert single.exit_code == 0, single.output
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where --ray -o - keeps its shards while it runs
    result = runner.invoke(app, [*args, "--ray", "--ray-address", ray_head, "--workers", workers, "--shards", "2"])
    assert result.exit_code == 0, result.output
    want = [json.loads(line) for line in single.stdout.splitlines()]
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(got) == len(want) >= 10
    assert len({line["doc"] for line in want}) == 10  # the good records
    for a, b in zip(got, want):
        _same_line(a, b)
    assert "perplexity" in result.stderr and "Ray: 2 of 2 shards scored" in result.stderr  # the summary: stderr
    assert list(temp.iterdir()) == []  # the shards' folder is gone
    want = [line for line in single.stderr.splitlines() if line.startswith("scorecli: skipped")]
    got = [line for line in result.stderr.splitlines() if line.startswith("scorecli: skipped")]
    assert len(want) == 4 and want[0].startswith("scorecli: skipped bad/a.jsonl: line 2: ")
    assert got == want


def test_in_order_hands_shards_on_in_input_order():
    from scorecli.executors.scaleout import InOrder, Shard

    emitted = []
    callback = InOrder(emitted.append)
    for number in (2, 0, 3, 1, 4):
        callback(Shard(number, "f.jsonl", number * 10, 10), Path(f"s{number}"))
        assert emitted == [Path(f"s{n}") for n in range(len(emitted))]
    assert len(emitted) == 5
