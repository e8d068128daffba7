import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLES, one_line_error, reference_scores, sample_texts
from typer.testing import CliRunner

from scorecli.base.faults import FAULT_ENV
from scorecli.cli import app
from scorecli.data.tables import SEQUENCE_SCHEMA, TOKEN_SCHEMA
from scorecli.runfolder.outputs import read_metadata

runner = CliRunner()
SCORECLI = [sys.executable, "-m", "scorecli"]


def _score(*args):
    return runner.invoke(app, ["score", *map(str, args)])


def test_score_writes_parquet_matching_the_reference(tiny, tmp_path):
    folder = tiny.info["model_path"]
    result = _score(SAMPLES / "mixed.jsonl", "--model", folder, "--out", tmp_path / "out", "--batch-tokens", 300)
    assert result.exit_code == 0, result.output
    assert "corpus perplexity" in result.stderr
    tokens = pq.read_table(tmp_path / "out" / "tokens.parquet")
    sequences = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert tokens.schema.remove_metadata() == TOKEN_SCHEMA
    assert sequences.schema.remove_metadata() == SEQUENCE_SCHEMA
    tokens, sequences = tokens.to_pandas(), sequences.to_pandas()
    texts = sample_texts()
    assert sequences["doc"].tolist() == list(range(len(texts)))
    assert sequences["id"].tolist() == [f"m{i:02d}" for i in range(len(texts))]
    for doc, text in enumerate(texts):
        rows = tokens[tokens["doc"] == doc]
        ref_lp, ref_ent = reference_scores(tiny.model, tiny.tokenizer, text)
        assert np.abs(rows["logprob"].to_numpy() - ref_lp.numpy()).max() <= 1e-4
        assert np.abs(rows["entropy"].to_numpy() - ref_ent.numpy()).max() <= 1e-4
        assert rows["position"].tolist() == list(range(len(ref_lp)))
        seq = sequences.iloc[doc]
        assert seq["n_tokens"] == len(rows)
        assert seq["sum_logprob"] == pytest.approx(float(ref_lp.double().sum()), abs=1e-3)
        assert seq["perplexity"] == pytest.approx(math.exp(-seq["sum_logprob"] / len(rows)))
        assert seq["n_bytes"] == len(text.encode())
        assert not seq["truncated"]
    meta = read_metadata(tmp_path / "out" / "tokens.parquet")
    assert meta == read_metadata(tmp_path / "out" / "sequences.parquet")
    for key in ("model", "model_path", "tokenizer", "dtype", "device", "bos", "max_length", "scorecli_version"):
        assert meta[key], key
    assert meta["dtype"] == "float32" and meta["device"] == "cpu" and meta["max_length"] == "512"
    assert len(meta["model_fingerprint"]) == 64 and meta["bos"].startswith("prepended")
    assert not list((tmp_path / "out").glob("*.partial"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metadata"] == meta
    figures = summary["summary"]
    assert figures["documents"] == len(texts) and figures["scored_tokens"] == len(tokens)
    assert figures["perplexity"] == pytest.approx(math.exp(-tokens["logprob"].astype(float).sum() / len(tokens)))
    assert figures["mean_doc_perplexity"] == pytest.approx(sequences["perplexity"].mean())
    n_bytes = sequences["n_bytes"].sum()
    assert figures["bits_per_byte"] == pytest.approx(-tokens["logprob"].astype(float).sum() / (n_bytes * math.log(2)))
    assert figures["mean_entropy"] == pytest.approx(tokens["entropy"].astype(float).mean(), rel=1e-5)


def test_parquet_input_no_bos_and_edge_cases(gpt2_dir, tmp_path):
    out = tmp_path / "out"
    assert _score(SAMPLES / "mixed.parquet", "-m", gpt2_dir, "-o", out, "--no-bos", "-q").exit_code == 0
    seqs = pd.read_parquet(out / "sequences.parquet")
    assert seqs["id"].iloc[0] == "p00"
    assert "none" in read_metadata(out / "tokens.parquet")["bos"]
    assert _score(SAMPLES / "edge_cases.jsonl", "-m", gpt2_dir, "-o", out, "--overwrite").exit_code == 0
    seqs = pd.read_parquet(out / "sequences.parquet")
    empty = seqs[seqs["id"] == "empty"].iloc[0]
    assert empty["n_tokens"] == 0 and pd.isna(empty["perplexity"]) and pd.isna(empty["bits_per_byte"])
    assert pd.isna(seqs["id"].iloc[-2]) and seqs["id"].iloc[-1] == "42"


def test_truncation_is_flagged(gpt2_dir, tmp_path):
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "-o", tmp_path / "o", "--max-length", 8, "--truncate")
    assert result.exit_code == 0 and "truncated" in result.stderr
    seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    assert seqs["truncated"].any() and (seqs["n_tokens"] <= 7).all()


def test_out_dash_writes_json_lines_to_stdout(gpt2_dir, tmp_path):
    result = _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "-o", "-")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["doc"] for r in rows] == list(range(len(sample_texts())))
    assert set(rows[0]) == set(SEQUENCE_SCHEMA.names)
    assert "corpus perplexity" in result.stderr and "corpus perplexity" not in result.stdout


def test_stdin_to_stdout_as_a_subprocess(gpt2_dir, forked_scorecli):
    data = (SAMPLES / "mixed.jsonl").read_bytes()
    proc = subprocess.run(
        [forked_scorecli, "score", "-", "-m", str(gpt2_dir), "-o", "-"], input=data, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(rows) == len(sample_texts()) and rows[5]["id"] == "m05"
    assert all(r["perplexity"] > 1 for r in rows)


def test_bad_input_exits_with_one_line_and_code_3(gpt2_dir, tmp_path):
    line = one_line_error(_score(tmp_path / "missing.jsonl", "-m", gpt2_dir, "-o", tmp_path / "o"), 3)
    assert "missing.jsonl: no such file" in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    line = one_line_error(_score(bad, "-m", gpt2_dir, "-o", tmp_path / "o"), 3)
    assert line.endswith("bad.jsonl: line 2: field 'text' is missing (fields: body)")
    line = one_line_error(_score(bad, "-m", gpt2_dir, "-o", tmp_path / "o", "--text-field", "nope"), 3)
    assert "line 1: field 'nope' is missing" in line
    assert not (tmp_path / "o" / "tokens.parquet").exists()


def test_model_errors_exit_with_code_4(tmp_path):
    line = one_line_error(_score(SAMPLES / "mixed.jsonl", "-m", tmp_path / "nowhere", "-o", tmp_path / "o"), 4)
    assert "no such model folder" in line
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    assert "not a GGUF file" in one_line_error(_score(SAMPLES / "mixed.jsonl", "-m", fake, "-o", tmp_path / "o"), 4)
    empty_folder = tmp_path / "folder"
    empty_folder.mkdir()
    assert "no config.json" in one_line_error(
        _score(SAMPLES / "mixed.jsonl", "-m", empty_folder, "-o", tmp_path / "o"), 4
    )


def _hub_model_error(tmp_path, model: str, **env_changes) -> str:
    """Run the CLI on a hub id that is not cached, in a fresh process; return its one-line error."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **env_changes}
    if "HF_HUB_OFFLINE" not in env_changes:
        env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [*SCORECLI, "score", str(SAMPLES / "mixed.jsonl"), "-m", model, "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 4
    return proc.stderr.strip()


def test_uncached_hub_id_offline_is_one_clear_line(tmp_path):
    assert _hub_model_error(tmp_path, "gpt2", HF_HUB_OFFLINE="1") == (
        "scorecli: error: --model gpt2: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"
    )


def test_unreachable_hub_fails_fast(tmp_path):
    """Not offline by setting, but the hub cannot be reached: one line at once, not a minute of retries."""
    assert _hub_model_error(tmp_path, "someone/some-model", HF_ENDPOINT="http://127.0.0.1:9") == (
        "scorecli: error: --model someone/some-model: not in the local Hugging Face cache and 127.0.0.1 cannot be "
        "reached (offline?); pass a local model folder or a .gguf file instead"
    )


def test_option_and_output_errors(gpt2_dir, tmp_path):
    args = [SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "-o", tmp_path / "o"]
    assert "--max-length must be at least 2" in one_line_error(_score(*args, "--max-length", 1), 2)
    assert "--batch-tokens must be at least 1" in one_line_error(_score(*args, "--batch-tokens", 0), 2)
    assert "exceeds the model's context" in one_line_error(_score(*args, "--max-length", 100000), 2)
    assert "--dtype must be one of" in one_line_error(_score(*args, "--dtype", "int8"), 2)
    if not torch.cuda.is_available():
        assert "no CUDA device" in one_line_error(_score(*args, "--device", "cuda"), 2)
    assert _score(*args, "-q").exit_code == 0
    assert "not empty; pass --overwrite" in one_line_error(_score(*args), 5)
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_line_error(_score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "-o", tmp_path / "file"), 5)


def test_version():
    from scorecli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"scorecli {__version__}" != "scorecli 0+unknown"


def test_default_out_folder(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "-q").exit_code == 0
    assert (tmp_path / "mixed.scores" / "sequences.parquet").is_file()


@pytest.mark.realmodel
def test_default_model_end_to_end(tmp_path):
    """The README's demo: the embedded SmolLM2 model on a sample, in a fresh process."""
    proc = subprocess.run(
        [*SCORECLI, "score", str(SAMPLES / "mixed.jsonl"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "corpus perplexity" in proc.stderr
    meta = read_metadata(tmp_path / "o" / "tokens.parquet")
    assert meta["model"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(meta["model_sha256"]) == 64
    seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    assert seqs["perplexity"].median() < 200


def test_click_usage_errors_are_one_line_too(tmp_path):
    assert "Missing argument 'INPUT'" in one_line_error(runner.invoke(app, ["score"]), 2)
    line = one_line_error(_score(SAMPLES / "mixed.jsonl", "--max-length", "abc"), 2)
    assert "Invalid value for '--max-length'" in line
    assert "No such option: --bogus" in one_line_error(_score(SAMPLES / "mixed.jsonl", "--bogus"), 2)


def test_a_failed_run_leaves_no_result_behind(gpt2_dir, tmp_path):
    out = tmp_path / "o"
    assert _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "-o", out, "-q").exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' * 5 + '{"text": null}\n')
    assert "line 6: field 'text' is null" in one_line_error(_score(bad, "-m", gpt2_dir, "-o", out, "--overwrite"), 3)
    assert list(out.iterdir()) == []  # neither the old result nor unfinished files
    assert _score(SAMPLES / "mixed.jsonl", "-m", gpt2_dir, "-o", out, "-q").exit_code == 0


def test_named_pipe_input_is_read_once(gpt2_dir, tmp_path, forked_scorecli):
    import threading

    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    data = (SAMPLES / "mixed.jsonl").read_bytes() * 3

    def feed():
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    proc = subprocess.run(
        [forked_scorecli, "score", str(fifo), "-m", str(gpt2_dir), "-o", "-", "-q"], capture_output=True, timeout=300
    )
    writer.join()
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout.decode().splitlines()) == 3 * len(sample_texts())


def test_corrupt_gguf_with_valid_magic_is_a_model_error(tmp_path):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    line = one_line_error(_score(SAMPLES / "mixed.jsonl", "-m", fake, "-o", tmp_path / "o"), 4)
    assert "the GGUF file cannot be loaded" in line


@pytest.mark.realmodel
def test_ctrl_c_stops_promptly_with_130_and_keeps_finished_documents(tmp_path, forked_scorecli):
    # The fault sends SIGINT once the first batch is scored (deterministic, not a sleep): each document of
    # long.jsonl is one window, so the first batch finishes one, while the others are still queued.
    env = {**os.environ, FAULT_ENV: "batch"}
    proc = subprocess.run(
        [forked_scorecli, "score", str(SAMPLES / "long.jsonl"), "-o", str(tmp_path / "o"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 130, proc.stderr
    # The corpus is one read-ahead buffer: its finished documents are kept for --resume, no final file is written
    assert not (tmp_path / "o" / "tokens.parquet").exists() and not (tmp_path / "o" / "sequences.parquet").exists()
    saved = json.loads((tmp_path / "o" / "parts" / "in-flight.json").read_text(encoding="utf-8"))["docs"]
    assert 1 <= len(saved) < 300  # queued batches are dropped, not finished
    assert proc.stderr.startswith(f"scorecli: interrupted after {len(saved)} documents")
    assert proc.stderr.strip().endswith("--resume")
