"""Pure numerics over blocks of logits [N, V]: the per-token statistics, as named columns. No model.

Each statistic is a block function of a `Block` (one block of rows of logits, with the labels and, where
there is one, the reference model's logits of the same rows) that returns named columns [N] or [N, K].
A new statistic is a block function here plus its column in scores.py's TOKEN_COLUMNS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

STATS_ROWS = 32  # rows per softmax block: its temporaries stay in L2, about 4x faster than whole chunks on CPU


@dataclass
class Block:
    """A block of rows small enough that its temporaries stay in the CPU's cache, with what they share."""

    logits: torch.Tensor  # [n, V] float32
    labels: torch.Tensor  # [n]
    ref_logits: torch.Tensor | None = None  # [n, V] float32: the reference model's logits of the same rows
    top_k: int = 0

    @cached_property
    def lse(self) -> torch.Tensor:
        """The log-sum-exp of each row's logits, [n, 1]."""
        return torch.logsumexp(self.logits, dim=-1, keepdim=True)

    @cached_property
    def log_p(self) -> torch.Tensor:
        """Log-probabilities [n, V]."""
        return self.logits - self.lse

    @cached_property
    def p(self) -> torch.Tensor:
        """Probabilities [n, V]."""
        return self.log_p.exp()

    @cached_property
    def label_logit(self) -> torch.Tensor:
        """The label's logit, [n, 1]."""
        return self.logits.gather(-1, self.labels.unsqueeze(-1))

    @cached_property
    def ref_log_p(self) -> torch.Tensor:
        """The reference model's log-probabilities [n, V]."""
        return self.ref_logits - torch.logsumexp(self.ref_logits, dim=-1, keepdim=True)


def _logprob(b: Block) -> dict[str, torch.Tensor]:
    """The log-probability of the label."""
    return {"logprob": (b.label_logit - b.lse).squeeze(-1)}


def _entropy(b: Block) -> dict[str, torch.Tensor]:
    """Entropy of the predictive distribution, in nats."""
    # H = -Σ p·log p on log p = logit - lse: subtracting lse first keeps float32 error near 1e-5 nats, where
    # lse - Σ p·logit cancels two large numbers. nansum drops 0·(-inf) from vocabulary entries a model masks out.
    return {"entropy": -torch.nansum(b.p * b.log_p, dim=-1)}


def _rank(b: Block) -> dict[str, torch.Tensor]:
    """1 + the number of entries with a strictly larger logit than the label's: a count, not a sort."""
    return {"rank": (b.logits > b.label_logit).sum(dim=-1, dtype=torch.int32) + 1}


def _top_k(b: Block) -> dict[str, torch.Tensor]:
    """The K most likely tokens, most likely first, ties by the lower id first, and their log-probs."""
    vocab = b.logits.shape[-1]
    k = min(b.top_k, vocab)
    # One more than asked for: where the (K+1)-th logit equals the K-th, a tie straddles the cut.
    values, ids = b.logits.topk(min(k + 1, vocab), dim=-1)
    straddle = values[:, k] == values[:, k - 1] if k < vocab else torch.zeros(len(values), dtype=torch.bool)
    values, ids = values[:, :k], ids[:, :k]
    # topk's order among equal logits is unspecified: order by id, then stably by logit.
    order = ids.argsort(dim=-1)
    values, ids = values.gather(-1, order), ids.gather(-1, order)
    order = values.argsort(dim=-1, descending=True, stable=True)
    values, ids = values.gather(-1, order), ids.gather(-1, order)
    for row in torch.nonzero(straddle)[:, 0].tolist():
        # topk may have kept any of the tied entries: keep the lowest ids instead.
        kth = values[row, -1]
        above = int((values[row] > kth).sum())
        ids[row, above:] = torch.nonzero(b.logits[row] == kth)[: k - above, 0]
    return {"top_ids": ids.int(), "top_logprobs": values - b.lse}


def _reference(b: Block) -> dict[str, torch.Tensor]:
    """The reference model's log-prob and entropy, both KL divergences, and whether the top tokens agree."""
    log_p, ref_log_p = b.log_p, b.ref_log_p
    p, ref_p = b.p, ref_log_p.exp()
    diff = ref_log_p - log_p
    # nansum drops 0·(-inf) and 0·nan where a model gives an entry no probability at all.
    return {
        "ref_logprob": ref_log_p.gather(-1, b.labels.unsqueeze(-1)).squeeze(-1),
        "ref_entropy": -torch.nansum(ref_p * ref_log_p, dim=-1),
        "kl": torch.nansum(ref_p * diff, dim=-1),  # KL(P_ref ‖ P_model): llama.cpp's KLD
        "reverse_kl": -torch.nansum(p * diff, dim=-1),  # KL(P_model ‖ P_ref): the RL penalty
        "same_top": b.logits.argmax(dim=-1) == b.ref_logits.argmax(dim=-1),
    }


class Statistic(NamedTuple):
    """A block function and the columns it returns."""

    columns: tuple[str, ...]
    block: Callable[[Block], dict[str, torch.Tensor]]


# Named so that a caller asks for statistics by name; "top_k" needs Block.top_k, "reference" ref_logits.
STATISTICS = {
    "logprob": Statistic(("logprob",), _logprob),
    "entropy": Statistic(("entropy",), _entropy),
    "rank": Statistic(("rank",), _rank),
    "top_k": Statistic(("top_ids", "top_logprobs"), _top_k),
    "reference": Statistic(("ref_logprob", "ref_entropy", "kl", "reverse_kl", "same_top"), _reference),
}


def columns_of(statistics: Sequence[str]) -> tuple[str, ...]:
    """The columns the named statistics give, in order."""
    return tuple(c for name in statistics for c in STATISTICS[name].columns)


def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    statistics: Sequence[str] = ("logprob", "entropy"),
    ref_logits: torch.Tensor | None = None,
    top_k: int = 0,
) -> dict[str, torch.Tensor]:
    """The named statistics of each row of logits [N, V] and its label, as columns, in float32."""
    parts = []
    for i in range(0, len(labels), STATS_ROWS):
        rows = slice(i, i + STATS_ROWS)
        ref = None if ref_logits is None else ref_logits[rows].float()
        block = Block(logits[rows].float(), labels[rows], ref, top_k)
        parts.append({c: v for name in statistics for c, v in STATISTICS[name].block(block).items()})
    return concat(parts, statistics, top_k)


def concat(parts: list[dict[str, torch.Tensor]], statistics: Sequence[str], top_k: int = 0) -> dict[str, torch.Tensor]:
    """Join the columns of consecutive blocks; empty columns of the right shape where there are none."""
    if parts:
        return {c: torch.cat([p[c] for p in parts]) for c in parts[0]}
    empty = {"rank": torch.zeros(0, dtype=torch.int32), "same_top": torch.zeros(0, dtype=torch.bool)}
    empty |= {"top_ids": torch.zeros(0, top_k, dtype=torch.int32), "top_logprobs": torch.zeros(0, top_k)}
    return {c: empty.get(c, torch.zeros(0)) for c in columns_of(statistics)}
