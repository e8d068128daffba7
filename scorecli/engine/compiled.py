"""Compiling the base model's forward pass with inductor on the CPU: when it pays, its disk cache, its fallback.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch

from scorecli.base.checks import check_compile
from scorecli.base.errors import first_line
from scorecli.engine.threads import intra_op_threads

# `auto` compiles nothing on the CPU (AUTO_COMPILES_ON_CPU): the gain, 737 -> 910 tokens/s for
# SmolLM2's base forward in float32 on 2 threads, was measured on batches of 8 x 128 tokens, but whole
# runs of samples/long.jsonl (29,139 tokens, windows up to 1,024) took 256 s and 251 s compiled against
# about 90 s eager (warm inductor cache). A likely cause, read in transformers' code but not measured:
# under torch.compile, torch < 2.14 makes transformers' `is_torchdynamo_exporting()` true, so a whole-model
# graph materialises the causal mask [B, 1, T, T] and attention loses the fused causal kernel; the decoder
# layers are now compiled one by one instead (the mask made eagerly, as `None`). That runs the base forward
# 1.05-1.11x as fast as eager on one thread, after about 23 s of compiling: whole runs of long.jsonl still
# took 99 s and 121 s compiled against 89 s and 100 s eager (README, "Compiled, on request").
AUTO_COMPILES_ON_CPU = False
# Break-even of `auto` where it compiles, in scored tokens: 0.26 ms saved a token after about 27 s of
# compiling with a cold cache repays it after about 100,000 tokens; twice that leaves a margin for the
# part of a run that is not the base forward and for slower compiles on a busy machine.
AUTO_MIN_TOKENS = 200_000
BYTES_PER_TOKEN = 4  # a rough size of a token of text, to estimate a run's tokens from its input's size
# Inductor's compiled kernels go under the scorecli cache folder, so a second run reuses them.
INDUCTOR_CACHE = "inductor"
# Shapes compiled before scoring starts: one batch of several rows and one of a single row (a long
# window), the two cases dynamic shapes specialise on; any other width or row count reuses them.
_WARM_UP_SHAPES = ((2, 16), (1, 16))
AUTO_CPU_REASON = (
    "off (auto: compiling did not pay on the CPU: whole runs of windows up to 1,024 tokens were slower compiled)"
)


def expected_tokens(size: int | None, records: int | None, limit: int | None) -> int | None:
    """A rough count of the tokens a run scores, from its input's bytes and records: what `auto` weighs."""
    if size is None:
        return None
    tokens = size // BYTES_PER_TOKEN
    return tokens * min(limit, records) // records if limit and records else tokens


def should_compile(choice: str, device: torch.device, chunked: bool, expected_tokens: int | None) -> tuple[bool, str]:
    """Whether to compile the base model, and the reason why not (for the metadata) where not."""
    check_compile(choice)
    if choice == "off":
        return False, "off"
    if device.type != "cpu":
        return False, f"off (compiling is done on the CPU only, not on {device.type})"
    if not chunked:
        return False, "off (the model's own logits are used, not its base model)"
    if choice == "auto" and not AUTO_COMPILES_ON_CPU:
        return False, AUTO_CPU_REASON
    if choice == "auto" and (expected_tokens is None or expected_tokens < AUTO_MIN_TOKENS):
        size = "of unknown size" if expected_tokens is None else f"of about {expected_tokens:,} tokens"
        return False, f"off (auto: an input {size} does not repay compiling, below {AUTO_MIN_TOKENS:,} tokens)"
    return True, ""


def _compiled(base: torch.nn.Module) -> tuple[Callable, str]:
    """`base` with each decoder layer compiled where it has a list of them (else all of it), and which it was."""
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        return torch.compile(base, dynamic=True), "whole model"
    # Layer by layer, the attention mask is made eagerly: a whole-model graph on torch < 2.14 materialises
    # the causal mask [B, 1, T, T] (transformers takes compiling for exporting) and attention loses the
    # fused causal kernel. Repeated layers share one graph. A shallow copy leaves the model itself eager.
    regional = copy.copy(base)
    regional._modules = dict(base._modules)
    regional.layers = torch.nn.ModuleList([torch.compile(layer, dynamic=True) for layer in layers])
    return regional, "decoder layers"


class CompiledForward:
    """A base model's forward compiled by inductor (dynamic shapes), that falls back to eager if compiling fails.

    Compiled at construction on a few small batches, so a failure is known before scoring starts; `mode`
    says what runs, for the output's metadata.
    """

    def __init__(self, base: torch.nn.Module, threads: int, auto: bool) -> None:
        """Compile `base` for batches run on `threads` intra-op threads each (the count inductor builds in)."""
        from scorecli.engine.models import cache_dir

        self.eager = base
        self.failed: str | None = None
        # Inductor reads its cache folder from the environment each time it looks; a user's setting wins.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / INDUCTOR_CACHE))
        self.compiled, self.region = _compiled(base)
        try:
            device = next(base.parameters()).device
            with intra_op_threads(threads), torch.inference_mode():
                for shape in _WARM_UP_SHAPES:
                    ids = torch.arange(shape[0] * shape[1], device=device).view(shape) % 2
                    self.compiled(input_ids=ids, attention_mask=None, use_cache=False)  # as engine/head.py calls it
        except Exception as e:  # inductor fails with whatever its C++ toolchain or a graph break raised
            self.failed = first_line(e)
        how = "auto: " if auto else ""
        self.mode = (
            f"inductor ({how}dynamic shapes, {self.region})"
            if self.failed is None
            else f"off (compiling failed: {self.failed})"
        )

    def __call__(self, **kwargs: object) -> object:
        """The base model's output for these arguments, compiled where compiling worked."""
        if self.failed is not None:
            return self.eager(**kwargs)
        return self.compiled(**kwargs)
