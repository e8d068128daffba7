"""Pure numerics over blocks of logits [N, V]: per-row log-probability of a label and entropy. No model."""

from __future__ import annotations

import torch

STATS_ROWS = 32  # rows per softmax block: its temporaries stay in L2, about 4x faster than whole chunks on CPU


def token_stats(
    logits: torch.Tensor, labels: torch.Tensor, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each label and entropy (nats) of each row of logits [N, V], in float32."""
    blocks = range(0, len(labels), STATS_ROWS)
    parts = [_block_stats(logits[i : i + STATS_ROWS], labels[i : i + STATS_ROWS], entropy) for i in blocks]
    return _concat(parts, entropy)


def _concat(
    parts: list[tuple[torch.Tensor, torch.Tensor | None]], entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Join per-block (log-probs, entropies) pairs; entropies are None where they were not asked for."""
    if not parts:
        return torch.zeros(0), (torch.zeros(0) if entropy else None)
    return torch.cat([p[0] for p in parts]), (torch.cat([p[1] for p in parts]) if entropy else None)


def _block_stats(logits: torch.Tensor, labels: torch.Tensor, entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """token_stats for a block of rows small enough that its temporaries stay in the CPU's cache."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    log_probs = (logits.gather(-1, labels.unsqueeze(-1)) - lse).squeeze(-1)
    if not entropy:
        return log_probs, None
    # H = -Σ p·log p on log p = logit - lse: subtracting lse first keeps float32 error near 1e-5 nats, where
    # lse - Σ p·logit cancels two large numbers. nansum drops 0·(-inf) from vocabulary entries a model masks out.
    log_p = logits - lse
    return log_probs, -torch.nansum(log_p.exp() * log_p, dim=-1)
