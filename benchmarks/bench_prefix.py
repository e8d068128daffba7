"""Scored tokens per second with and without prefix sharing, on corpora whose documents share long starts.

    python benchmarks/bench_prefix.py [--model PATH] [--runs 5] [--prompts 64] [--questions 200]
                                      [--small] [--compile off] [--keep DIR]

Writes the corpora of make_prefix_corpora.py at full size (grpo: 64 prompts x 8 responses, prompt/response
mode; fewshot: one preamble before 200 questions, plain texts), then scores each with `scorecli score` in
fresh processes, with prefix sharing (the default) and with --no-prefix-sharing, paired (off then on, --runs
times). `--prompts N` and `--questions M` score only the first N prompts (with all their responses) and the
first M questions (`--limit`), to sample the full corpora when time is short; the table says which part ran.
`--small` is `--prompts 4 --questions 16`, to check that the script runs. `--compile` is passed to both
runs (default off: with it, shared starts run the eager model while plain batches run the compiled one).

Prints, per corpus and way, the median scored tokens/s (scored tokens over the run's scoring seconds, as
summary.json counts them: model loading aside), the scored tokens, the tokens fed to the model, the ratio of
tokens fed without sharing to those fed with it, the speed-up (target: at least 3x), and the largest
|difference| of log-prob and of entropy between the two runs' tokens (target: at most 1e-4 nats).
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
FULL = {"prompts": 64, "responses": 8, "questions": 200}


def score(corpus: Path, out: Path, model: str | None, sharing: bool, limit: int, compile: str) -> dict:
    """Score the first `limit` records of a corpus in a fresh process; return its summary.json figures."""
    cmd = [sys.executable, "-m", "scorecli", "score", str(corpus), "-o", str(out), "-q", "--overwrite"]
    cmd += CORPORA[corpus.stem] + ["--limit", str(limit), "--compile", compile]
    cmd += ([] if sharing else ["--no-prefix-sharing"]) + (["-m", model] if model else [])
    subprocess.run(cmd, check=True)
    return json.loads((out / "summary.json").read_text())["summary"]


def largest_differences(a: Path, b: Path) -> tuple[float, float]:
    """The largest |difference| of log-prob and of entropy between two runs' tokens.parquet."""
    columns = ["doc", "position", "logprob", "entropy"]
    left, right = (pq.read_table(d / "tokens.parquet", columns=columns) for d in (a, b))
    for key in ("doc", "position"):
        if not left[key].equals(right[key]):
            sys.exit("the two runs scored different tokens")
    lp, ent = (float(np.abs(left[c].to_numpy() - right[c].to_numpy()).max(initial=0)) for c in ("logprob", "entropy"))
    return lp, ent


def main() -> None:
    """Generate the corpora, score each both ways, paired, and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--runs", type=int, default=5, help="paired runs per corpus (medians are reported)")
    parser.add_argument("--prompts", type=int, default=FULL["prompts"], help="score the first N grpo prompts")
    parser.add_argument("--questions", type=int, default=FULL["questions"], help="score the first M questions")
    parser.add_argument("--small", action="store_true", help="--prompts 4 --questions 16: check that it runs")
    parser.add_argument("--compile", default="off", choices=("auto", "on", "off"), help="passed to both runs")
    parser.add_argument("--keep", default=None, help="write corpora and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.small:
        args.prompts, args.questions = 4, 16
    prompts, questions = min(args.prompts, FULL["prompts"]), min(args.questions, FULL["questions"])
    limits = {"grpo": prompts * FULL["responses"], "fewshot": questions}
    whole = {"grpo": prompts == FULL["prompts"], "fewshot": questions == FULL["questions"]}
    parts = {
        "grpo": f"the first {prompts} of {FULL['prompts']} prompts x {FULL['responses']} responses",
        "fewshot": f"the first {questions} of {FULL['questions']} questions",
    }
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(args.keep or temp)
        sizes = [f"--{k}={v}" for k, v in FULL.items()]
        subprocess.run([sys.executable, str(HERE / "make_prefix_corpora.py"), str(folder), *sizes], check=True)
        print(f"{args.runs} paired runs, medians; --compile {args.compile}")
        for name, part in parts.items():
            print(f"{name}: {part} ({'the full corpus' if whole[name] else 'a sample of the full corpus'})")
        header = ("corpus", "sharing", "scored tok/s", "scored", "fed", "fed ratio", "speed-up", "max|Δlp|")
        header += ("max|Δent|",)
        print("{:8} {:8} {:>12} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}".format(*header))
        for name in CORPORA:
            corpus = folder / f"{name}.jsonl"
            rates: dict[bool, list[float]] = {True: [], False: []}
            figures: dict[bool, dict] = {}
            for _ in range(args.runs):
                for sharing in (False, True):
                    out = folder / f"{name}-{'on' if sharing else 'off'}"
                    figures[sharing] = score(corpus, out, args.model, sharing, limits[name], args.compile)
                    rates[sharing].append(figures[sharing]["scored_tokens"] / figures[sharing]["seconds"])
            lp, ent = largest_differences(folder / f"{name}-on", folder / f"{name}-off")
            for sharing in (False, True):
                rate, f = statistics.median(rates[sharing]), figures[sharing]
                ratio = f"{figures[False]['fed_tokens'] / f['fed_tokens']:.2f}x" if sharing else ""
                speedup = f"{rate / statistics.median(rates[False]):.2f}x" if sharing else ""
                diffs = f"{lp:9.2e} {ent:9.2e}" if sharing else f"{'':9} {'':9}"
                print(
                    f"{name:8} {'on' if sharing else 'off':8} {rate:12,.0f} {f['scored_tokens']:8,} "
                    f"{f['fed_tokens']:8,} {ratio:>9} {speedup:>8} {diffs}"
                )
            if max(lp, ent) > 1e-4:
                sys.exit(f"{name}: scores with and without sharing differ by {max(lp, ent):.2e} nats (more than 1e-4)")


if __name__ == "__main__":
    main()
