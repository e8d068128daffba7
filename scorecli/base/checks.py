"""Checks of option values that need neither torch nor a model, so that a mistake is reported at once.

Layer: base. It must not import the inputs, the data model, the engine, the run folder, the analysis, the executors
or the front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from scorecli.base.errors import UsageError

COMPILE_CHOICES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def check_limits(
    batch_tokens: int | None, max_length: int | None, stride: int | None = None, truncate: bool = False
) -> None:
    """Reject a token budget, length limit or stride that cannot work (None means the default)."""
    if batch_tokens is not None and batch_tokens < 1:
        raise UsageError(f"must be at least 1, not {batch_tokens}", arg="batch_tokens")
    if max_length is not None and max_length < 2:
        raise UsageError(f"must be at least 2, not {max_length}", arg="max_length")
    if stride is not None:
        if truncate:
            raise UsageError("and `truncate` cannot be used together: truncation scores no windows", arg="stride")
        if stride < 1:
            raise UsageError(f"must be at least 1, not {stride}", arg="stride")
        if max_length is not None and stride >= max_length:
            # A window that starts where the last one ended would leave its first token without context.
            raise UsageError(f"must be less than `max_length` ({max_length}), not {stride}", arg="stride")


def check_counts(min_shared_prefix: int, threads: int | None, top_k: int) -> None:
    """Reject a shared-prefix minimum, thread count or top-k that cannot work (threads None: the default)."""
    if min_shared_prefix < 2:
        raise UsageError(f"must be at least 2, not {min_shared_prefix}", arg="min_shared_prefix")
    if threads is not None and threads < 1:
        raise UsageError(f"must be at least 1, not {threads}", arg="threads")
    if top_k < 0:
        raise UsageError(f"must be at least 0, not {top_k}", arg="top_k")


def check_compile(choice: str) -> None:
    """Raise UsageError unless `choice` is one of auto, on, off."""
    if choice not in COMPILE_CHOICES:
        raise UsageError(f"must be one of {', '.join(COMPILE_CHOICES)}, not '{choice}'", arg="compile")


def check_device(name: str) -> None:
    """Raise UsageError unless `name` is a --device choice (whether it is present here needs torch)."""
    if name not in DEVICES:
        raise UsageError(f"must be one of {', '.join(DEVICES)}, not '{name}'", arg="device")


def check_head_dtype(name: str) -> None:
    """Raise UsageError unless `name` is a --head-dtype choice: auto or a dtype."""
    check_dtype(name, arg="head_dtype")


def check_dtype(name: str, arg: str = "dtype") -> None:
    """Raise UsageError unless `name` is a --dtype choice; `arg` names the argument it was given as."""
    if name != "auto" and name not in DTYPE_NAMES:
        raise UsageError(f"must be one of auto, {', '.join(DTYPE_NAMES)}, not '{name}'", arg=arg)
