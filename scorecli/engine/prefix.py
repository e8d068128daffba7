"""Shared prefixes: find the windows of a buffer that begin with the same tokens, so that their start is fed once.

A token's score depends only on the tokens before it, so windows that agree on their first tokens have the
same key/value cache and the same scores there. A group's common start is fed once; each window's own
continuation is then fed after that cache. Pure numpy: no model.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SharedPrefix:
    """Windows (`members`, indices of the buffer's windows) whose fed tokens agree on their first `length` + 1.

    The first `length` tokens are fed once, into a key/value cache; each member's continuation starts at its
    token `length` (the last common one, fed again so that its logits predict the member's own next token).
    """

    length: int
    members: tuple[int, ...]

    def fed(self, lengths: Sequence[int]) -> int:
        """Tokens fed to score the members, given each member window's length (its input is one shorter)."""
        return self.length + sum(lengths[i] - 1 - self.length for i in self.members)


def plan_prefixes(sequences: Sequence[np.ndarray], min_shared: int) -> list[SharedPrefix]:
    """Groups of sequences with at least `min_shared` tokens in common at their start, fed once.

    Sequences are sorted, so that those sharing a start lie together, and the common lengths of neighbours
    (longest common prefixes) form a tree of nested groups (a system prompt shared by all, a question shared
    by a few); in each subtree the grouping that feeds the fewest tokens is kept. The plan depends only on
    the sequences, never on their order.
    """
    candidates = [i for i, s in enumerate(sequences) if len(s) >= max(min_shared, 2)]
    order = _sorted(sequences, candidates, max(min_shared, 2))
    lcp = np.zeros(len(order), dtype=np.int64)  # lcp[k]: tokens order[k - 1] and order[k] share at their start
    for k in range(1, len(order)):
        a, b = sequences[order[k - 1]], sequences[order[k]]
        n = min(len(a), len(b))
        differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
        lcp[k] = differ[0] if len(differ) else n
    groups: list[SharedPrefix] = []
    start = 0
    for k in range(1, len(order) + 1):
        if k == len(order) or lcp[k] < min_shared:
            if k - start >= 2:
                groups += [
                    SharedPrefix(int(common) - 1, tuple(sorted(order[a : b + 1])))
                    for a, b, common in _best_groups(lcp, start, k - 1)
                ]
            start = k
    return sorted(groups, key=lambda g: g.members)


def _key(sequence: np.ndarray, first: int = 0, end: int | None = None) -> bytes:
    """The bytes of tokens `first` to `end` of a sequence, as int32."""
    return np.ascontiguousarray(sequence[first:end], dtype=np.int32).tobytes()


def _sorted(sequences: Sequence[np.ndarray], candidates: list[int], head: int) -> list[int]:
    """The candidates in byte order of their int32 tokens (ties by index): those sharing a start lie together.

    Every candidate has at least `head` tokens, so sorting by the bytes of the first `head` first, then, among
    those that agree there, by the rest, is the same order; but keys of whole sequences (a huge text's
    windows: thousands of bytes each, for each of its tens of thousands) are made only where starts agree.
    """
    order = sorted(candidates, key=lambda i: (_key(sequences[i], 0, head), i))
    heads = [_key(sequences[i], 0, head) for i in order]
    out, start = [], 0
    for k in range(1, len(order) + 1):
        if k == len(order) or heads[k] != heads[start]:
            run = order[start:k]
            out += run if len(run) == 1 else sorted(run, key=lambda i: (_key(sequences[i], head), i))
            start = k
    return out


def _best_groups(lcp: np.ndarray, first: int, last: int) -> list[tuple[int, int, int]]:
    """The grouping of sorted positions first..last (all sharing at least two tokens) that feeds the fewest.

    Returns (a, b, common) triples: positions a..b share `common` tokens. A group of n sharing c tokens saves
    (n - 1)·(c - 1) fed tokens; each interval of the tree is either one group or the best of its subintervals.
    Iterative (the tree can be as deep as a window is long).
    """
    frames, pending = [], [(first, last)]
    while pending:
        a, b = pending.pop()
        common = int(lcp[a + 1 : b + 1].min())
        cuts = [a, *(k for k in range(a + 1, b + 1) if lcp[k] == common), b + 1]
        children = [(x, y - 1) for x, y in zip(cuts, cuts[1:]) if y - 1 > x]
        frames.append((a, b, common, children))
        pending += children
    best: dict[tuple[int, int], tuple[int, list[tuple[int, int, int]]]] = {}
    for a, b, common, children in reversed(frames):  # children before their parents
        whole = (b - a) * (common - 1)
        split = sum(best[c][0] for c in children)
        best[a, b] = (whole, [(a, b, common)]) if whole >= split else (split, [g for c in children for g in best[c][1]])
    return best[first, last][1]
