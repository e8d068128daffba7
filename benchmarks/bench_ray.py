"""Single-process scoring against `--ray` with W workers of one thread each, on the same corpus and model.

    python benchmarks/bench_ray.py [--corpus samples/long.jsonl] [--model PATH] [--workers 2] [--limit N]

Runs, each in a fresh process, in float32 on the CPU:
  single  `scorecli score CORPUS -o DIR -q --threads W` (W batches side by side, one thread each)
  ray     `scorecli score CORPUS -o DIR --ray --workers W --threads 1` (a local cluster started by scorecli)
Reports wall time (the whole process), scoring tokens/s from summary.json (for --ray: from the first shard's
first buffer to the last shard's end, without Ray's or the workers' start-up, as a single process's model
loading is not counted), their ratio (the target: --ray at least 0.9x), Ray's start-up (the cluster ready)
and the overhead of --ray in wall time.
Checks that both runs wrote the same token ids and log-probs (to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SCORECLI = [sys.executable, "-m", "scorecli"]


def run(args: list[str]) -> tuple[float, str]:
    """Run scorecli; return its wall time and stderr."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    started = time.perf_counter()
    proc = subprocess.run([*SCORECLI, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"scorecli {' '.join(args)} failed:\n{proc.stderr}")
    return wall, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "samples" / "long.jsonl"))
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N records (a quick check)")
    args = parser.parse_args()
    common = [args.corpus, *(["-m", args.model] if args.model else []), "--dtype", "float32", "--device", "cpu"]
    common += ["--limit", str(args.limit)] if args.limit else []
    with tempfile.TemporaryDirectory() as tmp:
        single_dir, ray_dir = Path(tmp) / "single", Path(tmp) / "ray"
        single_wall, _ = run(["score", *common, "-o", str(single_dir), "-q", "--threads", str(args.workers)])
        ray_cmd = ["score", *common, "-o", str(ray_dir), "--ray", "--workers", str(args.workers), "--threads", "1"]
        ray_wall, err = run(ray_cmd)
        ready = re.search(r"cluster ready in ([\d.]+) s", err)
        single = json.loads((single_dir / "summary.json").read_text())["summary"]
        ray = json.loads((ray_dir / "summary.json").read_text())["summary"]
        a = pq.read_table(single_dir / "tokens.parquet", columns=["token_id", "logprob"])
        b = pq.read_table(ray_dir / "tokens", columns=["token_id", "logprob"])
        same_ids = a.column("token_id").equals(b.column("token_id"))
        diff = float(np.max(np.abs(a.column("logprob").to_numpy() - b.column("logprob").to_numpy())))
    ratio = ray["tokens_per_second"] / single["tokens_per_second"]
    print(f"corpus {args.corpus}: {single['documents']:,} documents, {single['scored_tokens']:,} tokens")
    print(f"{'run':<8}{'wall s':>9}{'scoring s':>11}{'tokens/s':>11}")
    for name, wall, s in (("single", single_wall, single), ("ray", ray_wall, ray)):
        print(f"{name:<8}{wall:>9.1f}{s['seconds']:>11.1f}{s['tokens_per_second']:>11,.0f}")
    print(f"--ray / single tokens/s: {ratio:.2f}x (target >= 0.9x)")
    print(f"Ray start-up (cluster ready): {float(ready.group(1)) if ready else float('nan'):.1f} s; ", end="")
    print(f"wall-time overhead of --ray: {ray_wall - single_wall:+.1f} s")
    print(f"same token ids: {same_ids}; max |logprob difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
