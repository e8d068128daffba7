"""Time and memory of `scorecli report` on a big run: 10 million token rows by default.

    python benchmarks/bench_report.py [--tokens 10000000] [--doc-tokens 100] [--keep DIR]

Writes, in a temporary folder (or DIR), a run folder of made-up scores (seeded): tokens.parquet with
TOKENS rows in documents of DOC-TOKENS tokens, in the row groups of 65,536 rows a run writes, and its
sequences.parquet; then runs `scorecli report` on it in a fresh process and prints its wall time, its peak
RSS and the size of the page. Exits non-zero above 60 s.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorecli.data.tables import SEQUENCE_SCHEMA, TOKEN_SCHEMA

MAX_SECONDS = 60.0
_MEASURE = """
import resource, sys, time
from scorecli.analysis.report import build_report
started = time.perf_counter()
build_report(sys.argv[1], out=sys.argv[2])
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
WORDS = ["the", " cat", " sat", " on", " a", " mat", ".", " It", " was", " warm", "\n"]


def write_run(folder: Path, n_tokens: int, doc_tokens: int, seed: int = 0) -> None:
    """A run folder of n_tokens made-up token rows in documents of doc_tokens, and their sequence rows."""
    rng = np.random.default_rng(seed)
    n_docs = math.ceil(n_tokens / doc_tokens)
    meta = {b"model": b"made-up", b"input": b"made-up.jsonl", b"dtype": b"float32", b"id_field": b"id"}
    step = 1 << 16
    sums = np.zeros(n_docs)
    with pq.ParquetWriter(folder / "tokens.parquet", TOKEN_SCHEMA.with_metadata(meta)) as writer:
        for start in range(0, n_tokens, step):
            rows = np.arange(start, min(start + step, n_tokens))
            doc, position = rows // doc_tokens, rows % doc_tokens
            difficulty = 1 + (doc % 17) / 8
            logprob = -(rng.exponential(difficulty) * (1 + 2 / (1 + position))).astype(np.float32)
            words = rng.integers(0, len(WORDS), len(rows))
            lengths = np.array([len(w) for w in WORDS])[words]
            token = pa.array(np.array(WORDS, dtype=object)[words], pa.string())
            starts = position * 4
            table = pa.table(
                {
                    "doc": doc,
                    "id": pa.array(np.char.add("d", doc.astype(str)), pa.string()),
                    "position": position.astype(np.int32),
                    "token_id": words.astype(np.int32),
                    "token": token,
                    "start": starts.astype(np.int32),
                    "end": (starts + lengths).astype(np.int32),
                    "logprob": logprob,
                    "entropy": rng.uniform(0, 6, len(rows)).astype(np.float32),
                    "is_response": np.ones(len(rows), bool),
                },
                schema=TOKEN_SCHEMA.with_metadata(meta),
            )
            writer.write_table(table, row_group_size=step)
            sums += np.bincount(doc, weights=logprob, minlength=n_docs)
    n = np.bincount(np.arange(n_tokens) // doc_tokens, minlength=n_docs)
    n_bytes = n * 4
    seq = pa.table(
        {
            "doc": np.arange(n_docs),
            "id": pa.array([f"d{i}" for i in range(n_docs)], pa.string()),
            "n_tokens": n,
            "sum_logprob": sums,
            "mean_logprob": sums / n,
            "perplexity": np.exp(-sums / n),
            "mean_entropy": np.full(n_docs, 3.0),
            "n_bytes": n_bytes,
            "bits_per_byte": -sums / (n_bytes * math.log(2)),
            "n_words": n,
            "word_perplexity": np.exp(-sums / n),
            "truncated": np.zeros(n_docs, bool),
        },
        schema=SEQUENCE_SCHEMA.with_metadata(meta),
    )
    pq.write_table(seq, folder / "sequences.parquet", row_group_size=step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--doc-tokens", type=int, default=100)
    parser.add_argument("--keep", type=Path, help="write the run and the report here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        write_run(folder, args.tokens, args.doc_tokens)
        print(f"wrote {args.tokens:,} token rows in {time.perf_counter() - started:.1f} s")
        page = folder / "report.html"
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(folder), str(page)], capture_output=True, text=True, check=True
        )
        seconds, peak_mb = map(float, out.stdout.split())
        result = {
            "tokens": args.tokens,
            "seconds": seconds,
            "peak_rss_mb": peak_mb,
            "page_mb": page.stat().st_size / 2**20,
        }
    print(json.dumps(result))
    print(f"report: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB, page {result['page_mb']:.1f} MB")
    if seconds > MAX_SECONDS:
        sys.exit(f"too slow: more than {MAX_SECONDS} s")


if __name__ == "__main__":
    main()
