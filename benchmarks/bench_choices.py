"""`scorecli score --choices-field` against the same items with --no-prefix-sharing and as prompt/response records.

    python benchmarks/bench_choices.py [--model PATH] [--runs 3] [--repeat 5] [--shots 3] [--keep DIR]

Builds a few-shot multiple-choice corpus from the lm-eval task of samples/tasks/mc (its description and
`--shots` solved training questions as a preamble, then each test question; its 4 choices after a space, as
lm-eval's target delimiter puts them), `--repeat` times over (20 questions each), and the very same
(context, choice) pairs written out as prompt/response records. Scores, in fresh processes and in
interleaved rounds (`--runs` of them): the choices (prefix sharing on, the default), the choices with
--no-prefix-sharing, and the flat prompt/response records. Prints, per way, the median scoring seconds
(summary.json's, model loading aside), the tokens fed and spared, the accuracy, and the largest |difference|
of a choice's sum of log-probs between the ways (target: at most 1e-4 nats per token).
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
import pandas as pd

TASK = Path(__file__).resolve().parent.parent / "samples" / "tasks" / "mc"
WAYS = {
    "choices": ["--prompt-field", "q", "--choices-field", "choices", "--label-field", "label"],
    "choices, no sharing": [
        "--prompt-field",
        "q",
        "--choices-field",
        "choices",
        "--label-field",
        "label",
        "--no-prefix-sharing",
    ],  # fmt: skip
    "prompt/response": ["--prompt-field", "prompt", "--response-field", "response"],
}


def write_corpora(folder: Path, repeat: int, shots: int) -> tuple[Path, Path]:
    """The questions with their choices, and the same (context, choice) pairs as prompt/response records."""
    train = [json.loads(line) for line in (TASK / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (TASK / "test.jsonl").read_text().splitlines()]
    preamble = "Answer each question with one of its four choices.\n\n" + "".join(
        f"Question: {d['question']}\nAnswer: {d['choices'][d['label']]}\n\n" for d in train[:shots]
    )
    mc, flat = folder / "mc.jsonl", folder / "flat.jsonl"
    with open(mc, "w") as f, open(flat, "w") as g:
        for r in range(repeat):
            for i, d in enumerate(test):
                q = f"{preamble}Question: {d['question']}\nAnswer:"
                choices = [" " + c for c in d["choices"]]
                f.write(json.dumps({"id": f"{r}-{i}", "q": q, "choices": choices, "label": d["label"]}) + "\n")
                for c in choices:
                    g.write(json.dumps({"prompt": q, "response": c}) + "\n")
    return mc, flat


def score(corpus: Path, out: Path, way: str, model: str | None) -> dict:
    """Score a corpus one way in a fresh process; its summary.json figures."""
    cmd = [sys.executable, "-m", "scorecli", "score", str(corpus), "-o", str(out), "-q", "--overwrite", *WAYS[way]]
    subprocess.run(cmd + (["-m", model] if model else []), check=True)
    return json.loads((out / "summary.json").read_text())["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-choices-"))
    folder.mkdir(parents=True, exist_ok=True)
    mc, flat = write_corpora(folder, args.repeat, args.shots)
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    figures: dict[str, dict] = {}
    for _ in range(args.runs):
        for way in WAYS:
            out = folder / way.replace(" ", "").replace(",", "-").replace("/", "-")
            figures[way] = score(flat if way == "prompt/response" else mc, out, way, args.model)
            seconds[way].append(figures[way]["seconds"])
    sums = {}
    for way in WAYS:
        out = folder / way.replace(" ", "").replace(",", "-").replace("/", "-")
        table = "sequences.parquet" if way == "prompt/response" else "choices.parquet"
        frame = pd.read_parquet(out / table)
        sums[way] = frame["sum_logprob"].to_numpy() / np.maximum(frame["n_tokens"].to_numpy(), 1)
    questions = args.repeat * 20
    print(f"{questions} questions x 4 choices, {args.shots} shots; median of {args.runs} interleaved runs")
    print(f"{'way':22} {'seconds':>8} {'questions/s':>12} {'fed':>8} {'spared':>8} {'accuracy':>9}")
    for way in WAYS:
        s, f = statistics.median(seconds[way]), figures[way]
        acc = f.get("accuracy_sum")
        acc_text = "" if acc is None else f"{acc:.3f}"
        print(f"{way:22} {s:8.2f} {questions / s:12.2f} {f['fed_tokens']:8,} {f['shared_tokens']:8,} {acc_text:>9}")
    base = sums["prompt/response"]
    for way in ("choices", "choices, no sharing"):
        print(f"largest |Δ sum/token| {way} vs prompt/response: {np.abs(sums[way] - base).max():.2e} nats")


if __name__ == "__main__":
    main()
