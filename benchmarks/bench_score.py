"""Throughput, peak memory and exactness of `scorecli score` against the plain reference, each run in a fresh process.

    python benchmarks/bench_score.py [--corpus samples/long.jsonl] [--model PATH] [--ref-model PATH] [--repeat 5]

Runs, on the same texts and the same (already converted, "warm") model, in float32 on the CPU:
  scorecli      the CLI: `scorecli score CORPUS -o DIR -q` (float32; --compile auto)
  scorecli-compile the same with --compile on (the first repetition may compile cold; later ones hit the cache)
  scorecli-bf16 the same with --dtype bfloat16 (AMX matmuls on recent x86; not float32-exact)
  scorecli-top5 the same with --top-k 5 (target: at most 1.1x the scorecli run's wall time)
  scorecli-ref  the same with --ref-model REF (default: the model itself; target: at most 2.2x and 2.5 GB)
  ref-batch16   plain reference: batches of 16 texts in input order, right-padded, full log_softmax + gather
  ref-single    plain reference: one text at a time (no padding), full log_softmax + gather
Wall time is the whole process (start-up, model load, scoring, writing); peak RSS is the process's own.
With --repeat N each run is repeated N times, the runs interleaved (paired: one of each, then again), and
the table shows the median wall time and the largest peak RSS. Below the table, the drift of scorecli-bf16
from the float32 scorecli run (mean |diff|, 99th percentile, max, per token) where both ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def reference_run(folder: str, corpus: str, batch_size: int, out: str) -> None:
    """Score the corpus with the plain reference and save per-token log-probs and entropies."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    seqs = [[bos] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    logprobs, entropies = [], []
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i : i + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for r, s in enumerate(batch):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            token_logp = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            entropy = -(logp.exp().mul_(logp)).sum(-1)[:, :-1]
            for r, s in enumerate(batch):
                logprobs.append(token_logp[r, : len(s) - 1].numpy())
                entropies.append(entropy[r, : len(s) - 1].numpy())
    np.savez(f"{out}.npz", logprob=np.concatenate(logprobs), entropy=np.concatenate(entropies))


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return its wall time (s) and peak RSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark run failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    """Run scorecli and both references in fresh processes and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(ROOT / "samples" / "long.jsonl"))
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--ref-model", default=None, help="scorecli-ref's --ref-model (default: the model itself)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="scorecli's --batch-tokens")
    parser.add_argument(
        "--runs", default="scorecli,scorecli-compile,scorecli-bf16,scorecli-top5,scorecli-ref,ref-batch16,ref-single"
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions of each run, interleaved; medians shown")
    parser.add_argument("--reference", nargs=3, metavar=("FOLDER", "BATCH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        reference_run(args.reference[0], args.corpus, int(args.reference[1]), args.reference[2])
        return

    from scorecli.models import load_model

    loaded = load_model(args.model, device="cpu", dtype="float32")  # converts and caches a GGUF once: warm
    folder = str(loaded.model.name_or_path)  # the converted folder for a GGUF, else what --model named
    results: dict[str, dict] = {}
    runs = args.runs.split(",")
    walls: dict[str, list[float]] = {run: [] for run in runs}
    rss: dict[str, list[float]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep, run in ((rep, run) for rep in range(args.repeat) for run in runs):
            if run.startswith("scorecli"):
                dtype = "bfloat16" if run.endswith("bf16") else "float32"
                cmd = [sys.executable, "-m", "scorecli", "score", args.corpus, "-o", f"{tmp}/{run}", "-q"]
                cmd += ["--model", args.model] if args.model else []
                cmd += ["--batch-tokens", str(args.batch_tokens)] if args.batch_tokens else []
                cmd += ["--device", "cpu", "--dtype", dtype]
                cmd += ["--top-k", "5"] if run == "scorecli-top5" else []
                cmd += ["--compile", "on"] if run == "scorecli-compile" else []
                cmd += ["--overwrite"] if rep else []
                cmd += ["--ref-model", args.ref_model or folder] if run == "scorecli-ref" else []
            else:
                batch = {"ref-batch16": 16, "ref-single": 1}[run]
                cmd = [
                    sys.executable,
                    __file__,
                    "--corpus",
                    args.corpus,
                    "--reference",
                    folder,
                    str(batch),
                    f"{tmp}/{run}",
                ]
            wall, peak = timed(cmd)
            walls[run].append(wall)
            rss[run].append(peak)
            print(f"  {run} ({rep + 1}/{args.repeat}): {wall:.1f} s", file=sys.stderr)
            if not rep:
                results[run] = {"scores": load_scores(tmp, run)}
    for run in runs:
        results[run].update(wall=float(np.median(walls[run])), rss=max(rss[run]))
    reference = results.get("ref-single") or results.get("ref-batch16")
    n_tokens = len(next(iter(results.values()))["scores"]["logprob"])
    print(
        f"\ncorpus: {Path(args.corpus).name} ({n_tokens:,} scored tokens), model: {loaded.info['model']}, "
        f"CPU, {torch_threads()} threads, torch {__import__('torch').__version__}, "
        f"median of {args.repeat} run{'s' if args.repeat > 1 else ''}\n"
    )
    columns = ["run", "wall s", "tokens/s", "vs scorecli", "vs ref-batch16", "vs ref-single", "peak RSS MB"]
    columns += ["max abs diff logprob", "max abs diff entropy"]
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    for run, r in results.items():
        speedups = [
            f"{results[base]['wall'] / r['wall']:.2f}x" if base in results else "-"
            for base in ("ref-batch16", "ref-single")
        ]
        # The cost of an option: this run's wall time over the plain run's (lower is better).
        cost = f"{r['wall'] / results['scorecli']['wall']:.2f}x" if "scorecli" in results else "-"
        diffs = ["-", "-"]
        if reference is not None and r is not reference:
            diffs = [f"{np.abs(r['scores'][k] - reference['scores'][k]).max():.1e}" for k in ("logprob", "entropy")]
        cells = [run, f"{r['wall']:.1f}", f"{n_tokens / r['wall']:.0f}", cost, *speedups, f"{r['rss']:.0f}", *diffs]
        print("| " + " | ".join(cells) + " |")
    if "scorecli" in results and "scorecli-bf16" in results:
        print("\nbfloat16 drift from float32 (scorecli-bf16 against scorecli, per token):\n")
        print("| statistic | mean abs diff | p99 abs diff | max abs diff |\n|---|---:|---:|---:|")
        for k in ("logprob", "entropy"):
            diff = np.abs(results["scorecli-bf16"]["scores"][k] - results["scorecli"]["scores"][k])
            print(f"| {k} | {diff.mean():.2e} | {np.percentile(diff, 99):.2e} | {diff.max():.2e} |")


def load_scores(tmp: str, run: str) -> dict[str, np.ndarray]:
    """Per-token log-probs and entropies a run wrote, in input order."""
    if run.startswith("scorecli"):
        import pandas as pd

        tokens = pd.read_parquet(f"{tmp}/{run}/tokens.parquet", columns=["logprob", "entropy"])
        return {k: tokens[k].to_numpy(np.float64) for k in ("logprob", "entropy")}
    saved = np.load(f"{tmp}/{run}.npz")
    return {k: saved[k].astype(np.float64) for k in ("logprob", "entropy")}


def torch_threads() -> int:
    """The number of threads torch uses here."""
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
