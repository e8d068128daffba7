"""Pure numerics over logits met a chunk of the vocabulary at a time: the per-token statistics, as named columns.

The logits of a block of rows come in chunks of the vocabulary, in order of token id, so that no [rows,
vocabulary] tensor is ever built and each chunk's temporaries stay in the CPU's cache. `Softmax` keeps each
row's log-sum-exp and entropy as the chunks come, relative to the row's largest logit so far (online, as flash
attention does). Each statistic is a `Statistic` that takes every chunk and gives named columns [n] or [n, K]
at the end. A new statistic is a class here, named in STATISTICS, plus its column in data/scores.py's
TOKEN_COLUMNS. No model: the caller says how a chunk's logits are made (engine/head.py).

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Vocabulary entries per chunk: a block of 512 rows is 4 MB of float32 logits, which stay in cache while the
# statistics read them (the whole [rows, vocabulary] logits went to memory and back, 10% slower, measured).
VOCAB_CHUNK = 2048

# The logits of vocabulary entries [start, end) of a block's rows, float32 [n, end - start]; `near` [n, 1] is
# each row's largest logit in the chunks before (-inf before the first): a 16-bit product can be taken
# relative to it (engine/head.py).
LogitsOf = Callable[[int, int, torch.Tensor], torch.Tensor]


class Softmax:
    """The log-sum-exp and entropy of rows of logits met a chunk at a time, relative to each row's largest so far.

    After each `add`, `scale` is what the sums so far were multiplied by (the shift moved by `moved`), `exp`
    is exp(logit - shift) of that chunk, and `before` the sum before it: what statistics with sums of their
    own need to follow the shift. The shift is a constant to autograd: it cancels out of every result.
    """

    def __init__(self, rows: int, device: torch.device) -> None:
        """Start with no logits seen."""
        self.max = torch.full((rows, 1), -torch.inf, device=device)
        self.shift = torch.zeros(rows, 1, device=device)  # the largest logit so far where finite, else 0
        self.sum = torch.zeros(rows, 1, device=device)  # Σ exp(logit - shift)
        self.tilt = torch.zeros(rows, 1, device=device)  # Σ exp(logit - shift)·(logit - shift), at most 0
        self.before = self.sum
        self.moved = self.scale = self.exp = torch.zeros(0)

    def add(self, logits: torch.Tensor) -> None:
        """Take the next chunk of logits [n, C]."""
        new_max = torch.maximum(self.max, logits.detach().amax(-1, keepdim=True))
        shift = torch.where(new_max.isfinite(), new_max, 0.0)
        self.moved, self.max, self.shift = shift - self.shift, new_max, shift
        # A row with nothing summed yet (every logit so far -inf) has nothing to scale: exp(-moved) may overflow.
        self.scale = torch.where(self.sum > 0, torch.exp(-self.moved), 1.0)
        diff = logits - shift
        self.exp = diff.exp()
        # nansum drops 0·(-inf), where a model gives an entry no probability at all.
        tilt = torch.nansum(self.exp * diff, dim=-1, keepdim=True)
        self.tilt = self.scale * (self.tilt - self.moved * self.sum) + tilt
        self.before, self.sum = self.sum, self.scale * self.sum + self.exp.sum(dim=-1, keepdim=True)

    @property
    def lse(self) -> torch.Tensor:
        """The log-sum-exp of each row's logits, [n, 1]."""
        return self.shift + self.sum.log()

    @property
    def entropy(self) -> torch.Tensor:
        """Entropy of each row's softmax, in nats, [n, 1]."""
        # H = log Σ e - Σ e·(logit - shift) / Σ e: two terms of the same sign, so no cancellation (lse - Σ p·logit
        # would subtract two large numbers).
        return self.sum.log() - self.tilt / self.sum


@dataclass
class RowBlock:
    """What the statistics of a block of rows share: labels, their logits, and the softmax of each model."""

    labels: torch.Tensor  # [n]
    label_logits: torch.Tensor  # [n, 1] float32
    softmax: Softmax
    ref_label_logits: torch.Tensor | None = None  # [n, 1]: the reference model's, where there is one
    ref: Softmax | None = None
    top_k: int = 0
    subset: torch.Tensor | None = None  # [vocabulary] float32, 1 at the entries of a subset, else 0 ("word_start")


@dataclass
class Chunk:
    """Vocabulary entries [start, start + C) of a block's rows: their logits, and the reference model's."""

    start: int
    logits: torch.Tensor  # [n, C] float32
    ref_logits: torch.Tensor | None = None

    def own(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which rows' labels lie in this chunk [n, 1], and their column in it (0 elsewhere) [n, 1]."""
        width = self.logits.shape[-1]
        inside = (labels >= self.start) & (labels < self.start + width)
        return inside[:, None], torch.where(inside, labels - self.start, 0)[:, None]


class Statistic:
    """A per-token statistic: takes each chunk of the vocabulary in turn, gives its columns at the end."""

    columns: tuple[str, ...] = ()

    def __init__(self, rows: RowBlock) -> None:
        """Start on a block of rows."""
        self.rows = rows

    def add(self, chunk: Chunk) -> None:
        """Take the next chunk (the softmaxes have taken it already)."""

    def result(self) -> dict[str, torch.Tensor]:
        """The columns, once every chunk was added."""
        raise NotImplementedError


class LogProb(Statistic):
    """The log-probability of the label."""

    columns = ("logprob",)

    def result(self) -> dict[str, torch.Tensor]:
        """The label's logit minus the log-sum-exp."""
        return {"logprob": (self.rows.label_logits - self.rows.softmax.lse).squeeze(-1)}


class Entropy(Statistic):
    """Entropy of the predictive distribution, in nats."""

    columns = ("entropy",)

    def result(self) -> dict[str, torch.Tensor]:
        """The softmax's entropy."""
        return {"entropy": self.rows.softmax.entropy.squeeze(-1)}


class Rank(Statistic):
    """1 + the number of entries with a strictly larger logit than the label's: a count, not a sort."""

    columns = ("rank",)

    def __init__(self, rows: RowBlock) -> None:
        """Count from zero."""
        super().__init__(rows)
        self.larger = torch.zeros(len(rows.labels), 1, dtype=torch.int32, device=rows.labels.device)

    def add(self, chunk: Chunk) -> None:
        """Count the chunk's entries above the label's logit, the label's own entry aside."""
        label = self.rows.label_logits
        self.larger += (chunk.logits > label).sum(dim=-1, keepdim=True, dtype=torch.int32)
        # The label's logit may come from another product than the chunk's (engine/head.py): its own entry, a hair
        # above it, must not count as larger than itself.
        inside, column = chunk.own(self.rows.labels)
        self.larger -= (inside & (chunk.logits.gather(-1, column) > label)).int()

    def result(self) -> dict[str, torch.Tensor]:
        """The ranks, 1 for the model's top choice (tied entries share the better rank)."""
        return {"rank": self.larger.squeeze(-1) + 1}


class TopK(Statistic):
    """The K most likely tokens, most likely first, ties by the lower id first, and their log-probs."""

    columns = ("top_ids", "top_logprobs")

    def __init__(self, rows: RowBlock) -> None:
        """Start with none."""
        super().__init__(rows)
        n, device = len(rows.labels), rows.labels.device
        self.values, self.ids = torch.zeros(n, 0, device=device), torch.zeros(n, 0, dtype=torch.long, device=device)

    def add(self, chunk: Chunk) -> None:
        """Merge the chunk's top K into the top K so far."""
        values, ids = _top(chunk.logits, self.rows.top_k)
        # Every id so far is below this chunk's: a stable sort by value keeps the lower id first among equals.
        values, ids = torch.cat([self.values, values], -1), torch.cat([self.ids, ids + chunk.start], -1)
        order = values.argsort(dim=-1, descending=True, stable=True)[:, : self.rows.top_k]
        self.values, self.ids = values.gather(-1, order), ids.gather(-1, order)

    def result(self) -> dict[str, torch.Tensor]:
        """The top ids and their log-probs."""
        return {"top_ids": self.ids.int(), "top_logprobs": self.values - self.rows.softmax.lse}


def _top(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K largest logits of each row of a chunk, largest first, ties by the lower column first."""
    width = logits.shape[-1]
    k = min(k, width)
    # One more than asked for: where the (K+1)-th logit equals the K-th, a tie straddles the cut.
    values, ids = logits.detach().topk(min(k + 1, width), dim=-1)
    straddle = values[:, k] == values[:, k - 1] if k < width else torch.zeros(len(values), dtype=torch.bool)
    values, ids = values[:, :k], ids[:, :k]
    # topk's order among equal logits is unspecified: order by column, then stably by logit.
    order = ids.argsort(dim=-1)
    values, ids = values.gather(-1, order), ids.gather(-1, order)
    order = values.argsort(dim=-1, descending=True, stable=True)
    values, ids = values.gather(-1, order), ids.gather(-1, order)
    for row in torch.nonzero(straddle)[:, 0].tolist():
        # topk may have kept any of the tied entries: keep the lowest columns instead.
        kth = values[row, -1]
        above = int((values[row] > kth).sum())
        ids[row, above:] = torch.nonzero(logits[row] == kth)[: k - above, 0]
    return values, ids


class WordStart(Statistic):
    """The log of the probability that the next token is in a fixed subset of the vocabulary: log Σ_{v∈S} p(v).

    The subset (`Rows.subset`) is a tokenizer's word-start tokens, for the beginning-of-word correction of
    word surprisal (engine/wordstart.py); the sum follows the softmax's shift as its own sum does.
    """

    columns = ("word_start_logprob",)

    def __init__(self, rows: RowBlock) -> None:
        """Start with no mass."""
        super().__init__(rows)
        self.sum = torch.zeros(len(rows.labels), 1, device=rows.labels.device)

    def add(self, chunk: Chunk) -> None:
        """Add the chunk's entries of the subset: exp(logit - shift) summed by a product with the subset's 0/1 mask."""
        softmax = self.rows.softmax
        mask = self.rows.subset[chunk.start : chunk.start + chunk.logits.shape[-1], None]
        self.sum = softmax.scale * self.sum + softmax.exp @ mask

    def result(self) -> dict[str, torch.Tensor]:
        """The subset's log-sum-exp less the whole vocabulary's (-inf where the subset has no probability)."""
        return {"word_start_logprob": (self.sum.log() - self.rows.softmax.sum.log()).squeeze(-1)}


class Reference(Statistic):
    """The reference model's log-prob and entropy, both KL divergences, and whether the top tokens agree."""

    columns = ("ref_logprob", "ref_entropy", "kl", "reverse_kl", "same_top")

    def __init__(self, rows: RowBlock) -> None:
        """Start with no mass and no top token."""
        super().__init__(rows)
        n, device = len(rows.labels), rows.labels.device
        # Σ r·d and Σ p·(-d), unnormalised like Softmax.sum, with d = (ref logit - ref shift) - (logit - shift):
        # differences of logits each taken near its own maximum, so nothing large cancels.
        self.kl, self.reverse_kl = torch.zeros(n, 1, device=device), torch.zeros(n, 1, device=device)
        start = torch.full((n, 1), -torch.inf, device=device), torch.zeros(n, 1, dtype=torch.long, device=device)
        self.top = [start, start]

    def add(self, chunk: Chunk) -> None:
        """Add the chunk's terms of both KL divergences, and its top entries."""
        model, ref = self.rows.softmax, self.rows.ref
        diff = (chunk.ref_logits - ref.shift) - (chunk.logits - model.shift)
        # A shift that moves by m changes every earlier difference by m (the sums were scaled already).
        self.kl = ref.scale * (self.kl + (model.moved - ref.moved) * ref.before)
        self.reverse_kl = model.scale * (self.reverse_kl + (ref.moved - model.moved) * model.before)
        # nansum drops 0·(-inf) and 0·nan where a model gives an entry no probability at all.
        self.kl = self.kl + torch.nansum(ref.exp * diff, dim=-1, keepdim=True)
        self.reverse_kl = self.reverse_kl - torch.nansum(model.exp * diff, dim=-1, keepdim=True)
        for k, logits in enumerate((chunk.logits, chunk.ref_logits)):
            value, index = logits.detach().max(dim=-1, keepdim=True)  # the first of equal maxima
            best, at = self.top[k]
            higher = value > best  # strictly: an earlier chunk's equal maximum has the lower id
            self.top[k] = torch.where(higher, value, best), torch.where(higher, index + chunk.start, at)

    def result(self) -> dict[str, torch.Tensor]:
        """The columns: KL(P_ref ‖ P_model) as llama.cpp's KLD, KL(P_model ‖ P_ref) as the RL penalty."""
        model, ref = self.rows.softmax, self.rows.ref
        log_ratio = ref.sum.log() - model.sum.log()
        return {
            "ref_logprob": (self.rows.ref_label_logits - ref.lse).squeeze(-1),
            "ref_entropy": ref.entropy.squeeze(-1),
            "kl": (self.kl / ref.sum - log_ratio).squeeze(-1),
            "reverse_kl": (self.reverse_kl / model.sum + log_ratio).squeeze(-1),
            "same_top": (self.top[0][1] == self.top[1][1]).squeeze(-1),
        }


# Named so that a caller asks for statistics by name; "top_k" needs RowBlock.top_k, "reference" the reference's logits,
# "word_start" RowBlock.subset.
STATISTICS: dict[str, type[Statistic]] = {
    "logprob": LogProb,
    "entropy": Entropy,
    "rank": Rank,
    "top_k": TopK,
    "reference": Reference,
    "word_start": WordStart,
}


def columns_of(statistics: Sequence[str]) -> tuple[str, ...]:
    """The columns the named statistics give, in order."""
    return tuple(c for name in statistics for c in STATISTICS[name].columns)


def chunked_stats(
    logits_of: LogitsOf,
    vocab: int,
    labels: torch.Tensor,
    label_logits: torch.Tensor,
    statistics: Sequence[str] = ("logprob", "entropy"),
    top_k: int = 0,
    ref_logits_of: LogitsOf | None = None,
    ref_label_logits: torch.Tensor | None = None,
    chunk: int | None = None,
    subset: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The named statistics of a block of rows whose logits come a chunk of the vocabulary at a time, in float32.

    `label_logits` [n] are the labels' logits (and `ref_label_logits` the reference model's, whose chunks
    come from `ref_logits_of`); `chunk` entries a chunk (default VOCAB_CHUNK); `subset` the 0/1 mask over
    the vocabulary that "word_start" sums over.
    """
    chunk = chunk or VOCAB_CHUNK
    n, device = len(labels), labels.device
    rows = RowBlock(labels, label_logits.float()[:, None], Softmax(n, device), top_k=top_k, subset=subset)
    if ref_logits_of is not None:
        rows.ref, rows.ref_label_logits = Softmax(n, device), ref_label_logits.float()[:, None]
    stats = [STATISTICS[name](rows) for name in statistics]
    for start in range(0, vocab, chunk):
        end = min(start + chunk, vocab)
        part = Chunk(start, logits_of(start, end, rows.softmax.max).float())
        rows.softmax.add(part.logits)
        if rows.ref is not None:
            part.ref_logits = ref_logits_of(start, end, rows.ref.max).float()
            rows.ref.add(part.ref_logits)
        for stat in stats:
            stat.add(part)
    return {c: v for stat in stats for c, v in stat.result().items()}


def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    statistics: Sequence[str] = ("logprob", "entropy"),
    ref_logits: torch.Tensor | None = None,
    top_k: int = 0,
    chunk: int | None = None,
    subset: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The named statistics of each row of whole logits [N, V] and its label, as columns, in float32."""
    ref_of = None if ref_logits is None else (lambda start, end, near: ref_logits[:, start:end])
    return chunked_stats(
        lambda start, end, near: logits[:, start:end],
        logits.shape[-1],
        labels,
        logits.gather(-1, labels[:, None]).squeeze(-1),
        statistics,
        top_k,
        ref_of,
        None if ref_logits is None else ref_logits.gather(-1, labels[:, None]).squeeze(-1),
        chunk,
        subset,
    )


def concat(parts: list[dict[str, torch.Tensor]], statistics: Sequence[str], top_k: int = 0) -> dict[str, torch.Tensor]:
    """Join the columns of consecutive blocks; empty columns of the right shape where there are none."""
    if parts:
        return {c: torch.cat([p[c] for p in parts]) for c in parts[0]}
    empty = {"rank": torch.zeros(0, dtype=torch.int32), "same_top": torch.zeros(0, dtype=torch.bool)}
    empty |= {"top_ids": torch.zeros(0, top_k, dtype=torch.int32), "top_logprobs": torch.zeros(0, top_k)}
    return {c: empty.get(c, torch.zeros(0)) for c in columns_of(statistics)}
