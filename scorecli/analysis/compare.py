"""Compare two runs of the same input: per-document deltas, paired bootstrap intervals, the documents that moved.

Needs numpy and pyarrow, not torch. Runs are read through rundocs.open_run (sequences.parquet, tokens.parquet).
Two runs of records with choices are compared by their accuracies instead (analysis/choicecompare.py).

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from scorecli.analysis.bootstrap import RESAMPLES, SEED, DocSums, percentile_interval, resample_sums
from scorecli.analysis.choicecompare import compare_choice_runs, render_choice_comparison
from scorecli.base.errors import OutputError
from scorecli.runfolder.layout import SEQUENCES_FILE, TOKENS_FILE
from scorecli.runfolder.rundocs import FinishedRun, open_run

TOP_MOVERS = 5
DELTA_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
COMPARE_SCHEMA = pa.schema(
    [
        ("doc", pa.int64()),
        ("id", pa.string()),
        ("n_tokens_a", pa.int64()),
        ("n_tokens_b", pa.int64()),
        ("mean_logprob_a", pa.float64()),
        ("mean_logprob_b", pa.float64()),
        ("delta_mean_logprob", pa.float64()),
        ("perplexity_a", pa.float64()),
        ("perplexity_b", pa.float64()),
        ("bits_per_byte_a", pa.float64()),
        ("bits_per_byte_b", pa.float64()),
    ]
)
_SEQ_COLUMNS = ["doc", "id", "n_tokens", "sum_logprob", "mean_logprob", "perplexity", "n_bytes", "bits_per_byte"]


@dataclass
class RunComparison:
    """Two runs compared: a row per document (COMPARE_SCHEMA) and the summary figures (JSON-ready)."""

    table: pa.Table
    summary: dict


def compare_runs(a: str | Path, b: str | Path, resamples: int = RESAMPLES, seed: int = SEED) -> RunComparison:
    """Compare run B with run A (same input); raise OutputError where they are not runs of the same input.

    Two choice runs are compared by accuracy (analysis/choicecompare.py: UsageError where they cannot be compared, or
    where only one of them is a choice run); the summary's `kind` is then "choices".
    """
    a, b = open_run(a), open_run(b)
    if a.is_choice_run or b.is_choice_run:
        return RunComparison(*compare_choice_runs(a, b, resamples, seed))
    meta_a, meta_b = a.metadata, b.metadata
    for key, what in (("input", "input"), ("input_size", "input size")):
        was, now = meta_a.get(key), meta_b.get(key)
        if key == "input":
            was, now = Path(was or "").name, Path(now or "").name
        if was != now:
            raise OutputError(f"{a} and {b} are runs of different inputs ({what} {was!r} and {now!r})")
    seq_a, seq_b = (d.read(SEQUENCES_FILE, columns=_SEQ_COLUMNS) for d in (a, b))
    for col in ("doc", "id"):
        if not seq_a.column(col).equals(seq_b.column(col)):
            raise OutputError(f"{a} and {b} hold different documents (their `{col}` columns differ)")
    table = _per_doc(seq_a, seq_b)
    same_tokens = _same_tokens(a, b)
    summary = {
        "a": str(a),
        "b": str(b),
        "model_a": meta_a.get("model"),
        "model_b": meta_b.get("model"),
        "dtype_a": meta_a.get("dtype"),
        "dtype_b": meta_b.get("dtype"),
        "documents": seq_a.num_rows,
        "same_tokens": same_tokens,
        "compared_by": "perplexity" if same_tokens else "bits_per_byte",
        **_paired_figures(seq_a, seq_b, resamples, seed),
    }
    summary.update(_movers(table, a, b, same_tokens))
    summary["token_delta"] = _token_delta(a, b) if same_tokens else None
    return RunComparison(table, summary)


def _per_doc(seq_a: pa.Table, seq_b: pa.Table) -> pa.Table:
    """The per-document table of COMPARE_SCHEMA."""
    delta = pc.subtract(seq_b.column("mean_logprob"), seq_a.column("mean_logprob"))
    columns = {"doc": seq_a.column("doc"), "id": seq_a.column("id")}
    for name in ("n_tokens", "mean_logprob"):
        columns[f"{name}_a"], columns[f"{name}_b"] = seq_a.column(name), seq_b.column(name)
    columns["delta_mean_logprob"] = delta
    for name in ("perplexity", "bits_per_byte"):
        columns[f"{name}_a"], columns[f"{name}_b"] = seq_a.column(name), seq_b.column(name)
    return pa.table(columns, schema=COMPARE_SCHEMA)


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 numpy, nulls as NaN."""
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _paired_figures(seq_a: pa.Table, seq_b: pa.Table, resamples: int, seed: int) -> dict:
    """Corpus figures of each run over the documents both scored, with paired bootstrap intervals."""
    names = ("n_tokens", "sum_logprob", "n_bytes")
    rows = np.stack([_column(s, n) for s in (seq_a, seq_b) for n in names], axis=1)
    both = (rows[:, 0] > 0) & (rows[:, 3] > 0)
    rows = np.nan_to_num(rows[both])
    sums = DocSums(len(names) * 2)
    sums.add(seq_a.column("doc").to_numpy()[both], rows)
    ppl_a, ppl_b, bpb_a, bpb_b = _ratios(rows.sum(axis=0, keepdims=True))
    figures = {
        "compared_documents": int(both.sum()),
        "perplexity_a": _float(ppl_a[0]),
        "perplexity_b": _float(ppl_b[0]),
        "perplexity_ratio": _float(ppl_b[0] / ppl_a[0]),
        "perplexity_ratio_ci": None,
        "bits_per_byte_a": _float(bpb_a[0]),
        "bits_per_byte_b": _float(bpb_b[0]),
        "bits_per_byte_delta": _float(bpb_b[0] - bpb_a[0]),
        "bits_per_byte_delta_ci": None,
    }
    if len(sums.units()) >= 2:
        ra, rb, ba, bb = _ratios(resample_sums(sums.units(), resamples, seed))
        figures["perplexity_ratio_ci"] = percentile_interval(rb / ra)
        figures["bits_per_byte_delta_ci"] = percentile_interval(bb - ba)
    delta_bpb = _column(seq_b, "bits_per_byte")[both] - _column(seq_a, "bits_per_byte")[both]
    figures["share_b_better"] = _float(np.mean(delta_bpb < 0)) if both.any() else None
    figures["share_b_worse"] = _float(np.mean(delta_bpb > 0)) if both.any() else None
    figures.update({"bootstrap_resamples": resamples, "bootstrap_seed": seed, "bootstrap_units": _units_name(sums)})
    return figures


def _units_name(sums: DocSums) -> str:
    """What the bootstrap resampled, in words."""
    return "buckets of documents" if sums.bucketed else "documents"


def _ratios(sums: np.ndarray) -> tuple[np.ndarray, ...]:
    """Perplexity of A and B and bits per byte of A and B from paired sums, row by row."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ppl = [np.exp(-sums[:, k + 1] / sums[:, k]) for k in (0, 3)]
        bpb = [-sums[:, k + 1] / (sums[:, k + 2] * math.log(2)) for k in (0, 3)]
    return ppl[0], ppl[1], bpb[0], bpb[1]


def _float(x: float) -> float | None:
    """A finite float, or None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _movers(table: pa.Table, a: FinishedRun, b: FinishedRun, same_tokens: bool) -> dict:
    """The documents that moved most each way, with both perplexities and a preview of their text."""
    if same_tokens:
        delta = _column(table, "delta_mean_logprob")  # B - A; higher is better for B
    else:
        delta = _column(table, "bits_per_byte_a") - _column(table, "bits_per_byte_b")
    valid = ~np.isnan(delta)
    filled = np.where(valid, delta, 0)
    # Stable sorts both ways: ties keep input order.
    improved = [i for i in np.argsort(-filled, kind="stable") if valid[i] and delta[i] > 0][:TOP_MOVERS]
    worsened = [i for i in np.argsort(filled, kind="stable") if valid[i] and delta[i] < 0][:TOP_MOVERS]
    docs = table.column("doc").to_numpy()
    texts = a.previews(docs[improved + worsened].tolist())

    def row(i: int) -> dict:
        r = {k: table.column(k)[i].as_py() for k in ("doc", "id", "perplexity_a", "perplexity_b")}
        r.update({k: table.column(k)[i].as_py() for k in ("bits_per_byte_a", "bits_per_byte_b")})
        return {**r, "preview": texts.get(int(docs[i]), "")}

    return {"most_improved": [row(i) for i in improved], "most_worsened": [row(i) for i in worsened]}


def _column_of(run: FinishedRun, name: str) -> np.ndarray:
    """One column of a run's tokens.parquet as numpy (read alone, so two runs' columns fit in memory)."""
    return run.read(TOKENS_FILE, columns=[name]).column(0).to_numpy()


def _same_tokens(a: FinishedRun, b: FinishedRun) -> bool:
    """Whether both runs scored the very same tokens (same tokenizer, same token ids, same positions)."""
    if a.rows(TOKENS_FILE) != b.rows(TOKENS_FILE):
        return False
    return all(
        np.array_equal(_column_of(a, c), _column_of(b, c)) for c in ("doc", "position", "token_id", "is_response")
    )


def _token_delta(a: FinishedRun, b: FinishedRun) -> dict:
    """Statistics of the per-token difference logprob_B - logprob_A (runs with the same tokens)."""
    response = _column_of(a, "is_response")
    delta = _column_of(b, "logprob")[response].astype(np.float64) - _column_of(a, "logprob")[response]
    if not len(delta):
        return {"tokens": 0}
    stats = {"tokens": len(delta), "mean": float(delta.mean()), "mean_abs": float(np.abs(delta).mean())}
    for p, v in zip(DELTA_PERCENTILES, np.percentile(delta, DELTA_PERCENTILES)):
        stats[f"p{p}"] = float(v)
    stats["share_better"] = float(np.mean(delta > 0))
    stats["share_worse"] = float(np.mean(delta < 0))
    return stats


def write_comparison(comparison: RunComparison, path: str | Path) -> Path:
    """Write the per-document table as Parquet, with the summary as JSON in its metadata."""
    path = Path(path)
    meta = {b"scorecli_compare": json.dumps(comparison.summary).encode()}
    try:
        pq.write_table(comparison.table.replace_schema_metadata(meta), path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})", arg="out") from None
    return path


def render_comparison(c: RunComparison) -> Group:
    """A Rich renderable: the corpus figures with intervals, the share better, the movers, the token deltas."""
    s = c.summary
    if s.get("kind") == "choices":
        return render_choice_comparison(s)
    figures = Table(title="scorecli compare", title_justify="left", show_header=True)
    figures.add_column("")
    for name in ("A", "B", "B vs A", "95% CI"):
        figures.add_column(name, justify="right")
    figures.add_row(
        "corpus perplexity",
        _num(s["perplexity_a"]),
        _num(s["perplexity_b"]),
        f"×{_num(s['perplexity_ratio'], 4)}",
        _interval(s["perplexity_ratio_ci"], 4),
    )
    figures.add_row(
        "bits per byte",
        _num(s["bits_per_byte_a"], 4),
        _num(s["bits_per_byte_b"], 4),
        f"{_signed(s['bits_per_byte_delta'])}",
        _interval(s["bits_per_byte_delta_ci"], 4),
    )
    better = s["share_b_better"]
    parts: list = [figures]
    for key in ("a", "b"):
        parts.append(
            f"{key.upper()}: {escape(s[key])} [dim](model {escape(str(s['model_' + key]))}, {s['dtype_' + key]})[/dim]"
        )
    parts.append(
        f"documents: {s['documents']:,} ({s['compared_documents']:,} scored in both); B better on "
        f"{_pct(better)}, worse on {_pct(s['share_b_worse'])} (by bits per byte); paired bootstrap over "
        f"{s['bootstrap_units']}, {s['bootstrap_resamples']:,} resamples"
    )
    if not s["same_tokens"]:
        parts.append(
            "[yellow]note:[/yellow] the runs' tokens differ (another tokenizer, or other options): "
            "compare them by bits per byte; perplexities count different tokens"
        )
    for title, key in (("B better: most improved", "most_improved"), ("B worse: most worsened", "most_worsened")):
        if s[key]:
            parts.append(_movers_table(title, s[key]))
    delta = s.get("token_delta")
    if delta and delta.get("tokens"):
        t = Table(title="per-token Δ logprob (B − A), nats", title_justify="left", show_header=False)
        t.add_column("")
        t.add_column("", justify="right")
        t.add_row("tokens", f"{delta['tokens']:,}")
        t.add_row("mean", _signed(delta["mean"]))
        t.add_row("mean |Δ|", f"{delta['mean_abs']:.4f}")
        for p in DELTA_PERCENTILES:
            t.add_row(f"percentile {p}", _signed(delta[f"p{p}"]))
        t.add_row("B better / worse", f"{_pct(delta['share_better'])} / {_pct(delta['share_worse'])}")
        parts.append(t)
    return Group(*parts)


def _movers_table(title: str, rows: list[dict]) -> Table:
    """A table of documents that moved, with both perplexities and a preview."""
    table = Table(title=title, title_justify="left")
    for name in ("doc", "id", "ppl A", "ppl B", "bpb A", "bpb B"):
        table.add_column(name, justify="left" if name == "id" else "right", no_wrap=True)
    table.add_column("text")
    for r in rows:
        preview = " ".join(r["preview"].split())
        preview = preview if len(preview) <= 40 else preview[:39] + "…"
        table.add_row(
            str(r["doc"]),
            escape(r["id"] or ""),
            _num(r["perplexity_a"]),
            _num(r["perplexity_b"]),
            _num(r["bits_per_byte_a"], 3),
            _num(r["bits_per_byte_b"], 3),
            escape(preview),
        )
    return table


def _num(value: float | None, digits: int = 3) -> str:
    """A figure, or a dash where undefined."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"


def _signed(value: float | None, digits: int = 4) -> str:
    """A difference with its sign."""
    return "—" if value is None else f"{value:+.{digits}f}"


def _interval(ci: list[float] | None, digits: int) -> str:
    """An interval as low–high."""
    return "—" if not ci else f"{ci[0]:.{digits}f} – {ci[1]:.{digits}f}"


def _pct(share: float | None) -> str:
    """A share as a percentage."""
    return "—" if share is None else f"{100 * share:.1f}%"
