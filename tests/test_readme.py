"""README.md's examples run: every ```bash line as a shell command and every ```python block, in order.

The convention (stated in the README's Development section): ```bash blocks run line by line, in order,
from a temporary folder that holds a copy of samples/, with this environment's bin folder on PATH and the
embedded SmolLM2 as the default model; lines that set up the machine (make, source, pip, git) are shown,
not run. Each `scorecli` there is a forked child of a process that imported torch and transformers once
(forkserver.py), with the line's own arguments, folder, environment and streams. Then the ```python
blocks run in order in one interpreter (so a block may use names defined by an earlier one), in the same
folder. A ```text block is output or a command that cannot run here; one
made of JSON lines right after a ```bash block is that block's last command's output, and must match it
(same keys in the same order, same values, floats to 1e-3).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES

pytestmark = pytest.mark.realmodel

README = ROOT / "README.md"
# Set-up commands: shown in the README, not run by the test (they install things or change the shell).
NOT_RUN = ("make", "source", ".", "pip", "git", "python3 -m venv")
TIMEOUT_S = 300
# Set to 1 to run each `scorecli` line in a fresh interpreter instead of a child of the fork server.
FRESH_ENV = "SCORECLI_TEST_README_FRESH"


@dataclass
class Block:
    """A fenced block of README.md: its language, the line of its opening fence and its lines."""

    lang: str
    line: int
    lines: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if current is None and fence:
            current = Block(fence.group(1), number)
        elif current is not None and line.rstrip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    assert current is None, f"README.md: the block opened at line {current.line} is never closed"
    return blocks


def commands(block: Block) -> list[tuple[int, str]]:
    """The shell commands of a bash block with their README line numbers (continuation lines joined)."""
    out, pending, start = [], "", 0
    for offset, line in enumerate(block.lines, block.line + 1):
        if not pending:
            start = offset
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if not pending.strip().startswith(NOT_RUN):
                out.append((start, pending.strip()))
            pending = ""
    return out


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
BASH = [b for b in BLOCKS if b.lang == "bash"]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
OUTPUTS: dict[int, str] = {}  # a bash block's line → its last command's stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the examples run in: a copy of samples/ and nothing else."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(SAMPLES, work / "samples", ignore=shutil.ignore_patterns("__pycache__"))
    return work


@pytest.fixture(scope="module")
def scorecli_bin(request: pytest.FixtureRequest) -> Path | None:
    """The folder of the fork server's `scorecli` (conftest.py), or None where FRESH_ENV asks for the installed one."""
    if os.environ.get(FRESH_ENV) == "1":
        return None
    return request.getfixturevalue("forked_scorecli").parent


def _env(scorecli_bin: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if scorecli_bin is not None:
        env["PATH"] = f"{scorecli_bin}{os.pathsep}{env['PATH']}"
    env["HF_HUB_OFFLINE"] = "1"  # a hub example must be a ```text block: fail at once rather than download
    env["COLUMNS"] = "100"
    # The --ray examples' local clusters (on 127.0.0.1): no token authentication, no token file in the home folder.
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return env


def _fail(where: str, what: str, proc: subprocess.CompletedProcess) -> None:
    tail = lambda s: "\n".join(s.strip().splitlines()[-15:]) or "(empty)"  # noqa: E731
    pytest.fail(
        f"{where}: {what} exited with code {proc.returncode}\n--- stderr (last lines) ---\n{tail(proc.stderr)}"
        f"\n--- stdout (last lines) ---\n{tail(proc.stdout)}",
        pytrace=False,
    )


def test_readme_has_examples():
    assert len(BASH) >= 3 and PYTHON, "README.md lost its ```bash or ```python examples"


@pytest.mark.parametrize("block", BASH, ids=[b.id for b in BASH])
def test_bash_block(folder, scorecli_bin, block):
    for line, command in commands(block):
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=folder,
            env=_env(scorecli_bin),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        if proc.returncode != 0:
            _fail(f"README.md line {line} (```bash block at line {block.line})", f"`{command}`", proc)
        OUTPUTS[block.line] = proc.stdout


def test_python_blocks(folder):
    # One interpreter runs the blocks in order in one namespace; each is compiled as README.md at its own
    # line numbers, so a traceback points at the README line.
    runner = (
        "import json, sys, traceback\n"
        "blocks = json.loads(sys.stdin.read())\n"
        "namespace = {'__name__': '__main__'}\n"
        "for line, code in blocks:\n"
        "    try:\n"
        "        exec(compile('\\n' * line + code, 'README.md', 'exec'), namespace)\n"
        "    except BaseException:\n"
        "        traceback.print_exc()\n"
        "        print(f'the ```python block at README.md line {line} failed', file=sys.stderr)\n"
        "        sys.exit(1)\n"
    )
    blocks = [(b.line, "\n".join(b.lines)) for b in PYTHON]
    proc = subprocess.run(
        [sys.executable, "-c", runner],
        input=json.dumps(blocks),
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        _fail("README.md ```python blocks", f"the blocks at lines {', '.join(str(b.line) for b in PYTHON)}", proc)


def _json_lines(block: Block) -> list[dict] | None:
    """The block's lines as JSON objects, or None if it is not JSON lines."""
    try:
        rows = [json.loads(line) for line in block.lines if line.strip()]
    except json.JSONDecodeError:
        return None
    return rows if rows and all(isinstance(r, dict) for r in rows) else None


def _same(shown: object, actual: object) -> bool:
    if isinstance(shown, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return math.isclose(shown, actual, rel_tol=1e-3, abs_tol=1e-6)
    return shown == actual and type(shown) is type(actual)


SHOWN = [(b, BLOCKS[i - 1]) for i, b in enumerate(BLOCKS) if b.lang == "text" and i and BLOCKS[i - 1].lang == "bash"]
SHOWN = [(b, bash) for b, bash in SHOWN if _json_lines(b) is not None]


@pytest.mark.parametrize(("shown", "bash"), SHOWN, ids=[b.id for b, _ in SHOWN])
def test_json_output_shown_is_what_the_command_prints(folder, shown, bash):
    if bash.line not in OUTPUTS:
        pytest.fail(f"README.md line {bash.line}: the ```bash block before this output did not run", pytrace=False)
    actual = [json.loads(line) for line in OUTPUTS[bash.line].splitlines() if line.strip()]
    expected = _json_lines(shown)
    assert len(actual) >= len(expected), f"README.md line {shown.line}: the command printed fewer lines"
    for number, (want, got) in enumerate(zip(expected, actual), shown.line + 1):
        assert list(want) == list(got), f"README.md line {number}: keys shown {list(want)}, printed {list(got)}"
        wrong = {k: (want[k], got[k]) for k in want if not _same(want[k], got[k])}
        assert not wrong, f"README.md line {number}: shown ≠ printed for {wrong}"


def test_parser_reads_blocks_lines_and_continuations():
    text = "x\n```bash\nmake demo\n# a comment\nscorecli score a \\\n  -o -   # note\n\ncat b\n```\n```text\n{}\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.line) for b in blocks] == [("bash", 2), ("text", 10)]
    assert commands(blocks[0]) == [(5, "scorecli score a    -o -   # note"), (8, "cat b")]
