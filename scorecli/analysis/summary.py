"""Corpus statistics accumulated while scoring, carried across sessions as JSON (rendered by summary_view.py).

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from scorecli.data.measures import bits_per_byte, perplexity

# DocScore only as a type: the CLI loads this module at start-up, before pyarrow, which data/scores.py needs.
if TYPE_CHECKING:
    from scorecli.data.scores import DocScore


TOP_N = 3  # extreme documents each way: enough to spot outliers, few enough that the summary fits a screen
_PREVIEW_CHARS = 200
KL_PERCENTILES = (100.0, 99.9, 99.0, 95.0, 90.0, 50.0)
DELTA_P_PERCENTILES = (100.0, 99.9, 99.0, 95.0, 90.0, 75.0, 50.0, 25.0, 10.0, 5.0, 1.0, 0.1, 0.0)


# The counts and sums of a summary, which add up over parts of a corpus.
_ADDED = (
    "n_docs",
    "n_tokens",
    "n_truncated",
    "n_unscored",
    "unscored_chars",
    "sum_logprob",
    "sum_entropy",
    "n_bytes",
    "n_words",
    "sum_word_surprisal",
    "n_words_corrected",
    "sum_word_surprisal_corrected",
    "n_rejected",
    "sum_doc_perplexity",
    "n_top1",
    "session_tokens",
    "fed_tokens",
    "shared_tokens",
)


@dataclass
class Summary:
    """Running totals over scored documents; corpus figures are token-weighted."""

    n_docs: int = 0
    n_tokens: int = 0
    n_truncated: int = 0
    n_unscored: int = 0
    unscored_chars: int = 0  # characters of the scored text that no token holds (DocScore.unscored_chars)
    sum_logprob: float = 0.0
    sum_entropy: float = 0.0
    n_bytes: int = 0
    n_words: int = 0
    sum_word_surprisal: float = 0.0
    # Words with a corrected surprisal (runs with word rows; all but a truncated text's last word), and its sum.
    n_words_corrected: int = 0
    sum_word_surprisal_corrected: float = 0.0
    n_rejected: int = 0
    sum_doc_perplexity: float = 0.0
    seconds: float = 0.0
    n_top1: int = 0
    # Bootstrap intervals (scorecli.analysis.bootstrap.corpus_intervals), set once the run's documents are all in.
    intervals: dict = field(default_factory=dict)
    sessions: int = 1
    session_tokens: int = 0
    session_seconds: float = 0.0
    fed_tokens: int = 0  # run through the model, over all sessions
    shared_tokens: int = 0  # spared the model by shared prefixes
    _highest: list = field(default_factory=list)
    _lowest: list = field(default_factory=list)
    _comparison: ReferenceComparison | None = None  # against a reference model; rebuilt from the saved tokens on resume

    def add(self, score: DocScore) -> None:
        """Count one document."""
        self.n_docs += 1
        self.n_truncated += score.truncated
        self.unscored_chars += score.unscored_chars
        if not score.n_tokens:
            self.n_unscored += 1
            return
        row = score.sequence_row()
        self.n_tokens += score.n_tokens
        self.sum_logprob += score.sum_logprob
        self.sum_entropy += score.sum_entropy
        self.n_bytes += score.n_bytes
        if "rank" in score.stats:
            self.n_top1 += int(np.count_nonzero(score.response_values("rank") == 1))
        if "ref_logprob" in score.stats:
            self.comparison.add({c: score.response_values(c) for c in ReferenceComparison.COLUMNS})
        if row["n_words"]:  # texts of whitespace alone have tokens but no words
            self.n_words += row["n_words"]
            self.sum_word_surprisal -= score.sum_logprob
            total, n = score.corrected_word_surprisal()
            self.n_words_corrected += n
            self.sum_word_surprisal_corrected += total
        self.sum_doc_perplexity += row["perplexity"]
        preview = _preview_source(score)
        entry = (row["perplexity"], -score.doc, score.doc, score.id, score.n_tokens, preview)
        for heap, key in ((self._highest, entry), (self._lowest, (-entry[0], *entry[1:]))):
            if len(heap) < TOP_N:
                heapq.heappush(heap, key)
            else:
                heapq.heappushpop(heap, key)

    def merge(self, other: Summary) -> None:
        """Add the documents of another summary, of other documents of the same corpus (a shard's)."""
        for name in _ADDED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self._highest, other._highest), (self._lowest, other._lowest)):
            for entry in theirs:
                if len(mine) < TOP_N:
                    heapq.heappush(mine, tuple(entry))
                else:
                    heapq.heappushpop(mine, tuple(entry))

    def state(self) -> dict:
        """Everything the summary holds, as JSON-ready values, to carry it across a resumed run."""
        return {k: v for k, v in vars(self).items() if k != "_comparison"}

    @property
    def comparison(self) -> ReferenceComparison:
        """The token statistics of the model against a reference model (empty where there is none)."""
        if self._comparison is None:
            self._comparison = ReferenceComparison()
        return self._comparison

    @classmethod
    def from_state(cls, state: dict) -> Summary:
        """A summary that continues from a saved state."""
        summary = cls(**{k: v for k, v in state.items() if not k.startswith("_")})
        for name in ("_highest", "_lowest"):
            heap = [tuple(entry) for entry in state[name]]
            heapq.heapify(heap)
            setattr(summary, name, heap)
        return summary

    @property
    def perplexity(self) -> float | None:
        """Corpus perplexity: exp(-Σ logprob / Σ tokens)."""
        return perplexity(self.sum_logprob / self.n_tokens) if self.n_tokens else None

    @property
    def mean_doc_perplexity(self) -> float | None:
        """Mean of the per-document perplexities (documents with at least one scored token)."""
        scored = self.n_docs - self.n_unscored
        return self.sum_doc_perplexity / scored if scored else None

    @property
    def bits_per_byte(self) -> float | None:
        """Σ -logprob / ln 2 over the UTF-8 bytes the scored tokens cover."""
        return bits_per_byte(self.sum_logprob, self.n_bytes) if self.n_bytes else None

    @property
    def word_perplexity(self) -> float | None:
        """exp(Σ word surprisal / number of words), lm-evaluation-harness's word_perplexity."""
        return perplexity(-self.sum_word_surprisal / self.n_words) if self.n_words else None

    @property
    def word_perplexity_corrected(self) -> float | None:
        """exp(Σ corrected word surprisal / number of words) over the words that have one; None without any."""
        n = self.n_words_corrected
        return perplexity(-self.sum_word_surprisal_corrected / n) if n else None

    @property
    def mean_entropy(self) -> float | None:
        """Mean predictive entropy per scored token, in nats."""
        return self.sum_entropy / self.n_tokens if self.n_tokens else None

    @property
    def top1_rate(self) -> float | None:
        """Share of scored tokens that were the model's most likely next token."""
        return self.n_top1 / self.n_tokens if self.n_tokens else None

    @property
    def tokens_per_second(self) -> float | None:
        """Scored tokens per second of scoring, over all the sessions of a resumed run."""
        return self.n_tokens / self.seconds if self.seconds > 0 else None

    @property
    def session_tokens_per_second(self) -> float | None:
        """Tokens this session scored itself per second of its scoring."""
        return self.session_tokens / self.session_seconds if self.session_seconds > 0 else None

    def next_session(self) -> None:
        """Start counting a resumed run's new session (its totals carry on)."""
        self.sessions += 1
        self.session_tokens, self.session_seconds = 0, 0.0

    def highest(self) -> list[tuple]:
        """The documents with the highest perplexity: (perplexity, doc, id, n_tokens, preview), highest first."""
        return [(p, doc, i, n, text) for p, _, doc, i, n, text in sorted(self._highest, reverse=True)]

    def lowest(self) -> list[tuple]:
        """The documents with the lowest perplexity, lowest first."""
        return [(-p, doc, i, n, text) for p, _, doc, i, n, text in sorted(self._lowest, reverse=True)]

    def as_dict(self) -> dict[str, float | int | None]:
        """The headline figures, for machine-readable use."""
        return {
            "documents": self.n_docs,
            "scored_tokens": self.n_tokens,
            "fed_tokens": self.fed_tokens,
            "shared_tokens": self.shared_tokens,
            "perplexity": self.perplexity,
            "mean_doc_perplexity": self.mean_doc_perplexity,
            "bits_per_byte": self.bits_per_byte,
            "word_perplexity": self.word_perplexity,
            "word_perplexity_corrected": self.word_perplexity_corrected,
            "words": self.n_words,
            "mean_entropy": self.mean_entropy,
            "top1_rate": self.top1_rate,
            "tokens_per_second": self.tokens_per_second,
            "seconds": self.seconds,
            "sessions": self.sessions,
            "session_tokens_per_second": self.session_tokens_per_second,
            "session_seconds": self.session_seconds,
            "truncated": self.n_truncated,
            "unscored": self.n_unscored,
            "unscored_chars": self.unscored_chars,
            "rejected": self.n_rejected,
            "highest": [_doc_dict(entry) for entry in self.highest()],
            "lowest": [_doc_dict(entry) for entry in self.lowest()],
            **(self._comparison.as_dict() if self._comparison is not None else {}),
            **self.intervals,
        }


class ReferenceComparison:
    """A model against a reference model over scored tokens: llama-perplexity --kl-divergence's statistics.

    Each ± is the standard error of a mean over tokens, taken as independent (as llama.cpp does): for a mean
    of x, sqrt(var(x) / (N - 1)); for PPL, PPL × that of the mean negative log-likelihood; for the RMS of
    Δp, that of the mean of Δp² divided by 2·RMS; for the same-top share p, sqrt(p(1 - p) / (N - 1)).
    Percentiles are numpy's (linear interpolation between order statistics).
    """

    COLUMNS = ("logprob", "ref_logprob", "kl", "reverse_kl", "same_top")

    def __init__(self) -> None:
        """No tokens yet."""
        self._parts: dict[str, list[np.ndarray]] = {c: [] for c in self.COLUMNS}

    def add(self, columns: dict[str, Iterable]) -> None:
        """Add scored tokens' values of each of COLUMNS."""
        for c in self.COLUMNS:
            self._parts[c].append(np.asarray(columns[c]))

    def _column(self, name: str) -> np.ndarray:
        """All tokens' values of a column, in float64."""
        parts = self._parts[name]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    def as_dict(self) -> dict[str, float | None]:
        """The figures, named for summary.json."""
        lp, ref_lp, kl = self._column("logprob"), self._column("ref_logprob"), self._column("kl")
        n = len(lp)
        if n == 0:
            return {}
        nll, ref_nll = -lp.mean(), -ref_lp.mean()
        dp = np.exp(lp) - np.exp(ref_lp)
        rms = math.sqrt(float(np.mean(dp**2)))
        same = float(self._column("same_top").mean())
        figures = {
            "ref_perplexity": perplexity(-ref_nll),
            "perplexity_se": perplexity(-nll) * _se(-lp),
            "ref_perplexity_se": perplexity(-ref_nll) * _se(-ref_lp),
            "ln_ppl_ratio": nll - ref_nll,
            "ln_ppl_ratio_se": _se(ref_lp - lp),
            "mean_kl": float(kl.mean()),
            "mean_kl_se": _se(kl),
            **{f"kl_{percentile_name(q)}": float(v) for q, v in zip(KL_PERCENTILES, np.percentile(kl, KL_PERCENTILES))},
            "mean_reverse_kl": float(self._column("reverse_kl").mean()),
            "mean_reverse_kl_se": _se(self._column("reverse_kl")),
            "delta_p_mean": float(dp.mean()),
            "delta_p_mean_se": _se(dp),
            "delta_p_rms": rms,
            "delta_p_rms_se": _se(dp**2) / (2 * rms) if rms > 0 else 0.0,
            **{
                f"delta_p_{percentile_name(q)}": float(v)
                for q, v in zip(DELTA_P_PERCENTILES, np.percentile(dp, DELTA_P_PERCENTILES))
            },
            "same_top": same,
            "same_top_se": math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0,
        }
        return {k: float(v) for k, v in figures.items()}


def _se(x: np.ndarray) -> float:
    """The standard error of the mean of x, tokens taken as independent (0 for a single value)."""
    return float(math.sqrt(np.var(x) / (len(x) - 1))) if len(x) > 1 else 0.0


def percentile_name(q: float) -> str:
    """A percentile's name in summary.json: max, min, median or p99.9."""
    return {100.0: "max", 0.0: "min", 50.0: "median"}.get(q, f"p{q:g}")


def _doc_dict(entry: tuple) -> dict:
    """An extreme document as summary.json lists it."""
    row = dict(zip(("perplexity", "doc", "id", "tokens", "text"), entry))
    if not math.isfinite(row["perplexity"]):
        row["perplexity"] = None  # JSON has no infinity
    return row


def _preview_source(score: DocScore) -> str:
    """The start of the scored text: the response, or the scored chat turns, not the prompt around them."""
    words = score.words
    if not len(words):
        return ""
    pieces, length = [], 0
    # Each word has a character at least: no more words than that can be needed (a huge text has millions).
    for start, end in zip(words.starts[:_PREVIEW_CHARS].tolist(), words.ends[:_PREVIEW_CHARS].tolist()):
        pieces.append(score.text[start:end])
        length += end - start + 1
        if length >= _PREVIEW_CHARS:
            break
    return " ".join(pieces)[:_PREVIEW_CHARS]


def choice_figures(batches: Iterable, normalisations: list[str]) -> dict:
    """A choice run's figures from its sequences rows (record batches): accuracy under each normalisation.

    Each accuracy is over the records with a label, with its 95% bootstrap interval over records, and also
    under lm-evaluation-harness's name where it has one (acc, acc_norm, acc_bytes, acc_mutual_info);
    `mean_margin` is over the records of two choices (the label's sum of log-probs minus the other's, or
    without a label the higher minus the lower).
    """
    from scorecli.analysis.bootstrap import DocSums, accuracy_intervals, add_choice_batches
    from scorecli.data.choices import NORMALISATIONS

    sums = DocSums(len(normalisations) + 1)
    records = two = 0
    margin_sum = 0.0
    for batch in batches:
        records += batch.num_rows
        add_choice_batches(sums, [batch], normalisations)
        pairs = [m for n, m in zip(batch.column("n_choices").to_pylist(), batch.column("margin").to_pylist()) if n == 2]
        known = [m for m in pairs if m is not None]
        two, margin_sum = two + len(known), margin_sum + sum(known)
    units = sums.units()
    labelled = sums.documents
    totals = units.sum(axis=0) if len(units) else np.zeros(sums.width)
    figures: dict = {"choice_records": records, "labelled_records": labelled}
    for j, (name, interval) in enumerate(zip(normalisations, accuracy_intervals(sums))):
        value = float(totals[j] / totals[-1]) if labelled else None
        figures[f"accuracy_{name}"] = value
        figures[f"accuracy_{name}_ci"] = interval
        lm_eval = NORMALISATIONS[name][1]
        if lm_eval is not None:
            figures[lm_eval] = value
    figures["mean_margin"] = margin_sum / two if two else None
    return figures


def critical_figures(batches: Iterable) -> dict:
    """The summary's critical-word figures of a two-choice --words run, from its choices.parquet rows (record batches).

    Over the records of two choices whose critical word has a surprisal (plain and corrected) in both:
    `critical_pairs` counts them; `critical_first_less_surprising` is the share where the first choice's
    critical word has the lower corrected surprisal (a tie counts as not lower), `..._plain` the same by the
    plain surprisal, and `critical_mean_difference` the mean of the second's corrected surprisal minus the
    first's, in nats; each with a 95% bootstrap interval over records.
    """
    from scorecli.analysis.bootstrap import DocSums, accuracy_intervals
    from scorecli.data.critical import critical_pairs

    docs, values = critical_pairs(batches)
    known = np.isfinite(values).all(axis=(1, 2))
    docs, values = docs[known], values[known]
    first, second = values[:, 0], values[:, 1]
    rows = np.stack(
        [first[:, 1] < second[:, 1], first[:, 0] < second[:, 0], second[:, 1] - first[:, 1], np.ones(len(docs))],
        axis=1,
    )
    sums = DocSums(rows.shape[1])
    sums.add(docs, rows)
    intervals = accuracy_intervals(sums)
    means = rows.mean(axis=0) if len(docs) else [None] * rows.shape[1]
    figures: dict = {"critical_pairs": len(docs)}
    names = ("critical_first_less_surprising", "critical_first_less_surprising_plain", "critical_mean_difference")
    for j, name in enumerate(names):
        figures[name] = None if means[j] is None else float(means[j])
        figures[f"{name}_ci"] = intervals[j]
    return figures
