"""Cost of the corpus bootstrap (error bars of `summary.json`) for a run of many documents.

    python benchmarks/bench_bootstrap.py [--docs 10000000]

Writes, in a temporary folder, a sequences.parquet of DOCS made-up documents (seeded; row groups of 65,536
rows, as a run's final file), then in a fresh process reads its per-document sums a row group at a time
and computes the 95% intervals of corpus perplexity and bits per byte (1,000 resamples), as a run does at
its end. Prints the wall time and the peak RSS of that process. Exits non-zero above 10 s or 500 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MAX_SECONDS, MAX_MB = 10.0, 500.0
_MEASURE = """
import json, resource, sys, time
from scorecli.analysis.bootstrap import corpus_intervals, sequence_sums
started = time.perf_counter()
figures = corpus_intervals(sequence_sums([sys.argv[1]]))
seconds = time.perf_counter() - started
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, **figures}))
"""


def write_sequences(path: Path, n_docs: int, seed: int = 0) -> None:
    """Write the columns the bootstrap reads for n_docs made-up documents, in row groups of 65,536."""
    rng = np.random.default_rng(seed)
    step = 1 << 20
    schema = pa.schema(
        [("doc", pa.int64()), ("n_tokens", pa.int64()), ("sum_logprob", pa.float64()), ("n_bytes", pa.int64())]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n_docs, step):
            n = min(step, n_docs - start)
            n_tokens = rng.integers(1, 500, n)
            table = pa.table(
                {
                    "doc": np.arange(start, start + n),
                    "n_tokens": n_tokens,
                    "sum_logprob": -rng.uniform(1, 4, n) * n_tokens,
                    "n_bytes": n_tokens * 4,
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=1 << 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bootstrap-") as tmp:
        path = Path(tmp) / "sequences.parquet"
        write_sequences(path, args.docs)
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    print(f"documents {args.docs:,}: {result['seconds']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MB")
    print(f"perplexity 95% CI {result['perplexity_ci']}, bits per byte 95% CI {result['bits_per_byte_ci']}")
    print(f"units: {result['bootstrap_units']}, resamples: {result['bootstrap_resamples']}")
    if result["seconds"] > MAX_SECONDS or result["peak_rss_mb"] > MAX_MB:
        sys.exit(f"too costly: more than {MAX_SECONDS} s or {MAX_MB} MB")


if __name__ == "__main__":
    main()
