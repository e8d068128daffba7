"""Questions per second of lm-evaluation-harness with the `scorecli` model and with lm-eval's own `hf` backend.

    python benchmarks/bench_lmeval.py [--questions 300] [--shots 5] [--runs 3] [--batch-sizes 1,4,16]
                                      [--search-questions 20] [--min-shared-prefix N,...] [--sampler first_n]
                                      [--small]

Needs the lm-eval extra. Writes a generated few-shot multiple-choice task (samples/make_tasks.py: four choices,
`--shots` examples drawn per question, or with `--sampler first_n` the same first shots for every question, as
lm-eval's MMLU has them) to a temp folder, then evaluates it with SmolLM2 (the embedded default
model) in float32 on the CPU, each run in a fresh process: the model loaded (timed apart), then
`lm_eval.simple_evaluate` timed (the task's own set-up included; lm-eval's index of its built-in tasks left out):

1. lm-eval's `hf` backend (on scorecli's transformers copy of the GGUF model) at each of `--batch-sizes` on
   the first `--search-questions` questions; the fastest is its best batch size.
2. `--runs` pairs on all questions, in turn: `hf` at its best batch size, then `scorecli` (default options).
3. `--min-shared-prefix` values (optional): `scorecli` once at each, after the pairs.

Prints the median questions/s of each, the speed-up (target: at least 10x), the accuracies (which must agree),
the largest difference of a request's log-likelihood between the two, and the tokens scorecli fed and spared.
`--threads N` sets both backends' CPU threads (on a machine that other work loads, one thread each keeps
torch's threads from waiting on each other). `--small` is `--questions 8 --runs 1 --search-questions 4
--batch-sizes 1,4`, to check that the script runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASK = "scorecli_mc"
METRICS = ("acc,none", "acc_norm,none", "acc_bytes,none", "acc_mutual_info,none")


def one_run(backend: str, tasks: str, model_args: str, batch_size: int, limit: int | None, threads: int) -> dict:
    """Evaluate the task once, in this process; the seconds simple_evaluate took, the metrics and each response."""
    import lm_eval
    import torch

    if threads:
        torch.set_num_threads(threads)
        model_args += f",threads={threads}" if backend == "scorecli" else ""
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    if backend == "scorecli":
        import scorecli.executors.harness  # noqa: F401  (registers the model)
    start = time.perf_counter()
    lm = get_model(backend).create_from_arg_string(model_args, {"batch_size": batch_size})
    loaded = time.perf_counter()
    manager = TaskManager(include_path=tasks, include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, limit=limit, log_samples=True)
    seconds = time.perf_counter() - loaded
    samples = out["samples"][TASK]
    return {
        "load_seconds": loaded - start,
        "seconds": seconds,
        "questions": len(samples),
        "requests": sum(len(s["resps"]) for s in samples),
        "metrics": {m: out["results"][TASK][m] for m in METRICS},
        "responses": [[r[0][0] for r in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])],
        "scorecli": out["config"].get("scorecli", {}),
    }


def run(
    backend: str, tasks: Path, model_args: str, threads: int, batch_size: int = 1, limit: int | None = None
) -> dict:
    """One evaluation in a fresh process (this script's --one)."""
    command = [sys.executable, __file__, "--one", backend, "--tasks", str(tasks), "--model-args", model_args]
    command += ["--threads", str(threads)]
    command += ["--batch-size", str(batch_size)] + ([] if limit is None else ["--limit", str(limit)])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"{backend} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def smollm_folder() -> str:
    """The transformers folder scorecli converts the embedded GGUF model to (converting it once if needed)."""
    from scorecli.engine.models import load_model

    return load_model(None, device="cpu", dtype="float32").tokenizer.name_or_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--search-questions", type=int, default=20)
    parser.add_argument("--min-shared-prefix", default="")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of both backends (0: torch's default).")
    parser.add_argument("--sampler", choices=["default", "first_n"], default="default")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", help=argparse.SUPPRESS)
    parser.add_argument("--model-args", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.tasks, args.model_args, args.batch_size, args.limit, args.threads)))
        return
    if args.small:
        args.questions, args.runs, args.search_questions, args.batch_sizes = 8, 1, 4, "1,4"

    spec = importlib.util.spec_from_file_location("make_tasks", ROOT / "samples" / "make_tasks.py")
    make_tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tasks)
    folder = Path(tempfile.mkdtemp(prefix="bench-lmeval-"))
    tasks = make_tasks.write_tasks(folder, args.questions, args.shots, sampler=args.sampler)
    hf_args = f"pretrained={smollm_folder()},dtype=float32,device=cpu"
    ours_args = "dtype=float32,device=cpu"
    threads = args.threads or "torch's default"
    drawn = "the same for every question" if args.sampler == "first_n" else "drawn per question"
    shots = f"{args.shots} shots ({drawn})"
    print(f"{args.questions} questions, {shots}, 4 choices; SmolLM2-135M float32, CPU threads: {threads}")

    search = {}
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        search[size] = run("hf", tasks, hf_args, args.threads, size, args.search_questions)
        seconds = search[size]["seconds"]
        print(f"hf batch size {size}: {seconds:.1f} s for {args.search_questions} questions", flush=True)
    best = min(search, key=lambda b: search[b]["seconds"])

    hf_runs, ours_runs = [], []
    for k in range(args.runs):
        hf_runs.append(run("hf", tasks, hf_args, args.threads, best))
        ours_runs.append(run("scorecli", tasks, ours_args, args.threads))
        print(f"pair {k + 1}: hf {hf_runs[-1]['seconds']:.1f} s, scorecli {ours_runs[-1]['seconds']:.1f} s", flush=True)

    def rate(runs: list[dict]) -> float:
        return statistics.median(r["questions"] / r["seconds"] for r in runs)

    hf_rate, ours_rate = rate(hf_runs), rate(ours_runs)
    worst = max(abs(a - b) for x, y in zip(hf_runs[0]["responses"], ours_runs[0]["responses"]) for a, b in zip(x, y))
    info = ours_runs[0]["scorecli"]
    print()
    print("| backend | questions/s (median) | seconds (median) | model loading, s | acc | acc_norm | acc_mutual_info |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in ((f"lm-eval hf, batch size {best}", hf_runs), ("scorecli", ours_runs)):
        m = runs[0]["metrics"]
        seconds = statistics.median(r["seconds"] for r in runs)
        load = statistics.median(r["load_seconds"] for r in runs)
        print(
            f"| {name} | {rate(runs):.3f} | {seconds:.1f} | {load:.1f} | {m['acc,none']:.4f} "
            f"| {m['acc_norm,none']:.4f} | {m['acc_mutual_info,none']:.4f} |"
        )
    print()
    print(f"speed-up: {ours_rate / hf_rate:.1f}x (target: at least 10x)")
    print(f"same accuracies: {hf_runs[0]['metrics'] == ours_runs[0]['metrics']}")
    print(f"largest |difference| of a request's log-likelihood: {worst:.2e} nats")
    print(
        f"scorecli: {info.get('tokens_scored')} tokens scored, {info.get('tokens_fed')} fed, "
        f"{info.get('tokens_shared')} spared by shared contexts; {hf_runs[0]['requests']} requests"
    )
    for value in [int(v) for v in args.min_shared_prefix.split(",") if v]:
        r = run("scorecli", tasks, f"{ours_args},min_shared_prefix={value}", args.threads)
        i = r["scorecli"]
        print(
            f"min_shared_prefix {value}: {r['questions'] / r['seconds']:.3f} questions/s, {r['seconds']:.1f} s, "
            f"{i['tokens_fed']} tokens fed, {i['tokens_shared']} spared",
            flush=True,
        )


if __name__ == "__main__":
    main()
