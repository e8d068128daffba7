"""Compiling the base model's forward pass with inductor on the CPU: when it pays, its disk cache, its fallback."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from scorecli.errors import UsageError, first_line

COMPILE_CHOICES = ("auto", "on", "off")
# Break-even of `auto`, in scored tokens: SmolLM2's base forward, float32, batches of 8 x 128 on 2 threads,
# goes from 737 to 910 tokens/s once compiled (0.26 ms saved a token) after about 27 s of compiling with a
# cold cache: about 100,000 tokens repay it; twice that leaves a margin for the part of a run that is not
# the base forward (the output head, tokenising, writing) and for slower compiles on a busy machine.
AUTO_MIN_TOKENS = 200_000
BYTES_PER_TOKEN = 4  # a rough size of a token of text, to estimate a run's tokens from its input's size
# Inductor's compiled kernels go under the scorecli cache folder, so a second run reuses them.
INDUCTOR_CACHE = "inductor"
# Shapes compiled before scoring starts: one batch of several rows and one of a single row (a long
# window), the two cases dynamic shapes specialise on; any other width or row count reuses them.
_WARM_UP_SHAPES = ((2, 16), (1, 16))


def expected_tokens(size: int | None, records: int | None, limit: int | None) -> int | None:
    """A rough count of the tokens a run scores, from its input's bytes and records: what `auto` weighs."""
    if size is None:
        return None
    tokens = size // BYTES_PER_TOKEN
    return tokens * min(limit, records) // records if limit and records else tokens


def check_compile(choice: str) -> None:
    """Raise UsageError unless `choice` is one of auto, on, off."""
    if choice not in COMPILE_CHOICES:
        raise UsageError(f"must be one of {', '.join(COMPILE_CHOICES)}, not '{choice}'", arg="compile")


def should_compile(choice: str, device: torch.device, chunked: bool, expected_tokens: int | None) -> tuple[bool, str]:
    """Whether to compile the base model, and the reason why not (for the metadata) where not."""
    check_compile(choice)
    if choice == "off":
        return False, "off"
    if device.type != "cpu":
        return False, f"off (compiling is done on the CPU only, not on {device.type})"
    if not chunked:
        return False, "off (the model's own logits are used, not its base model)"
    if choice == "auto" and (expected_tokens is None or expected_tokens < AUTO_MIN_TOKENS):
        size = "of unknown size" if expected_tokens is None else f"of about {expected_tokens:,} tokens"
        return False, f"off (auto: an input {size} does not repay compiling, below {AUTO_MIN_TOKENS:,} tokens)"
    return True, ""


class CompiledForward:
    """A base model's forward compiled by inductor (dynamic shapes), that falls back to eager if compiling fails.

    Compiled at construction on a few small batches, so a failure is known before scoring starts; `mode`
    says what runs, for the output's metadata.
    """

    def __init__(self, base: torch.nn.Module, threads: int, auto: bool) -> None:
        """Compile `base` for batches run on `threads` intra-op threads each (the count inductor builds in)."""
        from scorecli.models import cache_dir

        self.eager = base
        self.failed: str | None = None
        # Inductor reads its cache folder from the environment each time it looks; a user's setting wins.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / INDUCTOR_CACHE))
        self.compiled: Callable = torch.compile(base, dynamic=True)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            device = next(base.parameters()).device
            with torch.inference_mode():
                for shape in _WARM_UP_SHAPES:
                    ids = torch.arange(shape[0] * shape[1], device=device).view(shape) % 2
                    self.compiled(input_ids=ids, use_cache=False)
        except Exception as e:  # inductor fails with whatever its C++ toolchain or a graph break raised
            self.failed = first_line(e)
        finally:
            torch.set_num_threads(previous)
        how = "auto: " if auto else ""
        self.mode = (
            f"inductor ({how}dynamic shapes)" if self.failed is None else f"off (compiling failed: {self.failed})"
        )

    def __call__(self, **kwargs: object) -> object:
        """The base model's output for these arguments, compiled where compiling worked."""
        if self.failed is not None:
            return self.eager(**kwargs)
        return self.compiled(**kwargs)
