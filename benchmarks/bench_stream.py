"""Time to the first JSON line and throughput of `scorecli score CORPUS -o -`, in a fresh process.

    python benchmarks/bench_stream.py [--corpus samples/long.jsonl] [--model PATH] [--repeat 1]

Runs the `scorecli` importable from the current folder (run it from a checkout to time that checkout).

Reports, per run: seconds from the process's start to the first line on stdout (start-up and model
loading included), wall time, scored tokens (Σ n_tokens of the lines) and tokens per second over the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stream_run(corpus: str, model: str | None) -> dict[str, float]:
    """One run: time to first line, wall time, tokens and tokens/s."""
    cmd = [sys.executable, "-m", "scorecli", "score", corpus, "-o", "-", "-q"] + (["-m", model] if model else [])
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    first = None
    tokens = 0
    for line in proc.stdout:
        if first is None:
            first = time.perf_counter() - started
        tokens += json.loads(line)["n_tokens"]
    if proc.wait() != 0:
        raise SystemExit(f"scorecli failed with exit code {proc.returncode}")
    wall = time.perf_counter() - started
    return {"first_line_s": first or wall, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "samples" / "long.jsonl"))
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2 (convert it once first)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print("| run | first line s | wall s | tokens | tokens/s |\n|---:|---:|---:|---:|---:|")
    for i in range(args.repeat):
        r = stream_run(args.corpus, args.model)
        print(f"| {i + 1} | {r['first_line_s']:.1f} | {r['wall_s']:.1f} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
