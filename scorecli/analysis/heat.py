"""The token colour scales shared by `scorecli show` and `scorecli report`. Needs numpy, not torch.

Each scale maps a token's value to [0, 1], clamped: 0 at `low`, 1 at `high` and beyond, linear between,
and [0, 1] to a colour from pale (nothing to see) through yellow and orange to dark red (the most).

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2)
# Colour stops (ColorBrewer YlOrRd, the light end paler so plain text stays readable).
STOPS = np.array([[255, 255, 255], [255, 237, 160], [254, 178, 76], [240, 59, 32], [128, 0, 38]], dtype=float)
DARK_TEXT_BELOW = 0.7  # at and beyond this point of the scale, text is white


@dataclass(frozen=True)
class Scale:
    """How one colouring reads a token's value and where its colours are clamped."""

    name: str
    column: str  # the tokens.parquet column the value comes from
    unit: str
    low: float
    high: float
    help: str

    def values(self, raw: np.ndarray) -> np.ndarray:
        """The displayed values of the column's raw values (bits for log-probabilities, entropies and KL)."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.name == "surprisal":
            return -raw / LN2
        if self.name == "rank":
            return np.log2(np.maximum(raw, 1))
        return raw / LN2

    def position(self, values: np.ndarray) -> np.ndarray:
        """Where each value falls on the scale, clamped to [0, 1]."""
        return np.clip((np.asarray(values, dtype=np.float64) - self.low) / (self.high - self.low), 0.0, 1.0)


SCALES = {
    "surprisal": Scale("surprisal", "logprob", "bits", 0.0, 16.0, "−log₂ P(token): how surprised the model was"),
    "entropy": Scale("entropy", "entropy", "bits", 0.0, 8.0, "entropy of the prediction before the token, in bits"),
    "kl": Scale("kl", "kl", "bits", 0.0, 4.0, "KL(reference ‖ model) at the token, in bits"),
    "rank": Scale("rank", "rank", "log₂ rank", 0.0, 12.0, "log₂ of the token's rank (rank 1 = the top prediction)"),
}


def colours(positions: np.ndarray) -> np.ndarray:
    """RGB colours (integers 0-255, [n, 3]) of positions on a scale, interpolated between the stops."""
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, 1.0) * (len(STOPS) - 1)
    i = np.minimum(pos.astype(int), len(STOPS) - 2)
    frac = (pos - i)[:, None]
    return np.rint(STOPS[i] * (1 - frac) + STOPS[i + 1] * frac).astype(int)


def text_colour(position: float) -> str:
    """Black or white text, whichever reads on the background at this position."""
    return "white" if position >= DARK_TEXT_BELOW else "black"


def hex_colour(rgb: np.ndarray) -> str:
    """An RGB triple as #rrggbb."""
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


# Diverging stops for differences (B − A of a log-prob): red where B is worse, blue where B is better.
DIVERGING = np.array([[178, 24, 43], [244, 165, 130], [255, 255, 255], [146, 197, 222], [33, 102, 172]], dtype=float)
DELTA_LIMIT = 2.0  # nats: differences beyond ±2 nats get the end colours


def delta_colours(deltas: np.ndarray, limit: float = DELTA_LIMIT) -> np.ndarray:
    """RGB colours of log-prob differences, clamped at ±limit: blue for gains, red for losses."""
    pos = (np.clip(np.nan_to_num(np.asarray(deltas, dtype=np.float64)), -limit, limit) + limit) / (2 * limit)
    pos = pos * (len(DIVERGING) - 1)
    i = np.minimum(pos.astype(int), len(DIVERGING) - 2)
    frac = (pos - i)[:, None]
    return np.rint(DIVERGING[i] * (1 - frac) + DIVERGING[i + 1] * frac).astype(int)
