"""Outputs byte for byte: every sample scored by this tree's scorecli and by a git worktree of another commit.

    python benchmarks/check_identical.py [--baseline REV] [--model PATH] [--cases NAME,...] [--ray] [--keep DIR]

Each case (a sample and the options that exercise it: plain text, Parquet, a folder of three kinds of input,
fields kept, prompts and responses, chats, words, top-k, a reference model, windows, a joined document,
skipped records, JSON lines on stdout for each kind of rows and from stdin; with --ray, a --ray run on one
worker) runs twice, in one temporary folder holding a copy of samples/ (so both name their inputs alike):
with this tree's code and with REV's (default: main's a2f6d62, before the run became a library call), each
as `python -m scorecli` with its own tree first on PYTHONPATH, on the same model (default: the embedded
SmolLM2). Then every file of the two output folders (and the stdout of the stdout cases) is compared:

  Parquet files, errors.jsonl, stdout   byte for byte (the Parquet metadata included)
  summary.json                          byte for byte but for the timings, which no two runs share:
                                        seconds, tokens_per_second, session_seconds, session_tokens_per_second

Prints a line per case and file and exits 1 if anything differs. --keep DIR keeps the runs' folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_score import worktree

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "a2f6d62"
TIMINGS = ("seconds", "tokens_per_second", "session_seconds", "session_tokens_per_second")
KEPT = "url,lang,links,tags,crawl"
# name: (arguments after `scorecli score`, where the output goes: a folder, or "-" for stdout)
CASES = {
    "mixed": ["samples/mixed.jsonl", "--words"],
    "parquet": ["samples/mixed.parquet", "--top-k", "3"],
    "corpus": ["samples/corpus", "--words"],
    "edge": ["samples/edge_cases.jsonl", "--words"],
    "bad-skip": ["samples/bad.jsonl", "--on-error", "skip"],
    "chats": ["samples/chats.jsonl", "--messages-field", "messages", "--words"],
    "grpo": ["samples/grpo.jsonl", "--prompt-field", "prompt", "--response-field", "response"],
    "pairs": ["samples/pairs.jsonl", "--prompt-field", "prompt", "--response-field", "response", "--all-tokens"],
    "stimuli": ["samples/stimuli.jsonl", "--words", "--top-k", "2"],
    "web-kept": ["samples/web.jsonl", "--keep-fields", KEPT],
    "book-windows": ["samples/book.jsonl", "--max-length", "64", "--stride", "32", "--words"],
    "joined": ["samples/mixed.jsonl", "--join", "\\n\\n"],
    "reference": ["samples/stimuli.jsonl", "--ref-model", "{model}", "--ref-dtype", "bfloat16"],
    "long": ["samples/long.jsonl", "--limit", "40", "--batch-tokens", "256"],
    "stdout-sequences": ["samples/web.jsonl", "--keep-fields", KEPT, "-o", "-"],
    "stdout-tokens": ["samples/mixed.jsonl", "-o", "-", "--rows", "tokens"],
    "stdout-words": ["samples/bad.jsonl", "--on-error", "skip", "-o", "-", "--rows", "words"],
    "stdin": ["-", "-o", "-"],
}
RAY_CASES = {"ray": ["samples/corpus", "--ray", "--workers", "1", "--threads", "1", "--shards", "3"]}


def score(tree: Path, case: str, args: list[str], model: str | None, folder: Path) -> Path:
    """Run one case with the code of `tree` in `folder`; return its output folder (stdout in stdout.txt there)."""
    out = folder / f"{case}.scores"
    args = [a.replace("{model}", model or _default_model(tree)) for a in args]
    command = [sys.executable, "-m", "scorecli", "score", *args, "-q", *(["-m", model] if model else [])]
    stdout = "-o" in args and args[args.index("-o") + 1] == "-"
    if not stdout:
        command += ["-o", str(out.relative_to(folder))]
    stdin = (folder / "samples" / "mixed.jsonl").read_bytes() if args[0] == "-" else b""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=folder, env=env, input=stdin, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"{case} ({tree}): exit code {proc.returncode}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    if stdout:
        out.mkdir()
        (out / "stdout.txt").write_bytes(proc.stdout)
    return out


def _default_model(tree: Path) -> str:
    """The embedded SmolLM2's GGUF file, for the cases that name it as a reference model."""
    code = "from scorecli.engine.models import default_model_path; print(default_model_path())"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def compare(a: Path, b: Path) -> list[tuple[str, str]]:
    """Each file of two output folders: identical, or how they differ."""
    names = sorted(
        {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
        | {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    )
    rows = []
    for name in names:
        x, y = a / name, b / name
        if not x.is_file() or not y.is_file():
            rows.append((name, f"only in {'the baseline' if y.is_file() else 'this tree'}'s run"))
        elif name.endswith("summary.json"):
            rows.append((name, _same_summary(x, y)))
        else:
            rows.append((name, "identical" if x.read_bytes() == y.read_bytes() else "DIFFERS"))
    return rows


def _same_summary(x: Path, y: Path) -> str:
    """Whether two summary.json files are the same but for their timings."""
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (x, y))
    for saved in (a, b):
        for key in TIMINGS:
            saved["summary"].pop(key)
    if a != b:
        return "DIFFERS"
    return "identical but for the timings"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, metavar="REV", help="the commit to compare with")
    parser.add_argument("--model", default=None, help="the model of every run (default: the embedded SmolLM2)")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--ray", action="store_true", help="also a --ray run on one worker")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the runs' folders in DIR")
    args = parser.parse_args()
    cases = {**CASES, **(RAY_CASES if args.ray else {})}
    if args.cases:
        cases = {name: cases[name] for name in args.cases.split(",")}
    failed = False
    with tempfile.TemporaryDirectory() as tmp, worktree(args.baseline, tmp) as baseline:
        runs = Path(args.keep) if args.keep else Path(tmp) / "runs"
        for side in ("new", "old"):
            (runs / side).mkdir(parents=True, exist_ok=True)
            shutil.copytree(ROOT / "samples", runs / side / "samples", dirs_exist_ok=True)
        # One copy of the samples for both, so that the inputs' names, sizes and times are the same.
        shutil.rmtree(runs / "old" / "samples")
        (runs / "old" / "samples").symlink_to(runs / "new" / "samples")
        for case, case_args in cases.items():
            new = score(ROOT, case, case_args, args.model, runs / "new")
            old = score(Path(baseline), case, case_args, args.model, runs / "old")
            for name, verdict in compare(new, old):
                failed |= verdict not in ("identical", "identical but for the timings")
                print(f"{case:18} {name:28} {verdict}", flush=True)
    print(f"outputs {'DIFFER' if failed else 'are identical'} (this tree against {args.baseline})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
