"""Document scores, and the columns of the token and sequence tables, each defined once. Needs numpy, not torch.

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from scorecli.data.measures import bits_per_byte, perplexity
from scorecli.data.words import Words, word_stats
from scorecli.inputs.records import Choice

# Per-token statistics, in their order in tokens.parquet (between `end` and `is_response`). A statistic's
# values flow from its block function in engine/stats.py to this column under the same name; those present in a
# run are the ones it computes. `top_tokens` is the text of `top_ids`, added by the Scorer.
TOKEN_COLUMNS: dict[str, pa.DataType] = {
    "logprob": pa.float32(),
    "entropy": pa.float32(),
    "rank": pa.int32(),
    "top_ids": pa.list_(pa.int32()),
    "top_logprobs": pa.list_(pa.float32()),
    "top_tokens": pa.list_(pa.string()),
    "ref_logprob": pa.float32(),
    "ref_entropy": pa.float32(),
    "kl": pa.float32(),
    "reverse_kl": pa.float32(),
    "same_top": pa.bool_(),
    "word_start_logprob": pa.float32(),
}
DEFAULT_STATS = ("logprob", "entropy", "rank")


def numpy_type(column: str) -> type:
    """The numpy dtype a token column's values are kept in (of the items, for list columns)."""
    kind = TOKEN_COLUMNS[column]
    kind = kind.value_type if pa.types.is_list(kind) else kind
    return object if pa.types.is_string(kind) else kind.to_pandas_dtype()


@dataclass
class DocScore:
    """The scores of one document: a row per scored token, and the document's totals.

    `stats` holds the per-token statistics as columns named as in TOKEN_COLUMNS ([n] or [n, K] arrays).
    Statistics count the response rows only (every row of a plain text is one); prompt rows are present
    only when asked for, as context that was scored but not counted. `kept` carries the record's kept
    input fields (`Record.kept`) to the outputs, untouched. `unscored_chars` counts the characters of the
    scored text (the response, the scored chat turns) that no token holds: the tokenizer dropped them.
    `choice` is the choice of a record with choices that this document scores (inputs.Choice).
    """

    doc: int
    id: str | None
    text: str
    token_ids: np.ndarray
    positions: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    tokens: Sequence[str]
    is_response: np.ndarray
    n_bytes: int
    truncated: bool
    words: Words
    stats: dict[str, np.ndarray]
    kept: dict[str, object] | None = None
    unscored_chars: int = 0
    choice: Choice | None = None
    sum_logprob: float = field(init=False)

    def __post_init__(self) -> None:
        """Total the response log-probs in float64."""
        self.sum_logprob = self.response_sum("logprob")

    @property
    def key(self) -> int | tuple[int, int, bool]:
        """What tells this document from every other of a run (Record.key)."""
        return self.doc if self.choice is None else (self.doc, self.choice.index, self.choice.unconditional)

    @property
    def logprobs(self) -> np.ndarray:
        """The log-probability of each row's token given the preceding tokens, in nats."""
        return self.stats["logprob"]

    @property
    def entropies(self) -> np.ndarray:
        """Entropy of the predictive distribution at each row, in nats."""
        return self.stats["entropy"]

    @property
    def n_tokens(self) -> int:
        """Number of scored response tokens."""
        return int(self.is_response.sum())

    @property
    def n_rows(self) -> int:
        """Number of token rows (response tokens, plus prompt tokens where asked for)."""
        return len(self.is_response)

    @property
    def sum_entropy(self) -> float:
        """Total entropy over the response tokens, in nats."""
        return self.response_sum("entropy")

    def response_sum(self, column: str) -> float:
        """The sum of a per-token column over the response tokens, in float64."""
        return float(self.response_values(column).sum(dtype=np.float64))

    def response_values(self, column: str) -> np.ndarray:
        """A per-token column's values at the response tokens (the column itself where every row is one)."""
        values = self.stats[column]
        return values if self.is_response.all() else values[self.is_response]

    def response_mean(self, column: str) -> float | None:
        """The mean of a per-token column over the response tokens; None where there are none."""
        n = self.n_tokens
        return self.response_sum(column) / n if n else None

    def sequence_row(self) -> dict:
        """The document's row of sequences.parquet; statistics are None where no token was scored."""
        words = self.words.correction is not None
        return {c.name: c.value(self) for c in SEQUENCE_COLUMNS if c.present(self.stats, words)}

    def word_columns(self) -> dict[str, np.ndarray]:
        """The numeric columns of the document's rows of words.parquet: start, end and the word statistics.

        `surprisal_corrected` is NaN where the correction was not computed or is unknown (a truncated text's
        last word).
        """
        stats = word_stats(self.words, self.response_values("logprob"), self.response_values("entropy"))
        correction = self.words.correction
        stats["surprisal_corrected"] = stats["surprisal"] + (np.nan if correction is None else correction)
        return {"start": self.words.starts, "end": self.words.ends, **stats}

    def corrected_word_surprisal(self) -> tuple[float, int]:
        """Σ corrected surprisal over the words that have one (all but a truncated text's last), and their number."""
        correction = self.words.correction
        if correction is None or not len(correction):
            return 0.0, 0
        known = np.isfinite(correction)
        total = -self.sum_logprob + float(correction[known].sum(dtype=np.float64))
        if not known.all():  # the unknown words' surprisal is in the document's sum, and must leave it
            surprisal = word_stats(self.words, self.response_values("logprob"), self.response_values("entropy"))
            total -= float(surprisal["surprisal"][~known].sum())
        return total, int(known.sum())

    def word_texts(self, first: int = 0, end: int | None = None) -> list[str]:
        """The texts of the document's words `first` to `end`."""
        starts, ends = self.words.starts[first:end].tolist(), self.words.ends[first:end].tolist()
        return [self.text[a:b] for a, b in zip(starts, ends)]

    def word_rows(self) -> dict[str, np.ndarray | list]:
        """The document's rows of words.parquet, as columns."""
        columns = self.word_columns()
        return {"word": self.words.indices(), "text": self.word_texts(), **columns}


class TokenStrings(Sequence[str]):
    """The texts of a document's tokens, decoded on demand through `decode` (which caches each id's text).

    A huge document keeps its token ids only, not millions of references to strings.
    """

    def __init__(self, ids: np.ndarray, decode: Callable[[list[int]], list[str]]) -> None:
        """The texts of the token `ids`."""
        self.ids = ids
        self.decode = decode

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return self.decode(self.ids[index].tolist())
        return self.decode([int(self.ids[index])])[0]

    def __iter__(self) -> Iterator[str]:
        for first in range(0, len(self.ids), 1 << 16):
            yield from self[first : first + (1 << 16)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None


@dataclass(frozen=True)
class SequenceColumn:
    """A column of sequences.parquet: its type, its value for a document, and the statistic it needs."""

    name: str
    type: pa.DataType
    value: Callable[[DocScore], object]
    needs: str | None = None  # the token column a run must have for this one to be present
    words: bool = False  # present only in runs that compute word rows (and their correction)

    def present(self, stats: Iterable[str], words: bool = False) -> bool:
        """Whether a run with these token columns (and word rows, where `words`) has this column."""
        return (self.needs is None or self.needs in stats) and (words or not self.words)


def _scored(value: Callable[[DocScore], object]) -> Callable[[DocScore], object]:
    """`value` where the document has a scored token, else None."""
    return lambda d: value(d) if d.n_tokens else None


def _bits_per_byte(d: DocScore) -> float | None:
    """-Σ log-prob / ln 2 over the UTF-8 bytes of the scored text."""
    return bits_per_byte(d.sum_logprob, d.n_bytes) if d.n_tokens and d.n_bytes else None


def _corrected_word_perplexity(d: DocScore) -> float | None:
    """exp(Σ corrected word surprisal / words) over the words that have one; None where none has."""
    total, n = d.corrected_word_surprisal()
    return perplexity(-total / n) if n else None


SEQUENCE_COLUMNS = (
    SequenceColumn("doc", pa.int64(), lambda d: d.doc),
    SequenceColumn("id", pa.string(), lambda d: d.id),
    SequenceColumn("n_tokens", pa.int64(), lambda d: d.n_tokens),
    SequenceColumn("sum_logprob", pa.float64(), _scored(lambda d: d.sum_logprob)),
    SequenceColumn("mean_logprob", pa.float64(), lambda d: d.response_mean("logprob")),
    SequenceColumn("perplexity", pa.float64(), _scored(lambda d: perplexity(d.response_mean("logprob")))),
    SequenceColumn("mean_entropy", pa.float64(), lambda d: d.response_mean("entropy")),
    SequenceColumn("n_bytes", pa.int64(), lambda d: d.n_bytes),
    SequenceColumn("bits_per_byte", pa.float64(), _bits_per_byte),
    SequenceColumn("n_words", pa.int64(), lambda d: len(d.words)),
    SequenceColumn(
        "word_perplexity", pa.float64(), lambda d: perplexity(d.sum_logprob / len(d.words)) if len(d.words) else None
    ),
    SequenceColumn("word_perplexity_corrected", pa.float64(), lambda d: _corrected_word_perplexity(d), words=True),
    SequenceColumn("truncated", pa.bool_(), lambda d: d.truncated),
    SequenceColumn("unscored_chars", pa.int64(), lambda d: d.unscored_chars),
    SequenceColumn(
        "top1_rate",
        pa.float64(),
        _scored(lambda d: np.count_nonzero(d.response_values("rank") == 1) / d.n_tokens),
        "rank",
    ),
    SequenceColumn("ref_sum_logprob", pa.float64(), _scored(lambda d: d.response_sum("ref_logprob")), "ref_logprob"),
    SequenceColumn(
        "ref_perplexity", pa.float64(), _scored(lambda d: perplexity(d.response_mean("ref_logprob"))), "ref_logprob"
    ),
    SequenceColumn("mean_kl", pa.float64(), lambda d: d.response_mean("kl"), "kl"),
    SequenceColumn("mean_reverse_kl", pa.float64(), lambda d: d.response_mean("reverse_kl"), "reverse_kl"),
    SequenceColumn("top1_agreement", pa.float64(), lambda d: d.response_mean("same_top"), "same_top"),
)
