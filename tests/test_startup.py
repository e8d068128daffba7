"""Ctrl-C at every moment of start-up ends the run with one line and exit code 130, never a traceback or a
native abort; the CLI's own modules import without torch, transformers or pyarrow, so `--help` is fast."""

import os
import subprocess
import sys

import pytest
from conftest import SAMPLES

SCORECLI = [sys.executable, "-m", "scorecli"]


@pytest.mark.parametrize("stage", ["start", "cli", "imports", "model"])
def test_ctrl_c_during_start_up_is_one_line_and_130(gpt2_dir, tmp_path, stage):
    # The hook makes the process send itself SIGINT at the named stage: deterministic, not timing luck.
    # "start" and "cli" fall while the CLI's modules import, "imports" just before torch and transformers
    # import (the signal must wait until they are done), "model" just before the model loads.
    env = {**os.environ, "SCORECLI_TEST_SIGINT_AT": stage}
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


def test_without_the_hook_the_same_run_succeeds(gpt2_dir, tmp_path):
    # The hook is what interrupts the runs above: an unknown stage changes nothing.
    env = {**os.environ, "SCORECLI_TEST_SIGINT_AT": "nowhere"}
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
