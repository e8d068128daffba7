"""The figures made of summed log-probabilities: perplexity and bits per byte. Plain arithmetic: imports nothing.

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import math


def perplexity(mean_logprob: float) -> float:
    """exp(-mean log-prob), infinite where that overflows a float."""
    return math.exp(-mean_logprob) if -mean_logprob < 709.0 else math.inf


def bits_per_byte(sum_logprob: float, n_bytes: int) -> float:
    """-Σ log-prob / ln 2 over the UTF-8 bytes the log-probs cover (`n_bytes` > 0)."""
    return -sum_logprob / (n_bytes * math.log(2))
