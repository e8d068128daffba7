"""Ctrl-C at every moment of start-up ends the run with one line and exit code 130, never a traceback or a
native abort; the CLI's own modules import without torch, transformers or pyarrow, so `--help` is fast."""

import os
import subprocess
import sys

import pytest
from conftest import SAMPLES

from scorecli.base.faults import FAULT_ENV

SCORECLI = [sys.executable, "-m", "scorecli"]


@pytest.mark.parametrize("stage", ["start", "cli", "tables", "imports", "model"])
def test_ctrl_c_during_start_up_is_one_line_and_130(gpt2_dir, tmp_path, stage):
    # The fault makes the process send itself SIGINT at the named stage: deterministic, not timing luck.
    # "start" and "cli" fall while the CLI's modules import, "tables" just before pyarrow imports and
    # "imports" just before torch and transformers do (the signal must wait until they are done), "model"
    # just before the model loads.
    env = {**os.environ, FAULT_ENV: stage}
    out = tmp_path / "out"
    proc = subprocess.run(
        [*SCORECLI, "score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "scorecli: interrupted\n"
    assert proc.stdout == ""
    assert not list(tmp_path.rglob("*.parquet"))


def test_without_the_fault_the_same_run_succeeds(gpt2_dir, tmp_path):
    # The fault is what interrupts the runs above: an unknown stage changes nothing.
    env = {**os.environ, FAULT_ENV: "nowhere"}
    proc = subprocess.run(
        [*SCORECLI, "score", str(SAMPLES / "mixed.jsonl"), "-m", str(gpt2_dir), "-o", str(tmp_path / "o"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "sequences.parquet").exists()


def test_the_cli_module_imports_no_heavy_library():
    heavy = "('torch', 'transformers', 'pyarrow')"
    code = f"import sys, scorecli.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# Reports whether torch was imported when the process ends, however it ends (sys.exit included).
_TORCH_AT_EXIT = (
    "import atexit, sys; "
    "atexit.register(lambda: sys.stderr.write(f'torch imported: {\"torch\" in sys.modules}\\n')); "
    "sys.argv[0] = 'scorecli'; "
    "from scorecli.__main__ import main; main()"
)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--help"], 0, None),
        (["score", "--help"], 0, None),
        (["score", "{tmp}/missing.jsonl", "-o", "{tmp}/out"], 3, "missing.jsonl: no such file"),
        (["score", "x.jsonl", "--compile", "bogus"], 2, "--compile must be one of auto, on, off, not 'bogus'"),
        (["score", "{mixed}", "-o", "{tmp}/out", "--dtype", "bogus"], 2, "--dtype must be one of auto"),
        (["score", "{mixed}", "-o", "{tmp}/out", "--device", "tpu"], 2, "--device must be one of auto"),
        (["score", "{mixed}", "-o", "{tmp}/out", "--ref-model", "r", "--ref-dtype", "f8"], 2, "--ref-dtype must"),
        (["score", "{mixed}", "-o", "{tmp}/out", "--stride", "0"], 2, "--stride must be at least 1"),
        (["score", "{mixed}", "-o", "{tmp}/out", "--top-k", "-1"], 2, "--top-k must be at least 0"),
        (["score", "{mixed}", "-o", "{tmp}/out", "--limit", "many"], 2, "Invalid value for '--limit'"),
        (["score", "{mixed}", "-o", "{tmp}/out", "--on-error", "retry"], 2, "'--on-error'"),
        (["score", "{tmp}/bad.jsonl", "-o", "{tmp}/out"], 3, "bad.jsonl: line 1: field 'text'"),
        (["score", "-o", "{tmp}", "--resume"], 5, "nothing to resume"),
    ],
)
def test_help_and_usage_errors_answer_without_importing_torch(tmp_path, args, code, says):
    # Options and input are checked before torch (seconds to import) is needed, so a mistake is told at once.
    (tmp_path / "bad.jsonl").write_text('{"id": "n", "text": 42}\n{"id": "ok", "text": "Fine."}\n')
    paths = {"tmp": tmp_path, "mixed": SAMPLES / "mixed.jsonl"}
    argv = [a.format(**paths) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_AT_EXIT, *argv], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1] == "torch imported: False"
    if says is None:
        assert "Usage: scorecli" in proc.stdout
    else:
        assert len(lines) == 2 and lines[0].startswith("scorecli: error: ") and says in lines[0], lines
