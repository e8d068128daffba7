"""The documentation's examples run: README.md's and every docs/*.md page's, each page on its own.

The convention (stated in docs/architecture.md, "Development"): each page runs in a fresh temporary folder
that holds a copy of samples/ and nothing else, so that a page's examples never rely on another page's.
Its ```bash blocks run line by line, in order, with this environment's bin folder on PATH and the embedded
SmolLM2 as the default model; lines that set up the machine (make, source, pip, git) are shown, not run.
Each `scorecli` there is a forked child of a process that imported torch and transformers once
(forkserver.py), with the line's own arguments, folder, environment and streams. Then the page's ```python
blocks run in order in one interpreter (so a block may use names defined by an earlier one on the same
page), in the same folder. A ```text block is output or a command that cannot run here; one made of JSON
lines right after a ```bash block is that block's last command's output, and must match it (same keys in
the same order, same values, floats to 1e-3). The links between the pages must point at pages and
headings that exist, and the options tables must list the options the commands have.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# Set-up commands: shown in the pages, not run by the test (they install things or change the shell).
NOT_RUN = ("make", "source", ".", "pip", "git", "python3 -m venv")
TIMEOUT_S = 300
# Set to 1 to run each `scorecli` line in a fresh interpreter instead of a child of the fork server.
FRESH_ENV = "SCORECLI_TEST_README_FRESH"
FENCE = re.compile(r"^```(\w*)\s*$")


def page_name(page: Path) -> str:
    """A page's path relative to the repository, as the tests name it."""
    return page.relative_to(ROOT).as_posix()


@dataclass
class Block:
    """A fenced block of a page: its page, its language, the line of its opening fence and its lines."""

    page: str
    lang: str
    line: int
    lines: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}-{self.lang}-line{self.line}"


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    """The fenced blocks of a Markdown text, in order."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current = Block(page, fence.group(1), number)
        elif current is not None and line.rstrip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    assert current is None, f"{page}: the block opened at line {current.line} is never closed"
    return blocks


def commands(block: Block) -> list[tuple[int, str]]:
    """The shell commands of a bash block with their page line numbers (continuation lines joined)."""
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


BLOCKS = {page_name(p): readme_blocks(p.read_text(encoding="utf-8"), page_name(p)) for p in PAGES}
BASH = [b for blocks in BLOCKS.values() for b in blocks if b.lang == "bash"]
PYTHON = {page: [b for b in blocks if b.lang == "python"] for page, blocks in BLOCKS.items()}
PYTHON = {page: blocks for page, blocks in PYTHON.items() if blocks}
OUTPUTS: dict[str, str] = {}  # a bash block's id → its last command's stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each page's folder: made on first use, holding a copy of samples/ and nothing else."""
    made: dict[str, Path] = {}

    def page_folder(page: str) -> Path:
        if page not in made:
            work = tmp_path_factory.mktemp(re.sub(r"\W+", "-", page))
            shutil.copytree(SAMPLES, work / "samples", ignore=shutil.ignore_patterns("__pycache__"))
            made[page] = work
        return made[page]

    return page_folder


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


def test_every_page_has_examples():
    assert {p for p in BLOCKS if p.startswith("docs/")}, "docs/ lost its pages"
    pages_with_bash = {b.page for b in BASH}
    assert "README.md" in pages_with_bash and "README.md" in PYTHON, "README.md lost its ```bash or ```python examples"


def test_readme_starts_with_the_two_set_up_commands():
    first = BLOCKS["README.md"][0]
    lines = [line.split("#")[0].strip() for line in first.lines]
    assert first.lang == "bash" and lines[:2] == ["make demo", "make test"], first.lines


@pytest.mark.realmodel
@pytest.mark.parametrize("block", BASH, ids=[b.id for b in BASH])
def test_bash_block(folder, scorecli_bin, block):
    for line, command in commands(block):
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=folder(block.page),
            env=_env(scorecli_bin),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        if proc.returncode != 0:
            _fail(f"{block.page} line {line} (```bash block at line {block.line})", f"`{command}`", proc)
        OUTPUTS[block.id] = proc.stdout


@pytest.mark.realmodel
@pytest.mark.parametrize("page", list(PYTHON))
def test_python_blocks(folder, page):
    # One interpreter runs the page's blocks in order in one namespace; each is compiled as the page at its
    # own line numbers, so a traceback points at the page's line.
    runner = (
        "import json, sys, traceback\n"
        "page, blocks = json.loads(sys.stdin.read())\n"
        "namespace = {'__name__': '__main__'}\n"
        "for line, code in blocks:\n"
        "    try:\n"
        "        exec(compile('\\n' * line + code, page, 'exec'), namespace)\n"
        "    except BaseException:\n"
        "        traceback.print_exc()\n"
        "        print(f'the ```python block at {page} line {line} failed', file=sys.stderr)\n"
        "        sys.exit(1)\n"
    )
    blocks = [(b.line, "\n".join(b.lines)) for b in PYTHON[page]]
    proc = subprocess.run(
        [sys.executable, "-c", runner],
        input=json.dumps([page, blocks]),
        cwd=folder(page),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        lines = ", ".join(str(b.line) for b in PYTHON[page])
        _fail(f"{page} ```python blocks", f"the blocks at lines {lines}", proc)


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


SHOWN = [
    (b, blocks[i - 1])
    for blocks in BLOCKS.values()
    for i, b in enumerate(blocks)
    if b.lang == "text" and i and blocks[i - 1].lang == "bash" and _json_lines(b) is not None
]


@pytest.mark.realmodel
@pytest.mark.parametrize(("shown", "bash"), SHOWN, ids=[b.id for b, _ in SHOWN])
def test_json_output_shown_is_what_the_command_prints(shown, bash):
    if bash.id not in OUTPUTS:
        pytest.fail(f"{bash.page} line {bash.line}: the ```bash block before this output did not run", pytrace=False)
    actual = [json.loads(line) for line in OUTPUTS[bash.id].splitlines() if line.strip()]
    expected = _json_lines(shown)
    assert len(actual) >= len(expected), f"{shown.page} line {shown.line}: the command printed fewer lines"
    for number, (want, got) in enumerate(zip(expected, actual), shown.line + 1):
        assert list(want) == list(got), f"{shown.page} line {number}: keys shown {list(want)}, printed {list(got)}"
        wrong = {k: (want[k], got[k]) for k in want if not _same(want[k], got[k])}
        assert not wrong, f"{shown.page} line {number}: shown ≠ printed for {wrong}"


def test_parser_reads_blocks_lines_and_continuations():
    text = "x\n```bash\nmake demo\n# a comment\nscorecli score a \\\n  -o -   # note\n\ncat b\n```\n```text\n{}\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.line) for b in blocks] == [("bash", 2), ("text", 10)]
    assert commands(blocks[0]) == [(5, "scorecli score a    -o -   # note"), (8, "cat b")]


# Links and anchors


def outside_fences(text: str) -> list[tuple[int, str]]:
    """The lines of a Markdown text outside fenced blocks, with their numbers."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line) or (fenced and line.rstrip() == "```"):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings, the second of a name as NAME-1, and so on."""
    seen: dict[str, int] = {}
    for _, line in outside_fences(text):
        if heading := re.match(r"^#{1,6}\s+(.*)$", line):
            name = anchor(heading.group(1))
            seen[name] = seen.get(name, -1) + 1
    return {f"{name}-{i}" if i else name for name, n in seen.items() for i in range(n + 1)}


def test_anchor_is_githubs():
    assert anchor("Comparing two models: --ref-model") == "comparing-two-models---ref-model"
    assert anchor("The summary and summary.json") == "the-summary-and-summaryjson"
    assert anchors("# A\n```python\n# not a heading\n```\n## A\n") == {"a", "a-1"}


LINKS = [
    (page, number, target)
    for page in PAGES
    for number, line in outside_fences(page.read_text(encoding="utf-8"))
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"(`+).*?\1", "", line))  # inline code is no link
    if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # not https:, mailto:
]


@pytest.mark.parametrize(("page", "number", "target"), LINKS, ids=[f"{page_name(p)}-line{n}-{t}" for p, n, t in LINKS])
def test_link_points_at_a_page_and_heading_that_exist(page, number, target):
    path, _, fragment = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    where = f"{page_name(page)} line {number}: ({target})"
    assert linked.exists(), f"{where}: no such file"
    if fragment:
        assert linked.suffix == ".md", f"{where}: an anchor into a file that is not a page"
        assert fragment in anchors(linked.read_text(encoding="utf-8")), f"{where}: no such heading"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for p, _, t in LINKS if p == README}
    assert [page_name(p) for p in PAGES[1:] if p.resolve() not in linked] == []


# Options tables


def options_table(page: Path, first_header: str) -> set[str]:
    """The options named (in backticks) in the first column of the page's table whose first header is given."""
    named, inside = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == first_header:
            inside = True
        elif inside and cells is None:
            break
        elif inside and not set(cells[0]) <= set("-:"):
            for quoted in re.findall(r"`([^`]+)`", cells[0]):
                named.update(part.strip() for part in quoted.split("/"))
    named -= {"-h", "--help"}
    assert named, f"{page_name(page)}: no table headed {first_header!r}"
    return named


def command_options(name: str) -> set[str]:
    """The options (and upper-cased arguments) that `scorecli NAME --help` lists, -h and --help aside."""
    import typer.main

    from scorecli.cli import app

    command = typer.main.get_command(app).commands[name]
    names = set()
    for param in command.params:
        names.update([param.name.upper()] if param.param_type_name == "argument" else param.opts + param.secondary_opts)
    return names


@pytest.mark.parametrize(
    ("page", "first_header", "command"),
    [("docs/cli.md", "option", "score"), ("docs/reports.md", "`filter` option", "filter")],
)
def test_options_table_lists_every_option_of_the_command(page, first_header, command):
    table, options = options_table(ROOT / page, first_header), command_options(command)
    assert (sorted(options - table), sorted(table - options)) == ([], []), (
        f"{page}: (options the table lacks, options in the table that `scorecli {command}` does not have)"
    )
