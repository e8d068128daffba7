"""Ctrl-C of a `--ray` driver at a real moment, N times over: each must end cleanly and resume to a whole run.

    python benchmarks/stress_ray_interrupt.py [--repeat 10] [--at after-shard] [--model PATH] [--records 48]

The scenario of issue 20: two input files (the first `--records` records of samples/long.jsonl, half in each),
six shards, two workers of one thread, a local cluster started by scorecli. Each repetition starts
`scorecli score … --ray`, waits for the moment `--at` names, and sends the driver SIGINT:
  starting     as soon as the shards' plan is written (Ray is up, no shard is scored yet)
  mid-shard    as soon as a shard has saved its first part
  after-shard  as soon as the first shard is complete (the default: the issue's report)
The driver must exit 130 with the rerun hint, and nothing from Ray's crash handler (`Check failed`, a stack
trace) nor a Python traceback on stderr. Then the same command again must exit 0, with the token ids of a
single-process run and log-probs within 1e-4. Prints one line per repetition and the counts at the end; the
exit status is 1 if any repetition failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SCORECLI = [sys.executable, "-m", "scorecli"]
# What Ray's C++ crash handler, an abort or an uncaught Python exception leaves on stderr.
CRASH_MARKERS = ("Check failed", "StackTrace", "*** SIG", "terminate called", "Traceback", "Aborted")
MOMENTS = ("starting", "mid-shard", "after-shard")


def reached(out: Path, moment: str) -> bool:
    """Whether the run in `out` has got to `moment`."""
    shards = out / "shards"
    if moment == "starting":
        return (shards / "plan.json").is_file()
    if moment == "mid-shard":
        return any(shards.glob("*/parts/*/*.parquet"))
    return any(shards.glob("*/summary.json"))


def interrupted_run(command: list[str], out: Path, moment: str, env: dict) -> tuple[int | None, str, float, bool]:
    """Run `command` and SIGINT it at `moment`: its exit code, stderr, seconds to exit, whether it got there."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
        deadline = time.monotonic() + 600
        while not reached(out, moment) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        got_there = proc.poll() is None and reached(out, moment)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        seconds = time.perf_counter() - sent
        err.seek(0)
        return code, err.read(), seconds, got_there


def same_tokens(run: Path, single: Path) -> str:
    """'' where `run` holds the single-process run's tokens (ids equal, log-probs within 1e-4), else what differs."""
    a = pq.read_table(single / "tokens.parquet", columns=["doc", "token_id", "logprob"])
    b = pq.read_table(run / "tokens", columns=["doc", "token_id", "logprob"])
    if a.num_rows != b.num_rows:
        return f"{b.num_rows} token rows, not {a.num_rows}"
    if not (a.column("doc").equals(b.column("doc")) and a.column("token_id").equals(b.column("token_id"))):
        return "other documents or token ids"
    diff = float(np.max(np.abs(a.column("logprob").to_numpy() - b.column("logprob").to_numpy())))
    return "" if diff <= 1e-4 else f"log-probs differ by {diff:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--at", choices=MOMENTS, default="after-shard", help="when to send SIGINT")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--records", type=int, default=48, help="records of samples/long.jsonl, half in each file")
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    lines = (ROOT / "samples" / "long.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[: args.records]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="stress-ray-") as tmp:
        corpus, half = Path(tmp) / "corpus", len(lines) // 2
        corpus.mkdir()
        (corpus / "a.jsonl").write_text("".join(lines[:half]), encoding="utf-8")
        (corpus / "b.jsonl").write_text("".join(lines[half:]), encoding="utf-8")
        scoring = [str(corpus), *(["-m", args.model] if args.model else []), "--threads", "1", "--batch-tokens", "64"]
        single = Path(tmp) / "single"
        subprocess.run([*SCORECLI, "score", *scoring, "-o", str(single), "-q"], check=True, env=env)
        print(f"{args.repeat} repetitions, SIGINT at {args.at}: {len(lines)} records, 6 shards, 2 workers")
        print(f"{'#':>3} {'exit':>5} {'exit s':>7} {'shards done':>12}  {'rerun':>5}  outcome")
        for i in range(1, args.repeat + 1):
            out = Path(tmp) / f"run{i}"
            command = [*SCORECLI, "score", *scoring, "-o", str(out), "--ray", "--workers", "2", "--shards", "6", "-q"]
            code, err, seconds, got_there = interrupted_run(command, out, args.at, env)
            done = len(list((out / "shards").glob("*/summary.json")))
            problems = [] if got_there else [f"the run ended before {args.at}"]
            if got_there and code != 130:
                problems.append(f"exit {code}, not 130")
            if got_there and "run the same command again" not in err:
                problems.append("no rerun hint")
            problems += [f"stderr has {m!r}" for m in CRASH_MARKERS if m in err]
            rerun = subprocess.run(command, capture_output=True, text=True, env=env)
            if rerun.returncode:
                problems.append(f"the rerun exited {rerun.returncode}: {rerun.stderr.strip()[-300:]}")
            elif differs := same_tokens(out, single):
                problems.append(f"the rerun's tokens: {differs}")
            failures += bool(problems)
            outcome = "; ".join(problems) or "ok"
            print(f"{i:>3} {code!s:>5} {seconds:>7.1f} {done:>12}  {rerun.returncode:>5}  {outcome}", flush=True)
            if problems and err.strip():
                print("    stderr: " + json.dumps(err.strip()[-2000:]), flush=True)
    print(f"{args.repeat - failures} of {args.repeat} clean (exit 130 with the hint, no crash, rerun equal)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
