"""The output head: final hidden states to token statistics in chunks, and `get_response_log_probs`."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scorecli.stats import _concat, token_stats

HEAD_CHUNK_BYTES = 64 * 2**20  # float32 logits per head chunk: bounds peak memory whatever the vocabulary
_PROBE_LENGTH = 8
_heads: weakref.WeakKeyDictionary[torch.nn.Module, OutputHead] = weakref.WeakKeyDictionary()


def get_response_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    return_token_entropy: bool = False,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Return log p(labels[b, t] | input_ids[b, :t+1]) as "log_probs" [B, T] (and "token_entropy"), unmasked."""
    log_probs, entropy = output_head(model).score(input_ids, labels, attention_mask, entropy=return_token_entropy)
    out = {"log_probs": log_probs.view(labels.shape)}
    if return_token_entropy:
        out["token_entropy"] = entropy.view(labels.shape)
    return out


def output_head(model: torch.nn.Module) -> OutputHead:
    """The (cached) way to turn this model's final hidden states into token statistics."""
    if model not in _heads:
        _heads[model] = OutputHead(model)
    return _heads[model]


class OutputHead:
    """Apply a model's output layer in chunks of positions, so no [batch, seq, vocab] tensor is ever built.

    At construction a probe input checks that the output layer applied to the base model's final hidden
    states reproduces the model's own logits; where it does not (models that scale or soft-cap their
    logits), scoring falls back to the model's full logits and `chunked` is False.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        """Inspect `model` and check the chunked head against its own logits on a probe input."""
        self.model = model
        self.head = model.get_output_embeddings()
        self.base = getattr(model, "base_model", None)
        self.vocab_size = model.config.vocab_size if self.head is None else self.head.weight.shape[0]
        self.chunk_rows = max(1, HEAD_CHUNK_BYTES // (4 * self.vocab_size))
        self._weight32: tuple[torch.Tensor, torch.Tensor] | None = None
        has_head = self.head is not None and self.base is not None and self.base is not model
        self.chunked = has_head and self._matches_model_logits()

    @property
    def mode(self) -> str:
        """How scores are computed, for the output's metadata."""
        return "chunked output head" if self.chunked else "model logits (the chunked head did not reproduce them)"

    def _matches_model_logits(self) -> bool:
        """Whether head(final hidden states) equals model(...).logits on a probe input."""
        device = next(self.model.parameters()).device
        probe = (torch.arange(_PROBE_LENGTH, device=device) * 7 + 3).remainder(self.vocab_size).unsqueeze(0)
        training = self.model.training
        self.model.eval()  # dropout would make two runs differ whatever the head does
        try:
            with torch.inference_mode():
                expected = self.model(input_ids=probe, use_cache=False).logits.float()
                got = self._logits(self._hidden(probe, None), float32=False).float()
        except (AttributeError, TypeError, RuntimeError):
            return False
        finally:
            self.model.train(training)
        return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3, atol=1e-3)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states [B, T, H] from the base model."""
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor:
        """Apply the output layer to hidden states, in float32 unless asked to stay in the model's dtype."""
        weight, bias = self.head.weight, getattr(self.head, "bias", None)
        if float32 and weight.dtype != torch.float32:
            # A bfloat16 logit near 30 is rounded to a multiple of 0.125: far too coarse for log-probs.
            # The float32 copy is made once, except for weights being trained, which autograd must see.
            if weight.requires_grad and torch.is_grad_enabled():
                weight = weight.float()
            else:
                if self._weight32 is None or self._weight32[0] is not weight:
                    self._weight32 = (weight, weight.detach().float())
                weight = self._weight32[1]
            hidden, bias = hidden.float(), (None if bias is None else bias.float())
        return F.linear(hidden, weight, bias)

    def score(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
        entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs and entropies, flat, for the positions `select` marks (all positions when None)."""
        selected = labels.reshape(-1) if select is None else labels[select]
        if selected.numel() and (int(selected.min()) < 0 or int(selected.max()) >= self.vocab_size):
            raise ValueError(f"labels must be token ids in [0, {self.vocab_size}); mask positions after scoring")
        if self.chunked:
            states, stats = self._hidden(input_ids, attention_mask), self._stats_from_hidden
        else:
            states, stats = (
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits,
                token_stats,
            )
        states = states.reshape(-1, states.shape[-1]) if select is None else states[select]
        rows = self.chunk_rows
        chunks = range(0, selected.shape[0], rows)
        parts = [self._chunk(stats, states[i : i + rows], selected[i : i + rows], entropy) for i in chunks]
        return _concat(parts, entropy)

    def _stats_from_hidden(self, hidden: torch.Tensor, labels: torch.Tensor, entropy: bool) -> tuple:
        """Token statistics of one chunk of final hidden states."""
        return token_stats(self._logits(hidden), labels, entropy)

    @staticmethod
    def _chunk(stats: Callable, states: torch.Tensor, labels: torch.Tensor, entropy: bool) -> tuple:
        """Statistics of one chunk; under autograd the chunk's logits are recomputed in backward, not kept."""
        if torch.is_grad_enabled() and states.requires_grad:
            return checkpoint(stats, states, labels, entropy, use_reentrant=False)
        return stats(states, labels, entropy)
