"""The output head: final hidden states to token statistics in chunks, and `get_response_log_probs`.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import copy
import functools
import inspect
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scorecli.base.checks import check_head_dtype
from scorecli.engine.stats import LogitsOf, chunked_stats, concat

# Rows of a block: as many as 64 MB of their float32 logits would hold. Inference holds a vocabulary chunk of
# them at a time (engine/stats.py); under autograd a block's logits are recomputed in backward, and kept meanwhile.
HEAD_CHUNK_BYTES = 64 * 2**20
_PROBE_LENGTH = 8
# A 16-bit chunk whose largest logit in a row is this far above the shift (the row's largest before it) is
# taken again for that row, relative to its own: its logits near the top then round to 2^-9 of at most this.
REFINE_ABOVE = 1.0
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


def head_products(choice: str, model: torch.nn.Module) -> torch.dtype:
    """The dtype of the output layer's products for `head_dtype` `choice`; auto: the model's, where fast here.

    16-bit products (with_products) are taken where the model itself is 16-bit and the device has fast
    16-bit products (a GPU, or a CPU with AVX-512 or AMX bfloat16 units); elsewhere float32, the exact head.
    """
    check_head_dtype(choice)
    if choice != "auto":
        return getattr(torch, choice)
    parameter = next(model.parameters())
    dtype, device = parameter.dtype, parameter.device.type
    if device == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return dtype
    # On CPUs without those units (AVX2 only, say) 16-bit products are several times slower than float32.
    fast = {
        torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
        torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported,
    }
    return dtype if device == "cpu" and dtype in fast and fast[dtype]() else torch.float32


def output_head(model: torch.nn.Module) -> OutputHead:
    """The (cached) way to turn this model's final hidden states into token statistics."""
    if model not in _heads:
        _heads[model] = OutputHead(model)
    return _heads[model]


class OutputHead:
    """Apply a model's output layer a block of positions and a chunk of the vocabulary at a time (engine/stats.py).

    No [batch, seq, vocab] tensor is ever built, nor a [rows, vocab] one outside autograd.

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
        self.products = torch.float32  # the dtype of the output layer's products (with_products)
        self._converted: tuple[torch.Tensor, torch.Tensor] | None = None
        has_head = self.head is not None and self.base is not None and self.base is not model
        self.chunked = has_head and self._matches_model_logits()

    @property
    def mode(self) -> str:
        """How scores are computed, for the output's metadata."""
        if not self.chunked:
            return "model logits (the chunked head did not reproduce them)"
        if self.products == torch.float32:
            return "chunked output head"
        return f"chunked output head, {self.products_name} products (summed in float32, rows near their largest logit)"

    @property
    def products_name(self) -> str:
        """The dtype of the output layer's products, by name."""
        return str(self.products).removeprefix("torch.")

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
                got = F.linear(self._hidden(probe, None), self.head.weight, getattr(self.head, "bias", None)).float()
        except (AttributeError, TypeError, RuntimeError):
            return False
        finally:
            self.model.train(training)
        return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3, atol=1e-3)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states [B, T, H] from the base model."""
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def with_products(self, dtype: torch.dtype) -> OutputHead:
        """A copy of the head whose products run in `dtype`: float32, or 16-bit ones (faster, not exact).

        16-bit products are summed in float32 and rounded once, each row relative to its largest logit in
        the chunks before (engine/stats.py's `near`; the first chunk's products are float32), so the logits that carry
        the probability keep their digits; the labels' logits stay float32 products. Heads with a bias, or
        scored from the model's own logits, stay float32.
        """
        head = copy.copy(self)
        head.products = dtype if self.chunked and getattr(self.head, "bias", None) is None else torch.float32
        head._converted = None
        return head

    def _weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The output layer's weight in `dtype`, converted once (except for weights being trained)."""
        weight = self.head.weight
        if weight.dtype == dtype:
            return weight
        if weight.requires_grad and torch.is_grad_enabled():
            return weight.to(dtype)  # autograd must see the conversion
        if self._converted is None or self._converted[0] is not weight:
            self._converted = (weight, weight.detach().to(dtype))
        return self._converted[1]

    def score(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
        statistics: Sequence[str] = ("logprob", "entropy"),
        top_k: int = 0,
        ref: OutputHead | None = None,
        subset: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named statistics (engine/stats.py), flat, for the positions `select` marks (all positions when None).

        With `ref`, the reference model runs on the same input, and each chunk of positions goes through
        both output heads in lock-step; the reference is frozen (no gradients flow into it). `subset` is
        the vocabulary mask of "word_start".
        """
        selected = labels.reshape(-1) if select is None else labels[select]
        if selected.numel() and (int(selected.min()) < 0 or int(selected.max()) >= self.vocab_size):
            raise ValueError(f"labels must be token ids in [0, {self.vocab_size}); mask positions after scoring")
        states = self._flat(self._states(input_ids, attention_mask), select)
        ref_states = None
        if ref is not None:
            with torch.no_grad():
                ref_states = ref._flat(ref._states(input_ids, attention_mask), select)
        return self.score_states(states, selected, statistics, top_k, ref, ref_states, subset)

    def cached_states(
        self,
        input_ids: torch.Tensor,
        past_key_values: object | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, object]:
        """The states `score_states` takes of `input_ids` after the tokens cached in `past_key_values`, and the cache.

        Without a cache, the returned one holds `input_ids`' keys and values, for inputs that continue them.
        `attention_mask` [rows, cached + new] (where given) marks the cached and new positions each row sees.
        """
        # The model's own (eager) base: a compiled one is built for inputs without a cache.
        module = self.model.base_model if self.chunked else self.model
        name = _cache_keyword(type(module))
        out = module(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{name: past_key_values},
        )
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
        subset: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named statistics of rows of states [N, H] (from `cached_states` or the model) and their labels [N].

        With `ref`, `ref_states` are the reference model's states of the same positions; `subset` is the
        vocabulary mask of "word_start".
        """

        def block_stats(states: torch.Tensor, ref_states: torch.Tensor | None, labels: torch.Tensor) -> dict:
            """Statistics of one block of positions, from the final hidden states (or logits) of both models."""
            logits_of, label_logits = self._chunks(states, labels)
            ref_of = ref_label_logits = None
            if ref is not None:
                with torch.no_grad():
                    ref_of, ref_label_logits = ref._chunks(ref_states, labels)
                ref_of = _without_grad(ref_of)
            return chunked_stats(
                logits_of,
                self.vocab_size,
                labels,
                label_logits,
                statistics,
                top_k,
                ref_of,
                ref_label_logits,
                subset=subset,
            )

        parts = []
        for i in range(0, labels.shape[0], self.chunk_rows):
            rows = slice(i, i + self.chunk_rows)
            args = (states[rows], None if ref_states is None else ref_states[rows], labels[rows])
            if torch.is_grad_enabled() and states.requires_grad:
                # Under autograd the block's logits are recomputed in backward, not kept.
                parts.append(checkpoint(block_stats, *args, use_reentrant=False))
            else:
                parts.append(block_stats(*args))
        return concat(parts, statistics, top_k)

    def _chunks(self, states: torch.Tensor, labels: torch.Tensor) -> tuple[LogitsOf, torch.Tensor]:
        """How a block of states [n, H] (or logits, where not chunked) gives a chunk's logits; its labels' logits."""
        if not self.chunked:
            return (lambda start, end, near: states[:, start:end]), states.gather(-1, labels[:, None]).squeeze(-1)
        bias = getattr(self.head, "bias", None)
        bias = None if bias is None else bias.float()
        exact = self.products == torch.float32 or (torch.is_grad_enabled() and states.requires_grad)
        weight = self._weight(torch.float32 if exact else self.products)
        hidden = states.to(weight.dtype)
        # The labels' logits are float32 products whatever the chunks' are: the diagonal of hidden × their
        # weights, a product of the chunks' own kind, so that a float32 label's logit has the very bits of its
        # entry in its chunk (a rank counts the entries above it: a dot product's other rounding would miscount).
        label_logits = F.linear(hidden.float(), weight[labels].float()).diagonal()
        if bias is not None:
            label_logits = label_logits + bias[labels]
        if exact:
            return (lambda start, end, near: F.linear(hidden, weight[start:end], _part(bias, start, end))), label_logits

        def logits_of(start: int, end: int, near: torch.Tensor) -> torch.Tensor:
            """16-bit products summed in float32 less the row's largest logit so far, rounded once."""
            if not bool(near.isfinite().all()):
                # The first chunk, whose largest logits give the shift of the others: float32 products.
                return F.linear(hidden.float(), weight[start:end].float())
            # A bfloat16 logit near 30 rounds to a multiple of 0.125; taken relative to the shift, the logits
            # that carry the probability are near 0, where 16 bits keep them to a few thousandths.
            logits = _shifted(hidden, weight[start:end], near)
            # Rows whose largest logit here is well above the shift are taken again relative to it.
            again = torch.nonzero(logits.amax(-1) > near[:, 0] + REFINE_ABOVE)[:, 0]
            if len(again):
                logits[again] = _shifted(hidden[again], weight[start:end], logits[again].amax(-1, keepdim=True))
            return logits

        return logits_of, label_logits

    def _states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """What the chunks are cut from: final hidden states, or the model's own logits where not chunked."""
        if self.chunked:
            return self._hidden(input_ids, attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    @staticmethod
    def _flat(states: torch.Tensor, select: torch.Tensor | None) -> torch.Tensor:
        """States [B, T, H] as rows [N, H]: the selected positions, or all of them."""
        return states.reshape(-1, states.shape[-1]) if select is None else states[select]


def _shifted(hidden: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The product of hidden and weightᵀ, as 16-bit products summed in float32 less `shift` [n, 1], rounded once."""
    shift = shift.to(weight.dtype)
    out = torch.addmm(-shift.expand(len(hidden), len(weight)), hidden, weight.T)
    return out.float() + shift.float()


def _part(bias: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    """Entries start..end of a bias, if there is one."""
    return None if bias is None else bias[start:end]


def _without_grad(logits_of: LogitsOf) -> LogitsOf:
    """`logits_of`, run without autograd (the reference model is frozen)."""

    def frozen(start: int, end: int, near: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return logits_of(start, end, near)

    return frozen
