"""Streaming (`scorecli score CORPUS -o -`) against a folder run (`-o DIR`): throughput, first line, and work done.

    python benchmarks/bench_stream.py [--corpus samples/long.jsonl] [--model PATH] [--repeat 5] [--limit N]

Runs the `scorecli` importable from the current folder (run it from a checkout to time that checkout), each
run in a fresh process, on the same input: with --repeat N, N pairs of runs, stream then folder, interleaved,
so that both meet the same machine. Reports the median tokens per second of each (scored tokens over the
process's wall time, start-up and model loading included), their ratio, and the median seconds from the
stream's start to its first line on stdout. Checks that the stream's lines are the folder run's sequence rows.

Then the work each run does, counted without the clock from the runs' own plan (`Scorer.plan_buffers`, the
same cutting, packing and prefix sharing as scoring): buffers, tasks (batches and shared-prefix groups),
forward passes and their distinct shapes, tokens fed to the model (and those shared prefixes spared it),
padded tokens (rows × width of each pass, pads included), the workers' idle share at buffer ends (tasks
handed out in order to whichever worker is free, each costing its padded tokens), the estimated work (the
sum of the buffers' makespans, in padded tokens per worker), and the parts (flushes) the output is given out
in. The tokens scored before the first line (the first buffer's tasks up to its first part, per worker) give a
timing-free estimate of the first line's delay beyond start-up.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def scorecli(corpus: str, out: str, options: list[str]) -> list[str]:
    """The command line of one run."""
    return [sys.executable, "-m", "scorecli", "score", corpus, "-o", out, "-q", *options]


def stream_run(corpus: str, options: list[str]) -> dict:
    """A run to stdout: its time to the first line, wall time and lines."""
    started = time.perf_counter()
    proc = subprocess.Popen(scorecli(corpus, "-", options), stdout=subprocess.PIPE)
    first, lines = None, []
    for line in proc.stdout:
        first = time.perf_counter() - started if first is None else first
        lines.append(json.loads(line))
    if proc.wait() != 0:
        raise SystemExit(f"scorecli failed with exit code {proc.returncode}")
    wall = time.perf_counter() - started
    return {"first_line_s": first or wall, "wall_s": wall, "lines": lines}


def folder_run(corpus: str, folder: str, options: list[str]) -> dict:
    """A run to a folder: its wall time and sequence rows."""
    import pandas as pd

    started = time.perf_counter()
    subprocess.run([*scorecli(corpus, folder, options), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "rows": pd.read_parquet(Path(folder) / "sequences.parquet").to_dict("records")}


def makespan(tasks: list[list], workers: int) -> int:
    """When the last of a buffer's tasks ends, tasks going in order to the first free worker (padded tokens)."""
    free = [0] * workers
    for task in tasks:
        heapq.heappush(free, heapq.heappop(free) + sum(p.padded for p in task))
    return max(free)


def work_counts(scorer: object, records: list) -> dict[str, int | float]:
    """The work a run does, from its plan: counts of buffers, passes and tokens (see the module's docstring)."""
    plans = list(scorer.plan_buffers(records))
    passes = [p for b in plans for t in b.tasks for p in t]
    padded = sum(p.padded for p in passes)
    span = sum(makespan(b.tasks, scorer.workers) for b in plans)
    first = plans[0] if plans else None
    before_first = sum(p.padded for t in first.tasks[: first.given[0]] for p in t) if first else 0
    return {
        "buffers": len(plans),
        "first buffer docs": first.docs if first else 0,
        "tasks": sum(len(b.tasks) for b in plans),
        "forward passes": len(passes),
        "distinct shapes": len({(p.rows, p.width, p.cached) for p in passes}),
        "scored tokens": sum(b.tokens for b in plans),
        "tokens fed": sum(p.tokens for p in passes),
        "tokens shared": sum(b.unshared for b in plans) - sum(p.tokens for p in passes),
        "padded tokens": padded,
        "idle at buffer ends %": round(100 * (1 - padded / (scorer.workers * span)), 2) if span else 0.0,
        "estimated work": span,
        "parts given out": sum(len(b.given) for b in plans),
        "padded tokens before the first line, per worker": before_first // scorer.workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "samples" / "long.jsonl"))
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2 (converted once, first)")
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs (stream, folder), interleaved")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N records (a quick check)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="scorecli's --batch-tokens")
    args = parser.parse_args()
    options = ["--device", "cpu", "--dtype", "float32"]
    options += ["--model", args.model] if args.model else []
    options += ["--limit", str(args.limit)] if args.limit else []
    options += ["--batch-tokens", str(args.batch_tokens)] if args.batch_tokens else []

    from scorecli.engine.models import load_model
    from scorecli.engine.scorer import Scorer
    from scorecli.inputs.records import read_records

    loaded = load_model(args.model, device="cpu", dtype="float32")  # converts and caches a GGUF once: warm
    records = list(read_records(args.corpus, limit=args.limit))
    counts = {
        run: work_counts(Scorer(loaded.model, loaded.tokenizer, batch_tokens=args.batch_tokens, stream=stream), records)
        for run, stream in (("stream", True), ("folder", False))
    }
    model_name = loaded.info["model"]
    del loaded  # not held while the runs are timed

    stream, folder, mismatched = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            s, f = stream_run(args.corpus, options), folder_run(args.corpus, f"{tmp}/run", options)
            stream.append(s)
            folder.append(f)
            mismatched += _mismatches(s["lines"], f["rows"])
            print(
                f"  pair {rep + 1}/{args.repeat}: stream {s['wall_s']:.1f} s, folder {f['wall_s']:.1f} s",
                file=sys.stderr,
            )
    tokens = sum(line["n_tokens"] for line in stream[0]["lines"]) if stream else 0
    rate = {
        "stream": statistics.median(tokens / s["wall_s"] for s in stream),
        "folder": statistics.median(tokens / f["wall_s"] for f in folder),
    }
    first_line = statistics.median(s["first_line_s"] for s in stream)
    print(
        f"\ncorpus: {Path(args.corpus).name}{f' (first {args.limit:,} records)' if args.limit else ''}, "
        f"{len(records):,} documents, {tokens:,} scored tokens; model: {model_name}; "
        f"median of {args.repeat} pair{'s' if args.repeat > 1 else ''}\n"
    )
    print("| run | tokens/s | vs folder | first line s |\n|---|---:|---:|---:|")
    print(f"| stream (`-o -`) | {rate['stream']:,.0f} | {rate['stream'] / rate['folder']:.3f} | {first_line:.1f} |")
    print(f"| folder (`-o DIR`) | {rate['folder']:,.0f} | 1.000 | - |")
    before, work = (
        counts["stream"]["padded tokens before the first line, per worker"],
        counts["folder"]["estimated work"],
    )
    # That share of the folder run's estimated work, at its median wall time: start-up makes it an upper bound.
    estimate = before / work * tokens / rate["folder"] if work else 0.0
    print(
        f"\nThe first line waits for {before:,} padded tokens per worker of scoring, after start-up: "
        f"at most {estimate:.1f} s at the folder run's rate."
    )
    print(f"Stream lines that differ from the folder run's sequence rows: {mismatched}.\n")
    print("| work (counted, not timed) | stream | folder | stream / folder |\n|---|---:|---:|---:|")
    for key, value in counts["stream"].items():
        other = counts["folder"][key]
        ratio = f"{value / other:.3f}" if other else "-"
        print(f"| {key} | {value:,} | {other:,} | {ratio} |")


def _mismatches(lines: list[dict], rows: list[dict]) -> int:
    """How many stream lines are not the folder run's sequence row (same document, tokens, mean log-prob)."""
    missing = abs(len(lines) - len(rows))
    return missing + sum(not _same(line, row) for line, row in zip(lines, rows))


def _same(line: dict, row: dict) -> bool:
    """Whether a JSON line and a Parquet row are the same document's, with the same mean log-prob (1e-4 nats)."""
    if (line["doc"], line["id"], line["n_tokens"]) != (row["doc"], row["id"], row["n_tokens"]):
        return False
    a, b = line["mean_logprob"], row["mean_logprob"]
    b = None if b != b else b  # a NaN in Parquet is a null in JSON
    return a == b or (a is not None and b is not None and abs(a - b) <= 1e-4)


if __name__ == "__main__":
    main()
