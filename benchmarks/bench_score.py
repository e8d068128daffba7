"""Throughput, peak memory and exactness of `scorecli score` against the plain reference, each run in a fresh process.

    python benchmarks/bench_score.py [--corpus samples/long.jsonl] [--model PATH] [--ref-model PATH] [--repeat 5]
                                     [--runs scorecli,scorecli-bf16,...] [--baseline REV]

Runs, on the same texts and the same (already converted, "warm") model, in float32 on the CPU:
  scorecli      the CLI: `scorecli score CORPUS -o DIR -q` (float32; --compile auto)
  scorecli-compile the same with --compile on (the first repetition may compile cold; later ones hit the cache)
  scorecli-bf16 the same with --dtype bfloat16 (AVX-512 or AMX bfloat16 units on recent x86; not float32-exact)
  scorecli-bf16-f32head the same with --head-dtype float32: the bfloat16 model with the exact float32 output layer
  scorecli-top5 the same with --top-k 5 (target: at most 1.1x the scorecli run's wall time)
  scorecli-ref  the same with --ref-model REF (default: the model itself; target: at most 2.2x and 2.5 GB)
  ref-batch16   plain reference: batches of 16 texts in input order, right-padded, full log_softmax + gather
  ref-single    plain reference: one text at a time (no padding), full log_softmax + gather
Wall time is the whole process (start-up, model load, scoring, writing); peak RSS is the process's own.
With --repeat N each run is repeated N times, the runs interleaved (paired: one of each, then again), and
the table shows the median wall time and the largest peak RSS. Below the table, the drift of scorecli-bf16
from the float32 scorecli run (mean |diff|, 99th percentile, max, per token) where both ran, and the drift that
the bfloat16 output layer adds (scorecli-bf16 against scorecli-bf16-f32head).
With --baseline REV each scorecli run also runs as `RUN@REV`, the code of git commit REV (a temporary
worktree), interleaved with today's: paired timings against an earlier commit, in the "vs REV" column.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Runs whose options a baseline commit may predate: never run at --baseline.
NEWER_THAN_BASELINES = {"scorecli-bf16-f32head"}


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


@contextmanager
def worktree(rev: str | None, tmp: str) -> Iterator[str | None]:
    """A temporary git worktree of commit `rev` (None: no worktree), removed afterwards."""
    if rev is None:
        yield None
        return
    folder = f"{tmp}/baseline"
    add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", folder, rev]
    subprocess.run(add, check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", folder], check=False)


def timed(cmd: list[str], cwd: str | None = None) -> tuple[float, float]:
    """Run a command (in `cwd`); return its wall time (s) and peak RSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=cwd)
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
    parser.add_argument("--baseline", default=None, metavar="REV", help="also run each scorecli run at git commit REV")
    parser.add_argument("--reference", nargs=3, metavar=("FOLDER", "BATCH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The baseline's runs start in another folder.
    args.corpus = str(Path(args.corpus).resolve())
    if args.model and Path(args.model).exists():
        args.model = str(Path(args.model).resolve())
    if args.reference:
        reference_run(args.reference[0], args.corpus, int(args.reference[1]), args.reference[2])
        return

    from scorecli.engine.models import load_model

    loaded = load_model(args.model, device="cpu", dtype="float32")  # converts and caches a GGUF once: warm
    folder = str(loaded.model.name_or_path)  # the converted folder for a GGUF, else what --model named
    results: dict[str, dict] = {}
    runs = args.runs.split(",")
    if args.baseline:
        paired = [run for run in runs if run.startswith("scorecli") and run not in NEWER_THAN_BASELINES]
        runs = [r for run in runs for r in ([run, f"{run}@{args.baseline}"] if run in paired else [run])]
    walls: dict[str, list[float]] = {run: [] for run in runs}
    rss: dict[str, list[float]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as tmp, worktree(args.baseline, tmp) as baseline:
        for rep, run in ((rep, run) for rep in range(args.repeat) for run in runs):
            cwd = baseline if "@" in run else None  # `python -m scorecli` imports the scorecli of its folder
            if run.startswith("scorecli"):
                kind = run.split("@")[0]
                dtype = "bfloat16" if "-bf16" in kind else "float32"
                cmd = [sys.executable, "-m", "scorecli", "score", args.corpus, "-o", f"{tmp}/{run}", "-q"]
                cmd += ["--model", args.model] if args.model else []
                cmd += ["--batch-tokens", str(args.batch_tokens)] if args.batch_tokens else []
                cmd += ["--device", "cpu", "--dtype", dtype]
                cmd += ["--top-k", "5"] if kind == "scorecli-top5" else []
                cmd += ["--compile", "on"] if kind == "scorecli-compile" else []
                cmd += ["--head-dtype", "float32"] if kind == "scorecli-bf16-f32head" else []
                cmd += ["--overwrite"] if rep else []
                cmd += ["--ref-model", args.ref_model or folder] if kind == "scorecli-ref" else []
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
            wall, peak = timed(cmd, cwd)
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
    columns += [f"vs {args.baseline}"] if args.baseline else []
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
        cells = [run, f"{r['wall']:.1f}", f"{n_tokens / r['wall']:.0f}", cost, *speedups, f"{r['rss']:.0f}"]
        if args.baseline:
            # How many times faster than the same run at the baseline commit (its own row: -).
            before = results.get(f"{run}@{args.baseline}")
            cells.append(f"{before['wall'] / r['wall']:.2f}x" if before else "-")
        cells += diffs
        print("| " + " | ".join(cells) + " |")
    drifts = (
        ("bfloat16 drift from float32", "scorecli-bf16", "scorecli"),
        ("drift of the bfloat16 model with its float32 output layer", "scorecli-bf16-f32head", "scorecli"),
        ("drift the bfloat16 output layer adds", "scorecli-bf16", "scorecli-bf16-f32head"),
    )
    for title, run, base in drifts:
        if run in results and base in results:
            print(f"\n{title} ({run} against {base}, per token):\n")
            print("| statistic | mean abs diff | p99 abs diff | max abs diff |\n|---|---:|---:|---:|")
            for k in ("logprob", "entropy"):
                diff = np.abs(results[run]["scores"][k] - results[base]["scores"][k])
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
