"""`scorecli show`: one document of a run in the terminal, each token coloured by its score. No torch.

A record of a choice run shows its predictions, its context and each choice with its tokens coloured.

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from scorecli.analysis.heat import SCALES, Scale, colours, hex_colour, text_colour
from scorecli.base.errors import UsageError
from scorecli.data.choices import NORMALISATIONS
from scorecli.runfolder.layout import CHOICES_FILE
from scorecli.runfolder.rundocs import FinishedRun, choice_token_rows, open_run, token_strings

LEGEND_STEPS = 9
_REFERENCE_COLUMNS = (("ref sum", "ref_sum_logprob"), ("log-ratio", "log_ratio"))  # choices.parquet, --ref-model
_DOC_FIGURES = (
    ("n_tokens", "tokens", "{:,}"),
    ("perplexity", "perplexity", "{:,.3f}"),
    ("bits_per_byte", "bits per byte", "{:.4f}"),
    ("mean_entropy", "mean entropy (nats)", "{:.4f}"),
    ("word_perplexity", "word perplexity", "{:,.3f}"),
    ("word_perplexity_corrected", "word perplexity, corrected", "{:,.3f}"),
    ("top1_rate", "top-1 rate", "{:.3f}"),
    ("mean_kl", "mean KL (nats)", "{:.4f}"),
    ("ref_perplexity", "reference perplexity", "{:,.3f}"),
)


def scale_for(run: FinishedRun, by: str) -> Scale:
    """The colouring `by` names, if the run has the column it needs; UsageError otherwise."""
    if by not in SCALES:
        raise UsageError(f"must be one of {', '.join(SCALES)}, not {by!r}", arg="by")
    scale = SCALES[by]
    if scale.column not in run.token_columns():
        why = {"kl": "was not scored with a reference model", "rank": "has no `rank` column"}.get(by, "")
        raise UsageError(f"{by}: the run in {run} {why or f'has no `{scale.column}` column'}", arg="by")
    return scale


def render_document(run: str | Path, doc: int | None = None, doc_id: str | None = None, by: str = "surprisal") -> Group:
    """A Rich renderable: the document's figures, a legend, and its text with each token coloured."""
    run = open_run(run)
    if (doc is None) == (doc_id is None):
        raise UsageError("give exactly one of `doc` and `doc_id`")
    scale = scale_for(run, by)
    row = run.find_doc(doc, doc_id)
    if run.is_choice_run:
        return _choice_record(run, row, scale)
    tokens = run.doc_tokens([row["doc"]])
    text = run.input_texts([row["doc"]]).get(row["doc"])
    return Group(_figures(row), legend(scale), _coloured(tokens, text, scale))


def _figures(row: dict) -> Table:
    """The document's own figures."""
    table = Table(title=f"document {row['doc']}" + (f" (id {row['id']})" if row["id"] else ""), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, label, fmt in _DOC_FIGURES:
        value = row.get(key)
        if key in row:
            ok = value is not None and not (isinstance(value, float) and not math.isfinite(value))
            table.add_row(label, fmt.format(value) if ok else "—")
    return table


def legend(scale: Scale) -> Text:
    """A row of swatches from the low to the high end of the scale, with their values."""
    out = Text(f"{scale.name} ({scale.unit}; {scale.help}): ")
    steps = np.linspace(0, 1, LEGEND_STEPS)
    for pos, rgb in zip(steps, colours(steps)):
        value = scale.low + pos * (scale.high - scale.low)
        label = f" {value:g}{'+' if pos == 1 else ''} "
        out.append(label, style=f"{text_colour(pos)} on {hex_colour(rgb)}")
    return out


def _coloured(tokens, text: str | None, scale: Scale) -> Text:
    """The document's text, each token on the colour of its value; text between tokens (a prompt) dim."""
    strings = token_strings(tokens, text)
    raw = tokens.column(scale.column).to_numpy(zero_copy_only=False)
    positions = scale.position(scale.values(raw))
    rgb = colours(np.nan_to_num(positions))
    response = tokens.column("is_response").to_pylist()
    starts, ends = tokens.column("start").to_pylist(), tokens.column("end").to_pylist()
    out, at = Text(), 0
    for i, piece in enumerate(strings):
        if text is not None and starts[i] > at:
            out.append(text[at : starts[i]], style="dim")
        if not response[i] or not np.isfinite(positions[i]):
            out.append(piece, style="dim")
        else:
            out.append(piece, style=f"{text_colour(positions[i])} on {hex_colour(rgb[i])}")
        at = max(at, ends[i])
    if text is not None and at < len(text):
        out.append(text[at:], style="dim")
    return out


def _choice_record(run: FinishedRun, row: dict, scale: Scale) -> Group:
    """A record of a choice run: its predictions, its context (dim), and each choice with its tokens coloured."""
    doc = row["doc"]
    tokens = run.doc_tokens([doc])
    choices = run.read(CHOICES_FILE, filters=[("doc", "==", doc)]).to_pylist()
    texts = run.choice_texts([doc]).get(doc)
    parts: list = [_choice_figures(row), legend(scale)]
    if texts is not None and texts.context:
        parts.append(Text(texts.context, style="dim"))
    for c in choices:
        mine, text = choice_token_rows(tokens, texts, c["choice"])
        parts.append(_choice_line(c, row))
        parts.append(_coloured(mine, text, scale) if mine.num_rows else Text("(no token scored)", style="dim"))
    return Group(*parts)


def _choice_figures(row: dict) -> Table:
    """A choice record's figures: its label, each normalisation's predicted choice and verdict, its margin."""
    table = Table(title=f"record {row['doc']}" + (f" (id {row['id']})" if row["id"] else ""), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("choices", str(row["n_choices"]))
    table.add_row("label", "—" if row["label"] is None else str(row["label"]))
    for name in NORMALISATIONS:
        if f"predicted_{name}" in row:
            predicted, correct = row[f"predicted_{name}"], row[f"correct_{name}"]
            mark = "" if correct is None else (" ✓" if correct else " ✗")
            table.add_row(f"predicted ({name})", "—" if predicted is None else f"{predicted}{mark}")
    margin = row.get("margin")
    table.add_row("margin (nats)", "—" if margin is None else f"{margin:+.4f}")
    return table


def _choice_line(choice: dict, row: dict) -> Text:
    """A choice's heading: its index, whether it is the label or the prediction by sum, its scores."""
    index = choice["choice"]
    marks = [m for m, on in (("label", index == row["label"]), ("predicted", index == row.get("predicted_sum"))) if on]
    named = [*((n, column) for n, (column, _) in NORMALISATIONS.items()), *_REFERENCE_COLUMNS]
    figures = [f"{n} {_maybe(choice.get(column))}" for n, column in named if column in choice]
    head = f"choice {choice['choice']}" + (f" ({choice['name']})" if choice.get("name") else "")
    return Text(f"{head}{' [' + ', '.join(marks) + ']' if marks else ''}: " + " · ".join(figures), style="bold")


def _maybe(value: float | None) -> str:
    """A log-prob figure, or a dash where there is none."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.4f}"
