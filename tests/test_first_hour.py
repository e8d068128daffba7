"""A new user's first hour: getting started, help, model loading that says what it does and never prints
from the library, the small options (--limit, --threads, --revision, --trust-remote-code), surprisal in
bits, `scorecli summary DIR`, and library messages that name arguments, not flags."""

import ast
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SAMPLES, one_line_error, reference_scores, sample_texts
from typer.main import get_command
from typer.testing import CliRunner

from scorecli.base.errors import InputError, ModelError, OutputError, UsageError
from scorecli.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, app
from scorecli.engine import models
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import read_records
from scorecli.runfolder.outputs import read_metadata

runner = CliRunner()
SCORECLI = [sys.executable, "-m", "scorecli"]


# Getting started


def test_scorecli_alone_shows_the_help_as_a_subprocess():
    proc = subprocess.run(SCORECLI, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: scorecli" in proc.stdout and "score" in proc.stdout and "summary" in proc.stdout
    assert "Missing command" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [[], ["score"], ["summary"]])
def test_dash_h_is_help_everywhere(args):
    short, long = runner.invoke(app, [*args, "-h"]), runner.invoke(app, [*args, "--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout and "Usage: " in short.stdout and "-h" in short.stdout


def test_score_help_has_examples_and_every_exit_code():
    text = runner.invoke(app, ["score", "--help"], terminal_width=100).stdout
    epilog = text[text.index("Examples:") :]
    examples = [line.strip() for line in epilog.splitlines() if line.strip().startswith("scorecli score")]
    assert 2 <= len(examples) <= 3
    codes = [UsageError, InputError, ModelError, OutputError]
    for code in [0, *(e.exit_code for e in codes), EXIT_INTERRUPTED, EXIT_TERMINATED]:
        assert re.search(rf"\b{code}\b", epilog[epilog.index("Exit codes") :]), code
    # An example must at least parse: each is a valid command line for `score` (options it knows).
    command = get_command(app).commands["score"]
    known = {name for p in command.params for name in p.opts + p.secondary_opts}
    for example in examples:
        assert {a for a in shlex.split(example) if a.startswith("-") and a != "-"} <= known, example


def test_make_demo_says_how_to_run_scorecli_next(gpt2_dir, tmp_path):
    """`make demo` (on the installed environment) scores, then prints the way to `scorecli` on the PATH."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "scorecli").exists():
        pytest.skip("not running from an installed virtual environment")
    out = tmp_path / "demo.scores"
    proc = subprocess.run(
        ["make", "-s", "-o", f"{venv}/bin/scorecli", "demo", f"VENV={venv}", f"DEMO_OUT={out}", f"MODEL={gpt2_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "sequences.parquet").is_file()
    assert f"source {venv}/bin/activate" in proc.stdout
    # What it says works: after activation, `scorecli` is found on the PATH.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    shell = subprocess.run(
        ["bash", "-c", f"source {venv}/bin/activate && scorecli --version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert shell.returncode == 0 and shell.stdout.startswith("scorecli "), shell.stderr
    assert "source .venv/bin/activate" in (ROOT / "README.md").read_text()


# Model loading


def test_the_library_prints_nothing_while_loading(gpt2_dir, capfd, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(models, "_loaded", {})
    bars = hf_logging.is_progress_bar_enabled()
    events = []
    loaded = models.load_model(str(gpt2_dir), device="cpu", dtype="float32", progress=events.append)
    assert capfd.readouterr() == ("", "")
    assert events == [models.LoadStep("loading", str(gpt2_dir))] and str(events[0]) == f"loading model {gpt2_dir}"
    assert loaded.model.config.n_layer == 2
    assert hf_logging.is_progress_bar_enabled() == bars  # the library leaves transformers' settings as they were


@pytest.mark.realmodel
def test_a_cold_cache_says_it_is_converting_and_nothing_else_prints(tmp_path, capfd, monkeypatch):
    # A cache of its own: the suite's is shared with tests that run beside this one (pytest-xdist), which
    # may be converting SmolLM2 into it at this very moment.
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCORECLI_CACHE_DIR", str(cache))
    monkeypatch.setattr(models, "_loaded", {})
    out = tmp_path / "o"
    result = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-o", str(out), "--limit", "2"])
    assert result.exit_code == 0, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("scorecli: converting SmolLM2-135M-Instruct.Q4_1.gguf to a transformers model, once")
    assert f"cached in {cache / 'gguf'}" in first
    # Neither transformers' bars nor its warnings: only scorecli's own lines.
    assert "Loading weights" not in result.output and "de-quantizing" not in result.output and "%|" not in result.output
    assert capfd.readouterr() == ("", "")
    assert len(list((cache / "gguf").iterdir())) == 1
    # Warm: no conversion, and no mention of one.
    warm = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-o", str(out), "--limit", "2", "--overwrite"])
    assert warm.exit_code == 0 and "converting" not in warm.stderr


# Small expected things


def test_limit_scores_the_first_records(gpt2_dir, tmp_path):
    full, limited = tmp_path / "full", tmp_path / "limited"
    assert (
        runner.invoke(
            app, ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(full), "-q"]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(limited), "--limit", "3"]
    )
    assert result.exit_code == 0, result.output
    seqs = pd.read_parquet(limited / "sequences.parquet")
    assert seqs["doc"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(seqs, pd.read_parquet(full / "sequences.parquet").iloc[:3])
    assert read_metadata(limited / "tokens.parquet")["limit"] == "3"
    assert "limit" not in read_metadata(full / "tokens.parquet")
    assert json.loads((limited / "summary.json").read_text())["summary"]["documents"] == 3
    line = one_line_error(
        runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "--limit", "0", "-o", str(tmp_path / "zero")]), 2
    )
    assert line == "scorecli: error: --limit must be at least 1, not 0"


def test_read_records_limit_counts_rejected_records(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "a"}\n{"text": null}\n{"text": "c"}\n{"text": "d"}\n')
    rejected = []
    records = list(read_records(data, limit=3, on_error=rejected.append))
    assert [r.text for r in records] == ["a", "c"] and [r.doc for r in rejected] == [1]
    with pytest.raises(UsageError, match="^limit must be at least 1, not -1$"):
        list(read_records(data, limit=-1))


def test_threads_are_used_recorded_and_exact(gpt2_dir, tmp_path):
    loaded = models.load_model(str(gpt2_dir), device="cpu", dtype="float32")
    before = torch.get_num_threads()
    scorer = Scorer(loaded.model, loaded.tokenizer, threads=1, batch_tokens=64)
    assert scorer.workers == 1 and scorer.metadata["threads"] == "1 (1 batch at a time)"
    assert Scorer(loaded.model, loaded.tokenizer, threads=3).workers == 3
    texts = sample_texts()[:6]
    for doc, text in zip(scorer.score_texts(texts), texts):
        ref, _ = reference_scores(loaded.model, loaded.tokenizer, text)
        assert np.abs(doc.logprobs - ref.numpy()).max() <= 1e-4
    assert torch.get_num_threads() == before  # scoring gives the thread setting back
    with pytest.raises(UsageError, match="^threads must be at least 1, not 0$"):
        Scorer(loaded.model, loaded.tokenizer, threads=0)
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(out), "--threads", "2", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert read_metadata(out / "tokens.parquet")["threads"] == "2 (2 batches at a time)"
    line = one_line_error(
        runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "--threads", "0", "-o", str(tmp_path / "zero")]), 2
    )
    assert line == "scorecli: error: --threads must be at least 1, not 0"


def test_revision_and_trust_remote_code_reach_from_pretrained(gpt2_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = []
    for auto in (AutoModelForCausalLM, AutoTokenizer):
        original = auto.from_pretrained.__func__

        def spy(cls, *args, _original=original, **kwargs):
            seen.append((cls.__name__, kwargs.get("revision"), kwargs.get("trust_remote_code")))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(models, "_loaded", {})
    out = tmp_path / "o"
    args = ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(out), "-q"]
    result = runner.invoke(app, [*args, "--revision", "main", "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    assert ("AutoModelForCausalLM", "main", True) in seen and ("AutoTokenizer", "main", True) in seen
    meta = read_metadata(out / "tokens.parquet")
    assert meta["revision"] == "main" and meta["trust_remote_code"] == "true"
    seen.clear()
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert seen and all(rev is None and trust is False for _, rev, trust in seen)
    assert "revision" not in read_metadata(out / "tokens.parquet")
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    line = one_line_error(
        runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(fake), "--revision", "v1"]), 2
    )
    assert line == "scorecli: error: --revision applies to hub models and model folders, not to GGUF files"


def test_surprisal_in_bits_as_the_docs_compute_it(gpt2_dir, tmp_path, monkeypatch):
    page = (ROOT / "docs" / "outputs.md").read_text()
    [line] = [line for line in page.splitlines() if line.startswith("python -c") and "surprisal_bits" in line]
    code = shlex.split(line)[2]
    folder = re.search(r"read_parquet\('([^']+)/tokens.parquet'\)", code).group(1)
    monkeypatch.chdir(tmp_path)
    args = ["score", str(SAMPLES / "stimuli.jsonl"), "-m", str(gpt2_dir), "-o", folder, "-q"]
    assert runner.invoke(app, args).exit_code == 0
    namespace = {}
    exec(code, namespace)
    tokens = namespace["t"]
    seqs = pd.read_parquet(Path(folder) / "sequences.parquet")
    # Bits per byte, computed by the engine in float64, is the documented bits summed over bytes.
    bits = tokens.groupby("doc")["surprisal_bits"].sum()
    np.testing.assert_allclose(
        bits / seqs.set_index("doc")["n_bytes"], seqs.set_index("doc")["bits_per_byte"], rtol=1e-5
    )
    assert len(tokens) == seqs["n_tokens"].sum() and math.isclose(
        tokens["surprisal_bits"].iloc[0], -tokens["logprob"].iloc[0] / math.log(2), rel_tol=1e-6
    )


def test_summary_reprints_a_finished_run(gpt2_dir, tmp_path):
    out = tmp_path / "o"
    run = runner.invoke(
        app,
        [
            "score",
            str(SAMPLES / "pairs.jsonl"),
            "-m",
            str(gpt2_dir),
            "-o",
            str(out),
            "--prompt-field",
            "prompt",
            "--response-field",
            "response",
        ],
    )
    assert run.exit_code == 0, run.output
    again = runner.invoke(app, ["summary", str(out)])
    assert again.exit_code == 0 and again.stderr == ""
    shown = run.stderr[: run.stderr.index("wrote ")]
    assert again.stdout == shown and "highest perplexity" in shown and "lowest perplexity" in shown
    # The extremes shown are the responses of the documents with the highest and lowest perplexity.
    seqs = pd.read_parquet(out / "sequences.parquet")
    pairs = [json.loads(line) for line in (SAMPLES / "pairs.jsonl").read_text().splitlines()]
    top = int(seqs["perplexity"].idxmax())
    line = next(line for line in shown.splitlines() if f" {pairs[top]['id']} " in line)
    assert line.split()[0] == str(top) and " ".join(pairs[top]["response"].split())[:10] in line
    assert pairs[top]["prompt"].split()[0] not in line.split(f" {pairs[top]['id']} ")[1]


def test_summary_of_a_folder_without_a_finished_run_is_one_line(tmp_path):
    unfinished = tmp_path / "unfinished"
    (unfinished / "parts").mkdir(parents=True)
    (unfinished / "parts" / "run.json").write_text('{"metadata": {}}')
    line = one_line_error(runner.invoke(app, ["summary", str(unfinished)]), 5)
    assert line == f"scorecli: error: {unfinished}: its run is not finished (see --resume)"
    (tmp_path / "empty").mkdir()
    line = one_line_error(runner.invoke(app, ["summary", str(tmp_path / "empty")]), 5)
    assert "holds no summary.json" in line
    line = one_line_error(runner.invoke(app, ["summary", str(tmp_path / "nowhere")]), 5)
    assert line == f"scorecli: error: {tmp_path / 'nowhere'}: no such folder"


# Library messages name arguments; the CLI names flags


def _cli_flags() -> set[str]:
    command = get_command(app).commands["score"]
    return {name for p in command.params for name in p.opts + p.secondary_opts if name.startswith("--")}


def test_no_library_message_names_a_cli_flag():
    flags = _cli_flags()
    found = []
    for path in sorted((ROOT / "scorecli").glob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise):
                for const in ast.walk(node):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        found += [(path.name, f) for f in re.findall(r"--[a-z][a-z-]*", const.value) if f in flags]
    assert not found


def test_a_library_error_names_the_argument_and_the_cli_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI's default output folder, mixed.scores/, is claimed here
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModelError) as e:
        models.load_model("someone/not-a-model-here")
    assert str(e.value).startswith("model someone/not-a-model-here: not in the local Hugging Face cache and 127.0.0.1")
    line = one_line_error(
        runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-m", "someone/not-a-model-here"]), 4
    )
    assert line.startswith("scorecli: error: --model someone/not-a-model-here: not in the local Hugging Face cache")
    assert list(tmp_path.iterdir()) == []  # the failed run removed the output folder it had created
    # load_model("gpt2") offline, as a user would call it, in a fresh process with an empty hub cache.
    code = "\n".join(
        [
            "from scorecli import load_model, ModelError",
            "try:",
            "    load_model('gpt2')",
            "except ModelError as e:",
            "    print(e)",
        ]
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.strip() == "model gpt2: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"
    assert proc.stderr == ""


def test_out_dir_not_empty_names_the_argument_in_the_library(tmp_path):
    from scorecli.runfolder.runs import claim_out_dir

    (tmp_path / "x").write_text("x")
    with pytest.raises(OutputError) as e:
        claim_out_dir(tmp_path)
    assert str(e.value) == f"out_dir {tmp_path}: the folder is not empty; pass `overwrite` to replace its results"
    assert e.value.for_cli({"out_dir": "--out", "overwrite": "--overwrite"}).startswith(f"--out {tmp_path}: the")
