"""Memory of one huge document: its rows are built and written a slice at a time, so what saving and joining
allocate beyond the document itself does not grow with its length (tracemalloc counts Python objects and
numpy arrays: deterministic, unlike the process's RSS). benchmarks/bench_memory.py measures whole runs."""

import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest

from scorecli.data import words as words_module
from scorecli.data.scores import DocScore, TokenStrings
from scorecli.data.tables import sequence_table
from scorecli.data.words import Words, assign_words, word_spans, word_stats
from scorecli.engine.batching import windows
from scorecli.engine.prefix import _sorted, plan_prefixes
from scorecli.runfolder.runs import RunWriter, claim_out_dir

N_TOKENS = 1 << 21
VOCAB = ["xy", " "]


def _huge_doc(n: int) -> DocScore:
    """A document of n tokens, alternately "xy" and " " (words "xy"), with made-up statistics."""
    ids = (np.arange(n) % 2).astype(np.int32)
    starts = (np.arange(n) // 2 * 3 + ids * 2).astype(np.int32)
    ends = starts + 2 - ids
    n_words = (n + 1) // 2
    word_starts = np.arange(n_words, dtype=np.int64) * 3
    stats = {
        "logprob": -(np.arange(n) % 7).astype(np.float32) - 0.5,
        "entropy": (np.arange(n) % 5).astype(np.float32),
        "rank": (np.arange(n) % 11 + 1).astype(np.int32),
    }
    return DocScore(
        doc=0,
        id="huge",
        text="xy " * n_words,
        token_ids=ids,
        positions=np.arange(n, dtype=np.int32),
        starts=starts,
        ends=ends,
        tokens=TokenStrings(ids, lambda ids: [VOCAB[i] for i in ids]),
        is_response=np.ones(n, dtype=bool),
        n_bytes=3 * n_words,
        truncated=False,
        words=Words(word_starts, word_starts + 2, np.arange(n) // 2),
        stats=stats,
    )


def _peak_while(action) -> int:
    """The peak of memory traced while `action` runs, above what was allocated before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("words", [False, True])
def test_saving_and_joining_a_huge_document_allocates_little_beyond_it(tmp_path, words):
    doc = _huge_doc(N_TOKENS)
    folder = claim_out_dir(tmp_path / "out")
    writer = RunWriter(folder, {"model": "made-up"}, words=words)

    def save_and_finish() -> None:
        writer.save([doc], 1, {})
        writer.finish(1, {}, errors_file=False)

    sequence_table([_huge_doc(2)])  # what a first table costs once (pyarrow's set-up) is not the document's
    peak = _peak_while(save_and_finish)
    folder.release()
    # A slice of rows at a time: about 6 MB whatever the length (3 bytes a token here). Words add their
    # per-word statistics (about 13 bytes a token). Building all the rows at once took over 40 bytes a token
    # (a list of ids and one of token texts alone are 16).
    limit = 12 * 2**20 + (24 * N_TOKENS if words else 0)
    assert peak < limit, f"{peak / N_TOKENS:.1f} bytes a token"
    tokens = pq.read_table(tmp_path / "out" / "tokens.parquet")
    assert tokens.num_rows == N_TOKENS
    assert tokens["token"][:4].to_pylist() == ["xy", " ", "xy", " "]
    assert tokens["id"][-1].as_py() == "huge" and tokens["start"][-1].as_py() == int(doc.starts[-1])
    if words:
        word_rows = pq.read_table(tmp_path / "out" / "words.parquet")
        assert word_rows.num_rows == N_TOKENS // 2 and set(word_rows["text"].unique().to_pylist()) == {"xy"}


def test_word_stats_of_a_huge_document_allocate_little_beyond_their_results(monkeypatch):
    # Slices of 64k tokens. A float64 copy of every log-prob (8 bytes a token) and the search for each word's
    # first token (16 bytes a word) took 6 bytes a token beyond the per-word results here; a slice at a time,
    # about 2 MB whatever the length.
    monkeypatch.setattr(words_module, "_SLICE", 1 << 16)
    doc = _huge_doc(N_TOKENS)
    logprobs, entropies = doc.stats["logprob"], doc.stats["entropy"]
    stats, peak, _ = _traced(lambda: word_stats(doc.words, logprobs, entropies))
    results = sum(column.nbytes for column in stats.values())
    assert peak - results < 4 * 2**20, f"{(peak - results) / N_TOKENS:.1f} bytes a token"
    assert stats["n_tokens"].tolist() == [2] * (N_TOKENS // 2)
    assert stats["surprisal"][:3].tolist() == [
        -float(logprobs[0]) - float(logprobs[1]),
        -float(logprobs[2]) - float(logprobs[3]),
        -float(logprobs[4]) - float(logprobs[5]),
    ]


def _traced(action) -> tuple[object, int, int]:
    """What `action` returns, the peak of memory traced while it runs, and what it still holds after it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = action()
        current, peak = tracemalloc.get_traced_memory()
        return result, peak - before, current - before
    finally:
        tracemalloc.stop()


def test_planning_the_windows_of_a_huge_document_allocates_little_per_window():
    # A 1M-token text in windows of 512 at stride 256, as the engine plans shared prefixes over them.
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50_000, 1 << 20).astype(np.int32)
    sequences = [ids[w.begin : w.end] for w in windows(0, len(ids), 512, 256)]
    groups, peak, _ = _traced(lambda: plan_prefixes(sequences, 32))
    assert groups == []  # random windows share no start
    # Sorting by the bytes of whole windows took 2 kB a window (4 bytes a token of each): over 16 MB here.
    # Now only the first 32 tokens of each are keyed, unless starts agree: a few hundred bytes a window.
    assert peak < 512 * len(sequences), f"{peak / len(sequences):.0f} bytes a window"


def test_planning_in_pieces_sorts_as_whole_windows_do():
    # Windows that agree on their first tokens but not later, some shorter than others: the same groups as
    # sorting the whole windows' bytes (which test_prefix.py checks against brute force).
    rng = np.random.default_rng(1)
    base = rng.integers(0, 5, 64).astype(np.int32)
    sequences = [
        np.concatenate([base[:40], rng.integers(0, 3, int(n)).astype(np.int32)]) for n in rng.integers(0, 9, 60)
    ]
    keyed = sorted(range(len(sequences)), key=lambda i: (sequences[i].tobytes(), i))
    assert _sorted(sequences, list(range(len(sequences))), 32) == keyed


def test_the_words_of_a_huge_document_take_a_few_bytes_each():
    n_words = 1 << 20
    text = "xy " * n_words
    spans, _, held = _traced(lambda: word_spans(text))
    assert spans.tolist()[:2] == [[0, 2], [3, 5]] and len(spans) == n_words
    # int32 (start, end) pairs: 8 bytes a word (as int64, 16).
    assert held <= 8 * n_words + 2**16, f"{held / n_words:.1f} bytes a word"
    offsets = np.stack([np.arange(2 * n_words) // 2 * 3 + np.arange(2 * n_words) % 2 * 2] * 2, axis=1)
    offsets[:, 1] += 2 - np.arange(2 * n_words) % 2  # "xy", then " ", as the tokens of _huge_doc
    offsets = offsets.astype(np.int32)
    words, _, held = _traced(lambda: assign_words(spans, offsets))
    assert words.token_word.tolist()[:4] == [0, 1, 1, 2]  # a space goes to the next word; the last to the last
    # Every word gets a token: its starts and ends are views of the spans, and only the word of each token
    # is new (4 bytes a token); copying the starts and ends took 8 bytes a word more.
    assert held <= 4 * len(offsets) + 2**16, f"{held / len(offsets):.1f} bytes a token"
