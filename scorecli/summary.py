"""Corpus statistics accumulated while scoring, and their Rich rendering."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table

from scorecli.scores import DocScore, perplexity

TOP_N = 5
_PREVIEW_CHARS = 200
_PREVIEW_WIDTH = 40  # keeps a row of the extreme-document tables on one line of 80 columns


@dataclass
class Summary:
    """Running totals over scored documents; corpus figures are token-weighted."""

    n_docs: int = 0
    n_tokens: int = 0
    n_truncated: int = 0
    n_unscored: int = 0
    sum_logprob: float = 0.0
    sum_entropy: float = 0.0
    n_bytes: int = 0
    n_words: int = 0
    sum_word_surprisal: float = 0.0
    n_rejected: int = 0
    sum_doc_perplexity: float = 0.0
    seconds: float = 0.0
    _highest: list = field(default_factory=list)
    _lowest: list = field(default_factory=list)

    def add(self, score: DocScore) -> None:
        """Count one document."""
        self.n_docs += 1
        self.n_truncated += score.truncated
        if not score.n_tokens:
            self.n_unscored += 1
            return
        row = score.sequence_row()
        self.n_tokens += score.n_tokens
        self.sum_logprob += score.sum_logprob
        self.sum_entropy += score.sum_entropy
        self.n_bytes += score.n_bytes
        if row["n_words"]:  # texts of whitespace alone have tokens but no words
            self.n_words += row["n_words"]
            self.sum_word_surprisal -= score.sum_logprob
        self.sum_doc_perplexity += row["perplexity"]
        preview = _preview_source(score)
        entry = (row["perplexity"], -score.doc, score.doc, score.id, score.n_tokens, preview)
        for heap, key in ((self._highest, entry), (self._lowest, (-entry[0], *entry[1:]))):
            if len(heap) < TOP_N:
                heapq.heappush(heap, key)
            else:
                heapq.heappushpop(heap, key)

    def state(self) -> dict:
        """Everything the summary holds, as JSON-ready values, to carry it across a resumed run."""
        return dict(vars(self))

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
        return -self.sum_logprob / (self.n_bytes * math.log(2)) if self.n_bytes else None

    @property
    def word_perplexity(self) -> float | None:
        """exp(Σ word surprisal / number of words), lm-evaluation-harness's word_perplexity."""
        return perplexity(-self.sum_word_surprisal / self.n_words) if self.n_words else None

    @property
    def mean_entropy(self) -> float | None:
        """Mean predictive entropy per scored token, in nats."""
        return self.sum_entropy / self.n_tokens if self.n_tokens else None

    @property
    def tokens_per_second(self) -> float | None:
        """Scored tokens per second of scoring."""
        return self.n_tokens / self.seconds if self.seconds > 0 else None

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
            "perplexity": self.perplexity,
            "mean_doc_perplexity": self.mean_doc_perplexity,
            "bits_per_byte": self.bits_per_byte,
            "word_perplexity": self.word_perplexity,
            "words": self.n_words,
            "mean_entropy": self.mean_entropy,
            "tokens_per_second": self.tokens_per_second,
            "seconds": self.seconds,
            "truncated": self.n_truncated,
            "unscored": self.n_unscored,
            "rejected": self.n_rejected,
        }


def render(summary: Summary, metadata: dict[str, str]) -> Group:
    """A Rich renderable: the headline figures, the run's settings, and the extreme documents."""
    figures = Table(title="scorecli summary", show_header=False, title_justify="left")
    figures.add_column(style="bold")
    figures.add_column(justify="right")
    rows = [
        ("documents", f"{summary.n_docs:,}"),
        ("scored tokens", f"{summary.n_tokens:,}"),
        ("corpus perplexity", _num(summary.perplexity)),
        ("mean document perplexity", _num(summary.mean_doc_perplexity)),
        ("bits per byte", _num(summary.bits_per_byte)),
        ("word perplexity", _num(summary.word_perplexity)),
        ("mean entropy (nats)", _num(summary.mean_entropy)),
        ("tokens/s", _num(summary.tokens_per_second, 1)),
        ("wall time", f"{summary.seconds:.1f} s"),
    ]
    for name, value in rows:
        figures.add_row(name, value)
    settings = Table(show_header=False, box=None, padding=(0, 1))
    for key in ("model", "dtype", "device", "bos", "long_texts", "scored"):
        if key in metadata:
            settings.add_row(f"[dim]{key}[/dim]", f"[dim]{metadata[key]}[/dim]")
    parts = [figures, settings]
    if summary.n_truncated:
        parts.append(
            f"[yellow]warning:[/yellow] {summary.n_truncated:,} document(s) were longer than --max-length "
            f"{metadata.get('max_length')} and were truncated (see the `truncated` column)"
        )
    if summary.n_rejected:
        parts.append(f"[yellow]warning:[/yellow] {summary.n_rejected:,} record(s) were rejected (see errors.jsonl)")
    if summary.n_unscored:
        parts.append(f"[yellow]note:[/yellow] {summary.n_unscored:,} document(s) had no token to score")
    if metadata.get("head", "chunked").startswith("model logits"):
        parts.append(f"[yellow]note:[/yellow] scored with {metadata['head']}")
    for title, docs in (("highest perplexity", summary.highest()), ("lowest perplexity", summary.lowest())):
        if docs:
            parts.append(_doc_table(title, docs))
    return Group(*parts)


def _preview_source(score: DocScore) -> str:
    """The start of what a document's statistics are about: its (first) response where it has one."""
    text = score.text
    if score.n_tokens and not score.is_response.all():
        text = text[int(score.starts[score.is_response][0]) :]
    return text[:_PREVIEW_CHARS]


def _doc_table(title: str, docs: list[tuple]) -> Table:
    """A table of documents with their perplexity and the start of their text."""
    table = Table(title=title, title_justify="left")
    # Only the text may wrap: Rich then narrows it, not the numbers, on a narrow terminal.
    for name in ("doc", "id", "tokens", "perplexity"):
        table.add_column(name, justify="left" if name == "id" else "right", no_wrap=True)
    table.add_column("text")
    for doc_perplexity, doc, doc_id, n, text in docs:
        table.add_row(str(doc), doc_id or "", f"{n:,}", _num(doc_perplexity), _preview(text))
    return table


def _preview(text: str) -> str:
    """A one-line, markup-safe start of a text."""
    from rich.markup import escape

    flat = " ".join(text.split())
    return escape(flat if len(flat) <= _PREVIEW_WIDTH else flat[: _PREVIEW_WIDTH - 1] + "…")


def _num(value: float | None, digits: int = 3) -> str:
    """Format a figure, or a dash where it is undefined."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"
