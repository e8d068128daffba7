"""`scorecli.run`, `scorecli.open_run` and `ScoreOptions` as a library user calls them: a run stopped by an
injected fault resumes to the very files of an uninterrupted run, in one process and on Ray."""

from __future__ import annotations

import ast
import io
import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import RAY_QUIET, ROOT, TIMINGS, sample_texts

import scorecli
from scorecli import RunInterrupted, ScoreOptions
from scorecli.base.errors import OutputError, UsageError
from scorecli.base.faults import FAULT_ENV
from scorecli.data.options import SPECS

# Timings, which no two runs share (and the sessions a resumed run counts).


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 short documents, a few bad: several read-ahead buffers (parts) at a small token budget."""
    texts = sample_texts() + sample_texts("edge_cases.jsonl")
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = [json.dumps({"id": f"c{i}", "text": f"{i}: {texts[i % len(texts)]}"}) for i in range(400)]
    lines[7] = '{"id": "bad", "text": 7}'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _options(gpt2_dir: Path, **more) -> ScoreOptions:
    return ScoreOptions(
        **{"model": str(gpt2_dir), "batch_tokens": 64, "threads": 1, "words": True, "on_error": "skip", **more}
    )


def assert_identical(a: Path, b: Path) -> None:
    """The same files in both run folders, byte for byte; summary.json but for its timings."""
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert "sequences.parquet" in names or "sequences/00000.parquet" in names
    for name in names:
        if name == "summary.json":
            x, y = (json.loads((d / name).read_text()) for d in (a, b))
            for timing in TIMINGS:
                x["summary"].pop(timing), y["summary"].pop(timing)
            assert x == y
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_run_stopped_after_its_first_part_resumes_to_the_files_of_an_uninterrupted_run(
    gpt2_dir, corpus, tmp_path, monkeypatch
):
    options = _options(gpt2_dir)
    straight = scorecli.run(str(corpus), tmp_path / "straight", options)
    assert straight.out == tmp_path / "straight" and not straight.nothing_to_do
    out = tmp_path / "o"
    monkeypatch.setenv(FAULT_ENV, "part-saved")  # Ctrl-C as soon as the first part is saved
    with pytest.raises(RunInterrupted) as stopped:
        scorecli.run(str(corpus), out, options)
    assert stopped.value.out == str(out) and stopped.value.resumable and not stopped.value.terminated
    part = pq.read_table(out / "parts" / "sequences")
    assert stopped.value.docs_saved == part.num_rows and 0 < part.num_rows < 390
    assert not (out / "summary.json").exists()
    # What `resume` takes: the inputs and every option a run saves (local paths made absolute).
    saved = json.loads((out / "parts" / "run.json").read_text())["options"]
    # The options, and the files the run read (absolute: a resume reads these, from any folder).
    assert list(saved) == ["input", *(name for name, spec in SPECS.items() if spec.saved), "files"]
    assert saved == {**options.saved([str(corpus)]), "files": [str(corpus.resolve())]}
    assert saved["input"] == [str(corpus.resolve())]
    assert ScoreOptions.from_saved(saved) == replace(options, model=str(Path(gpt2_dir).resolve()))

    progress = []
    resumed = scorecli.run(out=out, resume=True, progress=progress.append)  # the saved inputs and options
    assert resumed.figures["documents"] == straight.figures["documents"] == 399
    assert_identical(out, tmp_path / "straight")
    stages = [p.stage for p in progress]
    assert stages[0] == "loading" and "loaded" in stages and stages[-1] == "saved"
    assert progress[-1].docs_done == 400 and progress[stages.index("scoring")].docs_done == part.num_rows + 1

    run, alone = scorecli.open_run(out), scorecli.open_run(tmp_path / "straight")
    assert run.sequences.equals(alone.sequences) and run.tokens.equals(alone.tokens)
    assert run.words.num_rows == alone.words.num_rows > 0
    assert run.metadata == alone.metadata == resumed.metadata
    assert run.summary["documents"] == 399 and run.summary["rejected"] == 1
    assert run.find_doc(doc_id="c9")["doc"] == 9


@pytest.mark.ray
def test_a_ray_run_stopped_after_a_shard_resumes_to_the_files_of_an_uninterrupted_run(
    gpt2_dir, corpus, tmp_path, monkeypatch
):
    pytest.importorskip("ray")
    for key, value in RAY_QUIET.items():
        monkeypatch.setenv(key, value)
    options = _options(gpt2_dir, ray=True, workers=1, shards=3)  # a local cluster, started by the run
    straight = scorecli.run(str(corpus), tmp_path / "straight", options)
    assert straight.sharded and straight.shards == straight.shards_scored == 3
    out = tmp_path / "o"
    monkeypatch.setenv(FAULT_ENV, "shard-complete")  # Ctrl-C in the driver once the first shard is complete
    with pytest.raises(RunInterrupted) as stopped:
        scorecli.run(str(corpus), out, options)
    assert stopped.value.sharded and stopped.value.out == str(out)
    assert (out / "shards" / "00000" / "summary.json").is_file() and not (out / "summary.json").exists()

    resumed = scorecli.run(out=out, resume=True, options=ScoreOptions(workers=1))
    assert resumed.shards == 3 and resumed.shards_scored == 2
    assert_identical(out, tmp_path / "straight")
    run = scorecli.open_run(out)
    assert run.files("tokens.parquet") == [out / "tokens" / f"0000{n}.parquet" for n in range(3)]
    assert run.sequences.equals(scorecli.open_run(tmp_path / "straight").sequences)
    assert run.sequences.num_rows == 399 and run.metadata["shards"] == "3" and run.summary["rejected"] == 1


@pytest.mark.ray
def test_a_ray_run_the_options_leave_empty_is_refused_as_in_one_process(gpt2_dir, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    for key, value in RAY_QUIET.items():
        monkeypatch.setenv(key, value)
    data = tmp_path / "empty.jsonl"
    data.write_text("".join(json.dumps({"q": f"question {i}?", "a": ""}) + "\n" for i in range(6)))
    options = ScoreOptions(model=str(gpt2_dir), prompt_field="q", response_field="a", threads=1)
    errors = []
    for where, more in (("single", {}), ("ray", {"ray": True, "workers": 1, "shards": 2})):
        with pytest.raises(UsageError) as refused:
            scorecli.run(str(data), tmp_path / where, ScoreOptions(**{**options.__dict__, **more}))
        errors.append(str(refused.value))
        assert not (tmp_path / where).exists()  # nothing worth resuming is kept
    assert errors[0] == errors[1] == "response_field a: the response is empty in every record, so nothing was scored"


def test_a_run_onto_a_stream_writes_the_rows_of_a_folder_run(gpt2_dir, corpus, tmp_path):
    options = _options(gpt2_dir, limit=30, words=False)
    stream, skipped = io.StringIO(), []
    result = scorecli.run(str(corpus), stream, options, rows="sequences", on_reject=skipped.append)
    assert result.out is None and result.written == [] and result.figures["documents"] == 29
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r.doc for r in skipped] == [7] and skipped[0].line == 8
    folder = scorecli.run(str(corpus), tmp_path / "o", options)
    rows = scorecli.open_run(folder.out).sequences.to_pylist()
    assert [line["doc"] for line in lines] == [row["doc"] for row in rows]
    assert [line["n_tokens"] for line in lines] == [row["n_tokens"] for row in rows]
    assert lines[0]["mean_logprob"] == pytest.approx(rows[0]["mean_logprob"], abs=1e-6)


def test_score_options_check_their_values_and_fill_in_what_an_old_run_lacks(tmp_path):
    with pytest.raises(UsageError) as bad:
        ScoreOptions(top_k=-1)
    assert str(bad.value) == "top_k must be at least 0, not -1" and bad.value.arg == "top_k"
    with pytest.raises(UsageError, match="cannot be combined with `prompt_field`"):
        ScoreOptions(text_field="t", prompt_field="p", response_field="r")
    with pytest.raises(UsageError, match="goes with `ray`"):
        scorecli.run("x.jsonl", tmp_path / "x", ScoreOptions(workers=2))
    assert not (tmp_path / "x").exists()
    # A run saved before an option existed was scored as before it existed; a resume changes what it is given.
    saved = {k: v for k, v in ScoreOptions(top_k=3).saved(["x.jsonl"]).items() if k not in ("prefix_sharing",)}
    old = ScoreOptions.from_saved(saved)
    assert old.prefix_sharing is False and old.top_k == 3 and old.head_dtype == "auto"
    assert ScoreOptions(top_k=5, dtype="bfloat16").resumed(saved, given={"dtype"}) == replace(old, dtype="bfloat16")


def test_open_run_refuses_a_folder_that_holds_no_finished_run(tmp_path):
    with pytest.raises(OutputError, match="no such run folder"):
        scorecli.open_run(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "sequences.parquet").write_bytes(b"")
    with pytest.raises(OutputError, match=r"not a finished scorecli run \(no tokens.parquet\)"):
        scorecli.open_run(tmp_path / "half")


def _imports(path: Path) -> set[str]:
    """The modules a source file imports, at any depth (but under TYPE_CHECKING, which never runs)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            nodes = node.orelse
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            nodes = []
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
            nodes = []
        else:
            nodes = list(ast.iter_child_nodes(node))
        for child in nodes:
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_the_package_has_no_import_cycle_and_only_the_command_line_imports_typer():
    package = ROOT / "scorecli"
    modules = {
        ".".join(["scorecli", *p.relative_to(package).with_suffix("").parts]).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph = {name: {m for m in _imports(p) if m in modules} - {name, "scorecli"} for name, p in modules.items()}
    typer_users = [name for name, p in modules.items() if any(m.split(".")[0] == "typer" for m in _imports(p))]
    assert typer_users == ["scorecli.cli"]
    # The library never calls the command line; only the entry point does.
    assert [name for name, deps in graph.items() if "scorecli.cli" in deps] == ["scorecli.__main__"]
    done: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"an import cycle: {' → '.join((*path, name))}"
        if name not in done:
            for dep in sorted(graph[name]):
                walk(dep, (*path, name))
            done.add(name)

    for name in sorted(graph):
        walk(name, ())
    loops = {"scorecli.executors.session", "scorecli.executors.scaleout"}
    assert loops <= graph["scorecli.runner"] and "scorecli.executors.session" in graph["scorecli.executors.scaleout"]
