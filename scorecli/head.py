"""The output head: final hidden states to token statistics in chunks, and `get_response_log_probs`."""

from __future__ import annotations

import copy
import functools
import inspect
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scorecli.stats import concat, token_stats

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
    statistics = ("logprob", "entropy") if return_token_entropy else ("logprob",)
    stats = output_head(model).score(input_ids, labels, attention_mask, statistics=statistics)
    out = {"log_probs": stats["logprob"].view(labels.shape)}
    if return_token_entropy:
        out["token_entropy"] = stats["entropy"].view(labels.shape)
    return out


def get_response_kl(
    model: torch.nn.Module,
    ref_model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Return "log_probs", "ref_log_probs", "kl" (KL(ref‖model)) and "reverse_kl" (KL(model‖ref)), each [B, T].

    Exact over the whole vocabulary and unmasked, as get_response_log_probs; gradients flow through
    `model` only (the reference is frozen), and no [B, T, V] tensor of either model is built.
    """
    stats = output_head(model).score(
        input_ids, labels, attention_mask, statistics=("logprob", "reference"), ref=output_head(ref_model)
    )
    names = {"log_probs": "logprob", "ref_log_probs": "ref_logprob", "kl": "kl", "reverse_kl": "reverse_kl"}
    return {key: stats[name].view(labels.shape) for key, name in names.items()}


@functools.cache
def _cache_keyword(module_type: type) -> str:
    """The name a model's forward gives its key/value cache argument."""
    # transformers renamed `past_key_values` to `cache` during 5.x; both are met in the wild.
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"


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

    def with_base(self, base: Callable) -> OutputHead:
        """A copy of the head that computes final hidden states with `base` (a compiled base model, say)."""
        head = copy.copy(self)
        head.base = base
        return head

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
        statistics: Sequence[str] = ("logprob", "entropy"),
        top_k: int = 0,
        ref: OutputHead | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named statistics (stats.py), flat, for the positions `select` marks (all positions when None).

        With `ref`, the reference model runs on the same input, and each chunk of positions goes through
        both output heads in lock-step; the reference is frozen (no gradients flow into it).
        """
        selected = labels.reshape(-1) if select is None else labels[select]
        if selected.numel() and (int(selected.min()) < 0 or int(selected.max()) >= self.vocab_size):
            raise ValueError(f"labels must be token ids in [0, {self.vocab_size}); mask positions after scoring")
        states = self._flat(self._states(input_ids, attention_mask), select)
        ref_states = None
        if ref is not None:
            with torch.no_grad():
                ref_states = ref._flat(ref._states(input_ids, attention_mask), select)
        return self.score_states(states, selected, statistics, top_k, ref, ref_states)

    def cached_states(
        self,
        input_ids: torch.Tensor,
        past_key_values: object | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, object]:
        """The states `score_states` takes of `input_ids` after the tokens cached in `past_key_values`, and the cache.

        Without a cache, the returned one holds `input_ids`' keys and values, for inputs that continue them.
        """
        # The model's own (eager) base: a compiled one is built for inputs without a cache.
        module = self.model.base_model if self.chunked else self.model
        name = _cache_keyword(type(module))
        out = module(input_ids=input_ids, position_ids=position_ids, use_cache=True, **{name: past_key_values})
        cache = out[name]
        if not self.chunked:
            return out.logits, cache
        return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]), cache

    def score_states(
        self,
        states: torch.Tensor,
        labels: torch.Tensor,
        statistics: Sequence[str] = ("logprob", "entropy"),
        top_k: int = 0,
        ref: OutputHead | None = None,
        ref_states: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named statistics of rows of states [N, H] (from `cached_states` or the model) and their labels [N].

        With `ref`, `ref_states` are the reference model's states of the same positions.
        """

        def chunk_stats(states: torch.Tensor, ref_states: torch.Tensor | None, labels: torch.Tensor) -> dict:
            """Statistics of one chunk of positions, from the final hidden states (or logits) of both models."""
            ref_logits = None
            if ref is not None:
                with torch.no_grad():
                    ref_logits = ref._chunk_logits(ref_states)
            return token_stats(self._chunk_logits(states), labels, statistics, ref_logits, top_k)

        parts = []
        for i in range(0, labels.shape[0], self.chunk_rows):
            rows = slice(i, i + self.chunk_rows)
            args = (states[rows], None if ref_states is None else ref_states[rows], labels[rows])
            if torch.is_grad_enabled() and states.requires_grad:
                # Under autograd the chunk's logits are recomputed in backward, not kept.
                parts.append(checkpoint(chunk_stats, *args, use_reentrant=False))
            else:
                parts.append(chunk_stats(*args))
        return concat(parts, statistics, top_k)

    def _states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """What the chunks are cut from: final hidden states, or the model's own logits where not chunked."""
        if self.chunked:
            return self._hidden(input_ids, attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    @staticmethod
    def _flat(states: torch.Tensor, select: torch.Tensor | None) -> torch.Tensor:
        """States [B, T, H] as rows [N, H]: the selected positions, or all of them."""
        return states.reshape(-1, states.shape[-1]) if select is None else states[select]

    def _chunk_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The logits of a chunk of states (float32 where chunked; token_stats makes each block float32)."""
        return self._logits(states) if self.chunked else states
