"""Scored tokens per second with and without prefix sharing, on corpora whose documents share long starts.

    python benchmarks/bench_prefix.py [--model PATH] [--runs 5] [--small] [--keep DIR]

Writes the corpora of make_prefix_corpora.py (grpo: 64 prompts x 8 responses, prompt/response mode;
fewshot: one preamble before 200 questions, plain texts; --small: 4 prompts and 16 questions, to check that
the script runs), then scores each with `scorecli score` in fresh processes, with prefix sharing (the
default) and with --no-prefix-sharing, alternating, --runs times each. Prints the median scored tokens/s
(scored tokens over the run's scoring seconds, as summary.json counts them: model loading aside), the
tokens fed to the model, the speed-up (target: at least 3x) and the largest difference between the two
runs' log-probs and entropies (target: at most 1e-4 nats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
CORPORA = {
    "grpo": ["--prompt-field", "prompt", "--response-field", "response"],
    "fewshot": [],
}


def score(corpus: Path, out: Path, model: str | None, sharing: bool) -> dict:
    """Score a corpus in a fresh process; return its summary.json figures."""
    cmd = [sys.executable, "-m", "scorecli", "score", str(corpus), "-o", str(out), "-q", "--overwrite"]
    cmd += CORPORA[corpus.stem] + ([] if sharing else ["--no-prefix-sharing"]) + (["-m", model] if model else [])
    subprocess.run(cmd, check=True)
    return json.loads((out / "summary.json").read_text())["summary"]


def largest_difference(a: Path, b: Path) -> float:
    """The largest |difference| of log-prob or entropy between two runs' tokens.parquet."""
    left, right = (pq.read_table(d / "tokens.parquet", columns=["logprob", "entropy"]) for d in (a, b))
    return max(float(np.abs(left[c].to_numpy() - right[c].to_numpy()).max()) for c in ("logprob", "entropy"))


def main() -> None:
    """Generate the corpora, time both ways on each, and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="small corpora: check that the benchmark runs")
    parser.add_argument("--keep", default=None, help="write corpora and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(args.keep or temp)
        sizes = ["--prompts", "4", "--questions", "16"] if args.small else []
        subprocess.run([sys.executable, str(HERE / "make_prefix_corpora.py"), str(folder), *sizes], check=True)
        header = ("corpus", "sharing", "scored tok/s", "scored", "fed", "speed-up", "max |Δ|")
        print("{:8} {:8} {:>12} {:>8} {:>8} {:>8} {:>9}".format(*header))
        for name in CORPORA:
            corpus = folder / f"{name}.jsonl"
            rates: dict[bool, list[float]] = {True: [], False: []}
            figures: dict[bool, dict] = {}
            for _ in range(args.runs):
                for sharing in (False, True):
                    figures[sharing] = score(corpus, folder / f"{name}-{sharing}", args.model, sharing)
                    rates[sharing].append(figures[sharing]["scored_tokens"] / figures[sharing]["seconds"])
            diff = largest_difference(folder / f"{name}-True", folder / f"{name}-False")
            for sharing in (False, True):
                rate, f = statistics.median(rates[sharing]), figures[sharing]
                speedup = f"{rate / statistics.median(rates[False]):.2f}x" if sharing else ""
                print(
                    f"{name:8} {'on' if sharing else 'off':8} {rate:12,.0f} {f['scored_tokens']:8,} "
                    f"{f['fed_tokens']:8,} {speedup:>8} {diff if sharing else 0:9.2e}"
                )
            if diff > 1e-4:
                sys.exit(f"{name}: scores with and without sharing differ by {diff:.2e} nats (more than 1e-4)")


if __name__ == "__main__":
    main()
