"""Peak memory of `scorecli score` as the corpus grows (it must stay flat), and on one huge line (it must stay
bounded), each run in a fresh process.

    python benchmarks/bench_memory.py [--sizes 10000,100000] [--long-line-mb 50] [--complete] [--keep]

Generates, in a temporary folder and deterministically (seeded, from made-up syllables, no download),
a JSONL corpus of short texts (5-40 words, fields `id` and `text`) for each size, and a tiny random GPT-2
(2 layers, 32 wide, a 400-token byte-level BPE trained on the generated texts), then runs
`scorecli score CORPUS --model FOLDER --out DIR -q --overwrite` on each corpus in a fresh process.
Wall time is the whole process (start-up, model load, scoring, writing); peak RSS is the process's own.
The tiny model makes scoring cheap, so what grows with the corpus (buffers, writers, summaries) shows.
Exits non-zero when the peak RSS of the largest corpus exceeds that of the smallest by more than 1.25x.

With `--long-line-mb N` (0 to skip), it also writes a JSONL file of one record whose text is a single line
of N MB (the same made-up prose, no line break), and measures two things in fresh processes:
- `scorecli score LINE --truncate --max-length 64` from start to end (whole CLI run); limit 1 GB;
- scoring it in windows (no --truncate): scoring all of its millions of tokens would take hours on a CPU,
  so this measures, through the library as the CLI calls it, reading the record, tokenising the whole
  text (in pieces), cutting all its windows, packing their batches and scoring the first
  FIRST_BATCHES batches, then stops; limit 1.5 GB.
With `--complete` it also runs `scorecli score LINE` in windows to the end (whole CLI run, limit 1.5 GB):
every window scored, the document's rows assembled, its part written and joined into the final files.
With the tiny model scoring is cheap, so what is measured is the pipeline's memory; it still scores every
window (about 2 tokens a character of this text, twice over at stride half the window), so it takes a
while: minutes for a few MB, much longer for 50 MB on a small CPU (see --long-line-mb).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench_score import timed  # the sibling script: run as benchmarks/bench_memory.py

RSS_RATIO_LIMIT = 1.25
LONG_LINE_TRUNCATE_LIMIT_MB = 1024
LONG_LINE_WINDOWS_LIMIT_MB = 1536
FIRST_BATCHES = 8
SEED = 0
# Made-up syllables: words that no real tokenizer or model knows, and that need no download.
SYLLABLES = [
    "ka", "lo", "mi", "ren", "tu", "sha", "vor", "el", "qui", "dan", "po", "zi", "ber", "an", "ul", "tho",
    "ne", "gra", "fi", "os", "wen", "ly", "cor", "ix", "ba", "mu", "ste", "ri", "gol", "ae",
]  # fmt: skip


def make_texts(n: int, seed: int = SEED) -> Iterator[str]:
    """Yield n deterministic texts of 5-40 made-up words, some capitalised and punctuated."""
    rng = random.Random(seed)
    for _ in range(n):
        words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(rng.randint(5, 40))]
        words[0] = words[0].capitalize()
        # Some commas and a final stop give the tokenizer more than one kind of token to learn.
        for i in range(3, len(words) - 1, rng.randint(4, 9)):
            words[i] += ","
        yield " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def write_corpus(path: Path, n: int) -> None:
    """Write n texts as JSONL records with `id` and `text`."""
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(make_texts(n)):
            f.write(json.dumps({"id": f"doc{i:06d}", "text": text}) + "\n")


def build_model(folder: Path, training_texts: int = 2000) -> Path:
    """Save a tiny random GPT-2 with a small byte-level BPE trained on generated texts; return its folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    # The same recipe as the tests' tiny GPT-2 (no internet): only an EOS, which scorecli prepends as BOS.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its bar would clutter the table on stdout
    )
    tok.train_from_iterator(make_texts(training_texts, seed=SEED + 1), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=len(fast), n_positions=512, n_embd=32, n_layer=2, n_head=2, eos_token_id=0, bos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def write_long_line(path: Path, megabytes: int) -> int:
    """Write one JSONL record whose text is a single line of about `megabytes` MB; return its characters."""
    parts, size = [], 0
    for text in make_texts(10**9, seed=SEED + 2):
        parts.append(text)
        size += len(text) + 1
        if size >= megabytes * 1_000_000:
            break
    text = " ".join(parts)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "line", "text": text}) + "\n")
    return len(text)


class _Enough(Exception):
    """Raised from the progress callback to stop scoring after the first batches."""


def first_batches(corpus: str, model: str, batches: int) -> None:
    """Read, tokenise and cut into windows the corpus's first buffer, score `batches` batches, and stop."""
    import time

    from transformers.utils import logging as hf_logging

    from scorecli import Scorer, load_model, read_records

    hf_logging.disable_progress_bar()  # its bar would clutter the table on stdout
    loaded = load_model(model, device="cpu", dtype="float32")
    scorer = Scorer(loaded.model, loaded.tokenizer)
    reports = []
    started = time.perf_counter()

    def progress(state: object) -> None:
        # The first report comes once the buffer is tokenised and cut; one more after each batch.
        reports.append((time.perf_counter() - started, state.tokens_planned, state.tokens_done))
        if len(reports) > batches:
            raise _Enough

    try:
        for _ in scorer.score_buffers(read_records(corpus), progress=progress):
            break
    except _Enough:
        pass
    encoded_s, planned, _ = reports[0]
    print(
        f"  tokenised and cut {planned:,} tokens into windows of {scorer.max_length} in {encoded_s:.1f} s; "
        f"scored {reports[-1][2]:,} tokens in {len(reports) - 1} batches",
        file=sys.stderr,
    )


def long_line(
    tmp: Path, model: Path, scorecli: str, megabytes: int, complete: bool = False
) -> list[tuple[str, float, float, float]]:
    """Measure a single huge line, truncated (a whole CLI run) and in windows (the first batches, or all)."""
    line = tmp / "line.jsonl"
    chars = write_long_line(line, megabytes)
    print(f"one line of {chars:,} characters", file=sys.stderr)
    rows = []
    cmd = [scorecli, "score", str(line), "--model", str(model), "--out", str(tmp / "line-scores"), "-q"]
    wall, rss = timed([*cmd, "--overwrite", "--truncate", "--max-length", "64"])
    rows.append(("whole run, --truncate --max-length 64", wall, rss, LONG_LINE_TRUNCATE_LIMIT_MB))
    print(f"  --truncate: {wall:.1f} s, {rss:.0f} MB", file=sys.stderr)
    wall, rss = timed([sys.executable, __file__, "--first-batches", str(line), str(model), str(FIRST_BATCHES)])
    rows.append((f"windows: read, tokenise, cut, first {FIRST_BATCHES} batches", wall, rss, LONG_LINE_WINDOWS_LIMIT_MB))
    print(f"  windows: {wall:.1f} s, {rss:.0f} MB", file=sys.stderr)
    if complete:
        wall, rss = timed([*cmd, "--overwrite"])
        rows.append(("whole run, windows (complete)", wall, rss, LONG_LINE_WINDOWS_LIMIT_MB))
        print(f"  complete: {wall:.1f} s, {rss:.0f} MB", file=sys.stderr)
    return rows


def scored_tokens(out_dir: Path, n_texts: int) -> int:
    """Check that sequences.parquet has a row per text; return the sum of its n_tokens."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(out_dir / "sequences.parquet", columns=["n_tokens"])
    if table.num_rows != n_texts:
        sys.exit(f"{out_dir}/sequences.parquet: {table.num_rows:,} rows for {n_texts:,} texts")
    return int(pc.sum(table["n_tokens"]).as_py() or 0)


def main() -> None:
    """Generate the corpora and the model, score each corpus in a fresh process and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated corpus sizes, in texts")
    parser.add_argument("--long-line-mb", type=int, default=50, help="size of the single-line test, 0 to skip")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    parser.add_argument("--complete", action="store_true", help="also score the long line whole, in windows (slow)")
    parser.add_argument("--first-batches", nargs=3, metavar=("CORPUS", "MODEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_batches:
        first_batches(args.first_batches[0], args.first_batches[1], int(args.first_batches[2]))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    # The scorecli of this interpreter's environment, not whichever one is first on PATH.
    scorecli = str(Path(sys.executable).parent / "scorecli")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; never wait on a network

    tmp = Path(tempfile.mkdtemp(prefix="scorecli-bench-memory-"))
    try:
        print("building the tiny model…", file=sys.stderr)
        model = build_model(tmp / "model")
        rows = []
        for n in sizes:
            corpus, out_dir = tmp / f"corpus-{n}.jsonl", tmp / f"scores-{n}"
            write_corpus(corpus, n)
            cmd = [scorecli, "score", str(corpus), "--model", str(model), "--out", str(out_dir), "-q", "--overwrite"]
            wall, rss = timed(cmd)
            tokens = scored_tokens(out_dir, n)
            print(f"  {n:,} texts: {wall:.1f} s, {rss:.0f} MB", file=sys.stderr)
            rows.append((n, tokens, wall, rss))
        line_rows = long_line(tmp, model, scorecli, args.long_line_mb, args.complete) if args.long_line_mb else []
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\n| texts | scored tokens | wall s | tokens/s | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|")
    for n, tokens, wall, rss in rows:
        print(f"| {n:,} | {tokens:,} | {wall:.1f} | {tokens / wall:,.0f} | {rss:.0f} |")
    (small, *_, small_rss), (large, *_, large_rss) = rows[0], rows[-1]
    ratio = large_rss / small_rss
    verdict = "within" if ratio <= RSS_RATIO_LIMIT else "OVER"
    print(f"\npeak RSS ratio {large:,}/{small:,} texts: {ratio:.2f}x ({verdict} the {RSS_RATIO_LIMIT}x limit)")
    failed = ratio > RSS_RATIO_LIMIT
    if line_rows:
        print(f"\none line of {args.long_line_mb} MB:\n")
        print("| what is measured | wall s | peak RSS MB | limit MB |")
        print("|---|---:|---:|---:|")
        for what, wall, rss, limit in line_rows:
            print(f"| {what} | {wall:.1f} | {rss:.0f} | {limit} |")
            failed |= rss > limit
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
