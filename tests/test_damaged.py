"""Damaged run folders: every reader of a run (summary, show, compare, report, filter, score --resume) says in
one line which file is missing, empty, truncated, garbled or not the JSON object it should be, with exit code 5,
never a traceback. Runs are made once and copied for each case."""

import json
import random
import shutil
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import sample_texts
from typer.testing import CliRunner

from scorecli.base.errors import OutputError, reading
from scorecli.base.faults import FAULT_ENV
from scorecli.cli import app

SCORECLI = [sys.executable, "-m", "scorecli"]
runner = CliRunner()

PARQUET_DAMAGES = ("missing", "half", "garbled", "empty")
JSON_DAMAGES = (*PARQUET_DAMAGES, "not-an-object")
# What the one line says of each kind of damage.
SAID = {
    "missing": "is missing",
    "half": "cannot be read",
    "garbled": "cannot be read",
    "empty": "is empty",
    "not-an-object": "not a JSON object",
}


def _damage(path, kind):
    """Damage a file: remove it, cut it to half, replace its bytes by random ones, empty it, or make it a JSON array."""
    data = path.read_bytes()
    if kind == "missing":
        path.unlink()
    elif kind == "half":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbled":
        rng = random.Random(len(data))
        path.write_bytes(bytes(rng.randrange(256) for _ in data))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("[1, 2, 3]\n")


def _one_line(result, code=5):
    """The one line of a CliRunner or subprocess result that ended with `code`, checked for no traceback."""
    exit_code = getattr(result, "exit_code", getattr(result, "returncode", None))
    stderr = result.stderr
    assert exit_code == code, stderr
    assert "Traceback" not in stderr and "Traceback" not in result.stdout, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorecli: error: "), stderr
    return lines[0]


def _names(line, path):
    """Whether an error line names a file: by its path, or by its folder and its name."""
    return str(path) in line or (str(path.parent) in line and path.name in line)


@pytest.fixture(scope="module")
def runs(gpt2_dir, tmp_path_factory):
    """A finished run of 12 documents with --words, its input beside it, and a second run of the same input."""
    root = tmp_path_factory.mktemp("damaged")
    data = root / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(sample_texts()[:12])))
    for name in ("run", "twin"):
        args = ["score", str(data), "-m", str(gpt2_dir), "-o", str(root / name), "--words", "-q"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return data, root / "run", root / "twin"


@pytest.fixture(scope="module")
def ray_layout(runs, tmp_path_factory):
    """The finished run in a --ray run's layout: each result a folder of two shard files (tokens/00000.parquet, …)."""
    _, run, _ = runs
    out = tmp_path_factory.mktemp("ray") / "run"
    out.mkdir()
    shutil.copy(run / "summary.json", out / "summary.json")
    for kind in ("tokens", "sequences", "words"):
        table = pq.read_table(run / f"{kind}.parquet")
        table = table.replace_schema_metadata({**table.schema.metadata, b"shards": b"2"})
        (out / kind).mkdir()
        first = pc.less(table["doc"], 6)
        pq.write_table(table.filter(first), out / kind / "00000.parquet")
        pq.write_table(table.filter(pc.invert(first)), out / kind / "00001.parquet")
    return out


def _reader(command, data, run, twin, tmp_path):
    """The command line of a reader of `run`."""
    return {
        "summary": ["summary", run],
        "show": ["show", run, "--doc", 7],
        "compare": ["compare", run, twin],
        "report": ["report", run, "-o", tmp_path / "r.html"],
        "filter": ["filter", data, "--scores", run, "-o", tmp_path / "f.jsonl", "--max-perplexity", "1e300"],
    }[command]


# The files each reader reads, and the damage it is tried with (summary.json missing: the run is not finished).
READS = {
    "summary": {"summary.json": JSON_DAMAGES},
    "show": {"tokens.parquet": PARQUET_DAMAGES, "sequences.parquet": PARQUET_DAMAGES, "summary.json": ("missing",)},
    "compare": {"tokens.parquet": PARQUET_DAMAGES, "sequences.parquet": PARQUET_DAMAGES, "summary.json": ("missing",)},
    "report": {
        "tokens.parquet": PARQUET_DAMAGES,
        "sequences.parquet": PARQUET_DAMAGES,
        "words.parquet": PARQUET_DAMAGES,
        "summary.json": JSON_DAMAGES,
    },
    "filter": {"sequences.parquet": PARQUET_DAMAGES, "summary.json": ("missing",)},
}
CASES = [(c, name, kind) for c, files in READS.items() for name, kinds in files.items() for kind in kinds]


@pytest.mark.parametrize("command", READS)
def test_each_reader_reads_the_intact_runs(runs, ray_layout, tmp_path, command):
    data, run, twin = runs
    for i, folder in enumerate((run, ray_layout) if command != "summary" else (run,)):
        (tmp_path / str(i)).mkdir()
        result = runner.invoke(app, [str(a) for a in _reader(command, data, folder, twin, tmp_path / str(i))])
        assert result.exit_code == 0, result.output
        if command == "show":
            assert sample_texts()[7][:30] in result.stdout  # the document's text, from the input file


@pytest.mark.parametrize(("command", "name", "kind"), CASES)
def test_a_damaged_file_of_a_finished_run_is_one_line_naming_it(runs, tmp_path, command, name, kind):
    data, original, twin = runs
    run = tmp_path / "run"
    shutil.copytree(original, run)
    _damage(run / name, kind)
    line = _one_line(runner.invoke(app, [str(a) for a in _reader(command, data, run, twin, tmp_path)]))
    assert _names(line, run / name), line
    assert SAID[kind] in line or (kind == "missing" and f"no {name}" in line), line


RAY_READS = {
    "show": ("tokens", "sequences"),
    "compare": ("tokens", "sequences"),
    "report": ("tokens", "sequences", "words"),
    "filter": ("sequences",),
}
RAY_CASES = [
    (c, f"{kind}/{shard}.parquet", damage)
    for c, kinds in RAY_READS.items()
    for kind in kinds
    for shard in ("00000", "00001")
    for damage in PARQUET_DAMAGES
    if shard == "00001" or damage == "missing"
]


@pytest.mark.parametrize(("command", "name", "kind"), RAY_CASES)
def test_a_damaged_shard_file_of_a_ray_run_is_one_line_naming_it(runs, ray_layout, tmp_path, command, name, kind):
    data, _, twin = runs
    run = tmp_path / "run"
    shutil.copytree(ray_layout, run)
    _damage(run / name, kind)
    line = _one_line(runner.invoke(app, [str(a) for a in _reader(command, data, run, twin, tmp_path)]))
    assert str(run / name) in line and SAID[kind] in line, line


def test_a_shard_file_too_many_is_named(runs, ray_layout, tmp_path):
    data, _, twin = runs
    run = tmp_path / "run"
    shutil.copytree(ray_layout, run)
    shutil.copy(run / "tokens" / "00001.parquet", run / "tokens" / "00002.parquet")
    line = _one_line(runner.invoke(app, ["show", str(run), "--doc", "1"]))
    assert f"{run / 'tokens' / '00002.parquet'}: is not one of the run's 2 shard files" in line


@pytest.fixture(scope="module")
def unfinished(gpt2_dir, tmp_path_factory):
    """An interrupted run: a saved part, the documents in flight, and its input."""
    texts = sample_texts() + sample_texts("edge_cases.jsonl")
    root = tmp_path_factory.mktemp("unfinished")
    data = root / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}: {texts[i % len(texts)]}"}) + "\n" for i in range(120)))
    out = root / "o"
    args = ["score", str(data), "-m", str(gpt2_dir), "-o", str(out), "--batch-tokens", "32", "-q"]
    result = runner.invoke(app, args, env={FAULT_ENV: "part-written"})  # Ctrl-C as the first part is saved
    assert result.exit_code == 130, result.output
    parts = out / "parts"
    assert {p.name for p in parts.glob("*.json")} == {"run.json", "000000.json", "in-flight.json"}
    # A committed finish (parts/finished.json) names the final files; the damage tests damage a copy of one.
    (root / "finished.json").write_text(json.dumps({"files": ["tokens.parquet", "sequences.parquet", "summary.json"]}))
    return data, out, root / "finished.json"


RESUME_READS = {
    "parts/run.json": JSON_DAMAGES,
    "parts/000000.json": ("half", "garbled", "empty", "not-an-object"),  # missing: a part cut short, discarded
    "parts/tokens/000000.parquet": PARQUET_DAMAGES,
    "parts/sequences/000000.parquet": PARQUET_DAMAGES,
    "parts/in-flight.json": ("half", "garbled", "empty", "not-an-object"),  # missing: no documents in flight
    "parts/finished.json": ("half", "garbled", "empty", "not-an-object"),  # missing: no finish begun
}
# Part files are checked against their manifest's size and SHA-256 before they are read.
SAID_OF_PARTS = {"missing": "is missing", "half": "bytes, not the", "garbled": "checksum", "empty": "has 0 bytes"}


@pytest.mark.parametrize(("name", "kind"), [(n, k) for n, kinds in RESUME_READS.items() for k in kinds])
def test_resume_names_a_damaged_saved_file(unfinished, tmp_path, name, kind):
    _, original, finished = unfinished
    out = tmp_path / "o"
    shutil.copytree(original, out)
    if name == "parts/finished.json":
        shutil.copy(finished, out / name)
    _damage(out / name, kind)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    line = _one_line(runner.invoke(app, ["score", "-o", str(out), "--resume"]))
    assert line.startswith(f"scorecli: error: --out {out}: the saved run is damaged: ") and f"{name} " in line, line
    assert (SAID_OF_PARTS if name.endswith(".parquet") else SAID)[kind] in line, line
    assert line.endswith("pass --overwrite to start the run again")
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


def test_the_intact_unfinished_run_resumes(unfinished, tmp_path):
    _, original, _ = unfinished
    out = tmp_path / "o"
    shutil.copytree(original, out)
    assert runner.invoke(app, ["score", "-o", str(out), "--resume"]).exit_code == 0
    assert pq.read_table(out / "sequences.parquet").num_rows == 120


PLAN = {
    "options": {"input": ["in.jsonl"], "model": "m"},
    "shards": [{"number": 0, "source": "in.jsonl", "first_doc": 0, "records": 3, "at": [0, 0]}],
    "seconds": 0,
}


@pytest.mark.parametrize("kind", JSON_DAMAGES)
def test_resume_of_a_ray_run_names_a_damaged_plan(tmp_path, kind):
    pytest.importorskip("ray")
    out = tmp_path / "o"
    (out / "shards" / "00000").mkdir(parents=True)
    (out / "shards" / "plan.json").write_text(json.dumps(PLAN))
    _damage(out / "shards" / "plan.json", kind)
    line = _one_line(runner.invoke(app, ["score", "-o", str(out), "--resume"]))
    assert line.startswith(f"scorecli: error: --out {out / 'shards' / 'plan.json'}: ") and SAID[kind] in line, line


@pytest.mark.parametrize("damage", [{"options": []}, {"seconds": "x"}, {"shards": [{"number": 0}]}])
def test_a_plan_that_is_not_a_plan_is_named(tmp_path, damage):
    pytest.importorskip("ray")
    out = tmp_path / "o"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "plan.json").write_text(json.dumps({**PLAN, **damage}))
    line = _one_line(runner.invoke(app, ["score", "-o", str(out), "--resume"]))
    assert line.startswith(f"scorecli: error: --out {out / 'shards' / 'plan.json'}: cannot be read ("), line


def test_overwrite_of_a_ray_run_does_not_read_its_damaged_plan(runs, tmp_path):
    pytest.importorskip("ray")
    data, _, _ = runs
    out = tmp_path / "o"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "plan.json").write_text("{")
    # --workers 0 is refused after the saved plan would have been read, before Ray starts or anything is removed.
    result = runner.invoke(app, ["score", str(data), "-o", str(out), "--ray", "--overwrite", "--workers", "0"])
    assert _one_line(result, code=2) == "scorecli: error: --workers must be at least 1, not 0"


@pytest.mark.parametrize("command", ["show", "report"])
def test_the_issue_a_truncated_tokens_file_in_a_real_process(runs, tmp_path, command):
    _, original, _ = runs
    run = tmp_path / "run"
    shutil.copytree(original, run)
    _damage(run / "tokens.parquet", "half")
    args = ["show", str(run), "--doc", "0"] if command == "show" else ["report", str(run)]
    proc = subprocess.run([*SCORECLI, *args], capture_output=True, text=True, timeout=120)
    line = _one_line(proc)
    assert line.startswith(f"scorecli: error: {run / 'tokens.parquet'}: cannot be read (Parquet magic bytes"), line


def test_reading_turns_only_errors_of_reading_into_one_naming_the_file(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(OutputError, match=r"x\.json: is missing$"), reading(path):
        path.read_text()
    path.write_text("{")
    with pytest.raises(OutputError, match=r"x\.json: cannot be read \(not valid JSON: .* at line 1 column 2\)$"):
        with reading(path):
            json.loads(path.read_text())
    with pytest.raises(ZeroDivisionError), reading(path):  # not a reading error: it is not hidden
        1 / 0  # noqa: B018
