"""torch's intra-op thread count, set for a block of work and given back after it, however the block ends.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block on `count` intra-op threads, then give the caller's setting back (however the block ends)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
