"""`scorecli report`: one self-contained HTML page of a run (and optionally its comparison with another).

Needs numpy, pyarrow and plotly, not torch. Token rows are aggregated a record batch at a time (bounded
memory whatever the run's size); only the documents shown as heatmaps are read whole.

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from scorecli.analysis.bootstrap import corpus_intervals, sequence_sums
from scorecli.analysis.compare import RunComparison, compare_runs
from scorecli.analysis.heat import LN2, SCALES, colours, delta_colours, hex_colour, text_colour
from scorecli.analysis.summary import choice_figures
from scorecli.base.errors import OutputError, shown
from scorecli.data.choices import NORMALISATIONS
from scorecli.runfolder.layout import CHOICES_FILE, SEQUENCES_FILE, TOKENS_FILE, WORDS_FILE
from scorecli.runfolder.rundocs import ChoiceTexts, FinishedRun, choice_token_rows, open_run, token_strings

REPORT_FILE = "report.html"
HEATMAP_DOCS = 10  # documents with the highest and with the lowest perplexity
BATCH_ROWS = 1 << 16
SURPRISAL_BINS = np.linspace(0, 24, 49)  # bits; the last bin holds everything beyond
ENTROPY_BINS = np.linspace(0, 12, 49)
POSITION_BINS = 160
QUANTILES = (0.3, 0.5, 0.6)  # CCNet's head / middle / tail cut-offs, and the median
SCATTER_MAX_DOCS = 20_000  # beyond, document against document is drawn as a density
KL_PERCENTILES = (50, 90, 95, 99, 99.9)
CLOSEST_CALLS = 10  # records of a choice run decided by the smallest margin
CHANGES_LISTED = 50  # records whose verdict changed, listed on the page of two choice runs
_REFERENCE_COLUMNS = (("ref sum", "ref_sum_logprob"), ("log-ratio", "log_ratio"))  # choices.parquet, --ref-model


@dataclass
class TokenAggregates:
    """What the report needs of every token row, gathered a batch at a time."""

    position_count: np.ndarray = field(default_factory=lambda: np.zeros(0))
    position_surprisal: np.ndarray = field(default_factory=lambda: np.zeros(0))
    position_entropy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    density: np.ndarray = field(default_factory=lambda: np.zeros((len(SURPRISAL_BINS) - 1, len(ENTROPY_BINS) - 1)))
    kl: list = field(default_factory=list)
    rows: int = 0

    def add(self, position: np.ndarray, surprisal: np.ndarray, entropy: np.ndarray) -> None:
        """Count scored token rows: bits of surprisal and entropy by position, and their joint density."""
        self.rows += len(position)
        size = int(position.max()) + 1 if len(position) else 0
        if size > len(self.position_count):
            grow = size - len(self.position_count)
            for name in ("position_count", "position_surprisal", "position_entropy"):
                setattr(self, name, np.concatenate([getattr(self, name), np.zeros(grow)]))
        n = len(self.position_count)
        self.position_count += np.bincount(position, minlength=n)
        self.position_surprisal += np.bincount(position, weights=surprisal, minlength=n)
        self.position_entropy += np.bincount(position, weights=entropy, minlength=n)
        s = np.clip(surprisal, 0, SURPRISAL_BINS[-1] - 1e-9)
        e = np.clip(entropy, 0, ENTROPY_BINS[-1] - 1e-9)
        self.density += np.histogram2d(s, e, bins=[SURPRISAL_BINS, ENTROPY_BINS])[0]


def aggregate_tokens(run: str | Path | FinishedRun) -> TokenAggregates:
    """Aggregate a run's scored token rows a batch at a time."""
    run = open_run(run)
    has_kl = "kl" in run.token_columns()
    columns = ["position", "logprob", "entropy", "is_response"] + (["kl"] if has_kl else [])
    agg = TokenAggregates()
    for batch in run.batches(TOKENS_FILE, columns, BATCH_ROWS):
        batch = batch.filter(batch.column("is_response"))
        if not batch.num_rows:
            continue
        position = batch.column("position").to_numpy().astype(np.int64)
        surprisal = -batch.column("logprob").to_numpy().astype(np.float64) / LN2
        entropy = batch.column("entropy").to_numpy().astype(np.float64) / LN2
        agg.add(position, surprisal, entropy)
        if has_kl:
            agg.kl.append(batch.column("kl").to_numpy(zero_copy_only=False).astype(np.float32))
    return agg


def build_report(run: str | Path, compare: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run (compared with another where given); return its path."""
    import plotly.offline

    run = open_run(run)
    target = Path(out) if out else run.folder / REPORT_FILE
    meta = run.metadata
    seq = run.sequences
    figures = _figures(run, seq)
    agg = aggregate_tokens(run)
    comparison = compare_runs(run, compare) if compare else None
    if run.is_choice_run:
        # A row of sequences.parquet is a record with choices: accuracies and margins, not perplexities.
        sections = [
            _run_section(run, meta, figures),
            _accuracy_section(run, seq, figures, comparison),
            _closest_calls(run, seq),
            _position_curve(agg),
            _density(agg),
        ]
    else:
        sections = [
            _run_section(run, meta, figures),
            _doc_histogram(seq),
            _position_curve(agg),
            _density(agg),
            _heatmaps(run, seq, comparison),
        ]
    if agg.kl:
        sections.append(_kl_section(run, seq, agg))
    if run.has(WORDS_FILE):
        sections.append(_words_section(run))
    elif meta.get("words") == "true":
        raise OutputError(f"{shown(run.folder / WORDS_FILE)}: is missing")
    if comparison is not None and comparison.summary.get("kind") == "choices":
        sections.append(_choice_compare_section(comparison))
    elif comparison is not None:
        sections.append(_compare_section(comparison))
    page = _PAGE.format(
        title=html.escape(f"scorecli report: {run}"),
        csp=_CSP,
        plotly=plotly.offline.get_plotlyjs(),
        style=_STYLE,
        script=_SCRIPT,
        body="\n".join(sections),
    )
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as e:
        raise OutputError(f"{target}: cannot write ({e.strerror or e})", arg="out") from None
    return target


def _figures(run: FinishedRun, seq) -> dict:
    """The run's headline figures: from summary.json where present, with intervals computed where missing."""
    figures = run.summary
    if "perplexity_ci" not in figures:
        figures.update(corpus_intervals(sequence_sums(run.files(SEQUENCES_FILE))))
    if figures.get("perplexity") is None:
        n = pc.sum(seq.column("n_tokens")).as_py() or 0
        lp = pc.sum(seq.column("sum_logprob")).as_py() or 0.0
        nb = pc.sum(seq.column("n_bytes")).as_py() or 0
        figures.update(
            documents=seq.num_rows,
            scored_tokens=n,
            perplexity=math.exp(-lp / n) if n else None,
            bits_per_byte=-lp / (nb * LN2) if nb else None,
        )
    return figures


def _plot(fig, name: str) -> str:
    """A plotly figure as a div (the library itself is inlined once, at the top of the page)."""
    fig.update_layout(margin={"l": 60, "r": 20, "t": 40, "b": 50}, height=380, template="plotly_white")
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=name, config={"displaylogo": False})
    return f'<div class="chart" data-chart="{name}">{div}</div>'


def _num(value, digits: int = 3) -> str:
    """A figure for the page."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"


def _ci(interval) -> str:
    """An interval for the page."""
    return f" <span class='ci'>(95% CI {_num(interval[0])} – {_num(interval[1])})</span>" if interval else ""


def _run_section(run: FinishedRun, meta: dict, f: dict) -> str:
    """The run: its settings, its figures with their intervals, and all its metadata."""
    rows = [
        ("documents", _num(f.get("documents"))),
        ("scored tokens", _num(f.get("scored_tokens"))),
        ("corpus perplexity", _num(f.get("perplexity")) + _ci(f.get("perplexity_ci"))),
        ("bits per byte", _num(f.get("bits_per_byte"), 4) + _ci(f.get("bits_per_byte_ci"))),
        ("mean document perplexity", _num(f.get("mean_doc_perplexity"))),
        ("word perplexity", _num(f.get("word_perplexity"))),
        *(
            [("word perplexity, corrected", _num(f["word_perplexity_corrected"]))]
            if f.get("word_perplexity_corrected")
            else []
        ),
        ("mean entropy (nats)", _num(f.get("mean_entropy"), 4)),
    ]
    for key in ("model", "input", "dtype", "bos", "long_texts", "scored"):
        if key in meta:
            rows.append((key, html.escape(meta[key])))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    all_meta = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in meta.items())
    boot = ""
    if f.get("bootstrap_resamples"):
        boot = (
            f"<p class='note'>Intervals: percentile bootstrap over {html.escape(str(f.get('bootstrap_units')))}, "
            f"{f['bootstrap_resamples']:,} resamples, seed {f.get('bootstrap_seed')}.</p>"
        )
    return (
        f"<section id='run'><h1>scorecli report</h1><p class='path'>{html.escape(str(run))}</p>"
        f"<table class='figures'>{table}</table>{boot}"
        f"<details><summary>all metadata</summary><table class='meta'>{all_meta}</table></details></section>"
    )


def _doc_histogram(seq) -> str:
    """Histogram of document perplexity on a log scale, with the 30th, 50th and 60th percentiles."""
    import plotly.graph_objects as go

    ppl = seq.column("perplexity").to_numpy(zero_copy_only=False).astype(np.float64)
    ppl = ppl[np.isfinite(ppl) & (ppl > 0)]
    if not len(ppl):
        return "<section><h2>Document perplexity</h2><p>No scored documents.</p></section>"
    logs = np.log10(ppl)
    counts, edges = np.histogram(logs, bins=min(60, max(5, int(np.sqrt(len(ppl))))))
    mids = 10 ** ((edges[:-1] + edges[1:]) / 2)
    widths = 10 ** edges[1:] - 10 ** edges[:-1]
    fig = go.Figure(go.Bar(x=mids, y=counts, width=widths, name="documents", marker_color="#4c78a8"))
    fig.update_traces(hovertemplate="perplexity ≈ %{x:.4g}<br>%{y} documents<extra></extra>")
    for k, (q, value) in enumerate(zip(QUANTILES, np.quantile(ppl, QUANTILES))):
        fig.add_vline(x=value, line_dash="dash", line_color="#e45756")
        label = f"p{int(q * 100)} {value:.4g}"
        fig.add_annotation(x=math.log10(value), y=1 - 0.08 * k, yref="paper", text=label, showarrow=False)
    fig.update_xaxes(type="log", title="document perplexity (log scale)")
    fig.update_yaxes(title="documents")
    return (
        "<section><h2>Document perplexity</h2><p class='note'>Dashed lines: the 30th and 60th percentiles (CCNet's "
        "head / middle / tail buckets) and the median.</p>" + _plot(fig, "doc-perplexity") + "</section>"
    )


def _position_curve(agg: TokenAggregates) -> str:
    """Mean surprisal and mean entropy by token position, in log-spaced bins of positions."""
    import plotly.graph_objects as go

    n = len(agg.position_count)
    if not n:
        return ""
    edges = np.unique(np.rint(np.logspace(0, math.log10(n + 1), POSITION_BINS)).astype(int)) - 1
    edges = np.unique(np.concatenate([[0], edges, [n]]))
    count = np.add.reduceat(agg.position_count, edges[:-1])
    keep = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        surprisal = np.add.reduceat(agg.position_surprisal, edges[:-1]) / count
        entropy = np.add.reduceat(agg.position_entropy, edges[:-1]) / count
    x = edges[:-1][keep]
    hover = "position %{x}<br>%{y:.3f} bits<br>%{customdata:,} tokens<extra>%{fullData.name}</extra>"
    fig = go.Figure(
        [
            go.Scatter(x=x, y=surprisal[keep], name="mean surprisal", customdata=count[keep], hovertemplate=hover),
            go.Scatter(x=x, y=entropy[keep], name="mean entropy", customdata=count[keep], hovertemplate=hover),
        ]
    )
    fig.update_xaxes(type="log" if n > 50 else "linear", title="token position (0 = first token)")
    fig.update_yaxes(title="bits")
    return (
        "<section><h2>Surprisal and entropy by position</h2><p class='note'>How the model's surprise falls as it "
        "sees more context: the mean over all documents' tokens at each position (positions binned on a log "
        "scale).</p>" + _plot(fig, "by-position") + "</section>"
    )


def _density(agg: TokenAggregates) -> str:
    """The joint density of surprisal and entropy, as a 2-D histogram of all scored tokens."""
    import plotly.graph_objects as go

    if not agg.rows:
        return ""
    z = np.where(agg.density > 0, np.log10(np.maximum(agg.density, 1)), np.nan)
    fig = go.Figure(
        go.Heatmap(
            x=(ENTROPY_BINS[:-1] + ENTROPY_BINS[1:]) / 2,
            y=(SURPRISAL_BINS[:-1] + SURPRISAL_BINS[1:]) / 2,
            z=z,
            customdata=agg.density,
            colorscale="Viridis",
            colorbar={"title": "log₁₀ tokens"},
            hovertemplate="entropy %{x:.2f} bits<br>surprisal %{y:.2f} bits<br>%{customdata:,} tokens<extra></extra>",
        )
    )
    fig.add_trace(go.Scatter(x=[0, 12], y=[0, 12], mode="lines", line={"dash": "dot", "color": "white"}, name="y = x"))
    fig.update_xaxes(title="entropy before the token (bits)")
    fig.update_yaxes(title="surprisal of the token (bits)")
    return (
        "<section><h2>Surprisal against entropy</h2><p class='note'>Token counts (log colour scale). Above the "
        "diagonal the token was more surprising than the model expected on average; values beyond the axes "
        "are counted in the last bins.</p>" + _plot(fig, "density") + "</section>"
    )


def _extreme_docs(seq) -> tuple[list[int], list[int]]:
    """The documents with the highest and with the lowest perplexity (scored ones only)."""
    ppl = seq.column("perplexity").to_numpy(zero_copy_only=False).astype(np.float64)
    docs = seq.column("doc").to_numpy()
    ok = np.isfinite(ppl)
    scored = docs[ok]
    high = np.argsort(-ppl[ok], kind="stable")[:HEATMAP_DOCS]  # ties in input order
    low = np.argsort(ppl[ok], kind="stable")[:HEATMAP_DOCS]
    return scored[high].tolist(), scored[low].tolist()


def _token_payload(tokens, text: str | None, deltas: np.ndarray | None = None) -> dict:
    """A document's tokens for the page: their text, hover values and the colour of each under each scale."""
    response = np.asarray(tokens.column("is_response").to_pylist(), dtype=bool)
    payload = {"text": token_strings(tokens, text), "response": response.tolist(), "values": {}, "colours": {}}
    names = tokens.column_names
    for name, scale in SCALES.items():
        if scale.column not in names:
            continue
        raw = tokens.column(scale.column).to_numpy(zero_copy_only=False).astype(np.float64)
        values = scale.values(raw)
        pos = scale.position(values)
        rgb = colours(np.nan_to_num(pos))
        payload["values"][name] = [None if not np.isfinite(v) else round(float(v), 4) for v in values]
        payload["colours"][name] = [
            [hex_colour(c), text_colour(p)] if np.isfinite(p) and r else None for c, p, r in zip(rgb, pos, response)
        ]
    payload["logprob"] = [round(float(v), 5) for v in tokens.column("logprob").to_numpy().astype(np.float64)]
    for extra in ("rank", "kl", "reverse_kl", "ref_logprob"):
        if extra in names:
            values = tokens.column(extra).to_pylist()
            payload[extra] = [v if v is None or extra == "rank" else round(float(v), 5) for v in values]
    if "top_ids" in names:
        tops = tokens.column("top_tokens").to_pylist() if "top_tokens" in names else None
        ids, lps = tokens.column("top_ids").to_pylist(), tokens.column("top_logprobs").to_pylist()
        payload["top"] = [
            [
                [(tops[i][j] if tops else str(t)), round(float(lp), 3)]
                for j, (t, lp) in enumerate(zip(ids[i] or [], lps[i] or []))
            ]
            for i in range(len(ids))
        ]
    if deltas is not None:
        payload["values"]["delta"] = [round(float(v), 4) for v in deltas]
        payload["colours"]["delta"] = [
            [hex_colour(c), "black"] if r else None for c, r in zip(delta_colours(deltas), response)
        ]
    return payload


def _doc_block(kind: str, doc: int, row: dict, payload: dict) -> str:
    """One heatmap: the document's figures and a placeholder the page's script fills with its tokens."""
    title = f"doc {doc}" + (f" · id {html.escape(str(row['id']))}" if row.get("id") else "")
    n = row.get("n_tokens", 0)
    title += f" · perplexity {_num(row.get('perplexity'))} · {n:,} token{'' if n == 1 else 's'}"
    data = html.escape(json.dumps(payload, ensure_ascii=False), quote=True)
    return f"<div class='doc' data-kind='{kind}'><h4>{title}</h4><div class='tokens' data-doc='{data}'></div></div>"


def _heatmaps(run: FinishedRun, seq, comparison: RunComparison | None) -> str:
    """The documents with the highest and the lowest perplexity, each token on the colour of its value."""
    high, low = _extreme_docs(seq)
    docs = high + low
    if not docs:
        return ""
    tokens = run.doc_tokens(docs)
    texts = run.input_texts(docs)
    rows = {r["doc"]: r for r in seq.filter(pc.is_in(seq.column("doc"), value_set=_array(docs))).to_pylist()}
    blocks = {"high": [], "low": []}
    for kind, group in (("high", high), ("low", low)):
        for doc in group:
            mine = tokens.filter(pc.equal(tokens.column("doc"), doc))
            blocks[kind].append(_doc_block(kind, doc, rows[doc], _token_payload(mine, texts.get(doc))))
    scales = [n for n, s in SCALES.items() if s.column in tokens.column_names]
    return (
        "<section id='heatmaps'><h2>Documents, token by token</h2>" + _scale_switch(scales) + _legend_html(scales)
        + f"<h3>Highest perplexity</h3>{''.join(blocks['high'])}<h3>Lowest perplexity</h3>{''.join(blocks['low'])}"
        "</section>"
    )  # fmt: skip


def _array(values: list[int]):
    """A pyarrow int64 array."""
    import pyarrow as pa

    return pa.array(values, pa.int64())


def _scale_switch(scales: list[str]) -> str:
    """Radio buttons that switch the colouring of every heatmap."""
    buttons = "".join(
        f"<label><input type='radio' name='scale' value='{n}'{' checked' if i == 0 else ''}> {n}</label> "
        for i, n in enumerate(scales)
    )
    return f"<div class='switch'>colour by: {buttons}</div>"


def _legend_html(scales: list[str]) -> str:
    """One legend per colouring (the page shows the chosen one): the clamped scale with its values."""
    out = []
    for name in scales:
        scale = SCALES[name]
        steps = np.linspace(0, 1, 9)
        cells = "".join(
            f"<span style='background:{hex_colour(c)};color:{text_colour(p)}'>"
            f"{scale.low + p * (scale.high - scale.low):g}{'+' if p == 1 else ''}</span>"
            for p, c in zip(steps, colours(steps))
        )
        out.append(
            f"<div class='legend' data-scale='{name}'><b>{name}</b> ({html.escape(scale.unit)}: "
            f"{html.escape(scale.help)}; clamped at {scale.high:g}) {cells}</div>"
        )
    return "".join(out)


def _kl_section(run: FinishedRun, seq, agg: TokenAggregates) -> str:
    """Reference-model runs: KL percentiles and the documents with the largest mean KL."""
    kl = np.concatenate(agg.kl).astype(np.float64)
    kl = kl[np.isfinite(kl)]
    cells = "".join(f"<th>p{p:g}</th>" for p in KL_PERCENTILES)
    values = "".join(f"<td>{v:.5f}</td>" for v in np.percentile(kl, KL_PERCENTILES)) if len(kl) else ""
    mean = f"<td>{kl.mean():.5f}</td>" if len(kl) else "<td>—</td>"
    table = f"<table class='kl'><tr><th>mean</th>{cells}</tr><tr>{mean}{values}</tr></table>"
    if "mean_kl" in seq.column_names:
        mean_kl = seq.column("mean_kl").to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        sums, counts = np.zeros(seq.num_rows), np.zeros(seq.num_rows)
        batches = run.batches(TOKENS_FILE, ["doc", "kl", "is_response"], BATCH_ROWS)
        for b in batches:
            b = b.filter(b.column("is_response"))
            doc = b.column("doc").to_numpy()
            sums += np.bincount(doc, weights=b.column("kl").to_numpy(zero_copy_only=False), minlength=len(sums))
            counts += np.bincount(doc, minlength=len(counts))
        with np.errstate(invalid="ignore"):
            mean_kl = sums / counts
    order = np.argsort(-np.nan_to_num(mean_kl, nan=-1), kind="stable")[:HEATMAP_DOCS]  # ties: input order
    ids = seq.column("id").to_pylist()
    rows = "".join(
        f"<tr><td>{int(seq.column('doc')[i].as_py())}</td><td>{html.escape(str(ids[i] or ''))}</td>"
        f"<td>{mean_kl[i]:.5f}</td></tr>"
        for i in order
        if np.isfinite(mean_kl[i])
    )
    return (
        "<section id='kl'><h2>KL to the reference model</h2><p class='note'>Per-token KL(reference ‖ model), "
        f"nats, over all scored tokens.</p>{table}<h3>Largest mean KL</h3>"
        f"<table class='kl-docs'><tr><th>doc</th><th>id</th><th>mean KL</th></tr>{rows}</table></section>"
    )


def _words_section(run: FinishedRun) -> str:
    """Runs with --words: the distribution of word surprisal."""
    import plotly.graph_objects as go

    edges = np.linspace(0, 60, 61)
    counts = np.zeros(len(edges) - 1)
    total, n = 0.0, 0
    for b in run.batches(WORDS_FILE, ["surprisal"], BATCH_ROWS):
        bits = b.column("surprisal").to_numpy(zero_copy_only=False).astype(np.float64) / LN2
        counts += np.histogram(np.clip(bits, 0, edges[-1] - 1e-9), bins=edges)[0]
        total, n = total + bits.sum(), n + len(bits)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, marker_color="#72b7b2"))
    fig.update_traces(hovertemplate="%{x:.1f} bits<br>%{y:,} words<extra></extra>")
    fig.update_xaxes(title="word surprisal (bits; the sum over the word's tokens)")
    fig.update_yaxes(title="words")
    mean = f"{total / n:.3f}" if n else "—"
    return (
        f"<section id='words'><h2>Word surprisal</h2><p class='note'>{n:,} words, mean {mean} bits.</p>"
        + _plot(fig, "words")
        + "</section>"
    )


def _compare_section(c: RunComparison) -> str:
    """The comparison with another run: figures, document against document, Δ distribution, movers."""
    import plotly.graph_objects as go

    s = c.summary
    t = c.table
    pa_, pb = (t.column(k).to_numpy(zero_copy_only=False).astype(np.float64) for k in ("perplexity_a", "perplexity_b"))
    ok = np.isfinite(pa_) & np.isfinite(pb) & (pa_ > 0) & (pb > 0)
    ids = [str(x) for x in t.column("id").to_pylist()]
    if ok.sum() <= SCATTER_MAX_DOCS:
        scatter = go.Figure(
            go.Scattergl(
                x=pa_[ok], y=pb[ok], mode="markers", text=[ids[i] for i in np.flatnonzero(ok)],
                hovertemplate="%{text}<br>A %{x:.4g}<br>B %{y:.4g}<extra></extra>", marker={"size": 5},
            )
        )  # fmt: skip
    else:
        h, xe, ye = np.histogram2d(np.log10(pa_[ok]), np.log10(pb[ok]), bins=80)
        scatter = go.Figure(
            go.Heatmap(x=10 ** ((xe[:-1] + xe[1:]) / 2), y=10 ** ((ye[:-1] + ye[1:]) / 2), z=np.log10(h.T + 1))
        )
    lo, hi = (float(np.min(np.r_[pa_[ok], pb[ok]])), float(np.max(np.r_[pa_[ok], pb[ok]]))) if ok.any() else (1, 10)
    scatter.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot"}, name="B = A"))
    scatter.update_xaxes(type="log", title="perplexity in A")
    scatter.update_yaxes(type="log", title="perplexity in B")
    scatter.update_layout(showlegend=False)
    if s["same_tokens"]:
        delta = t.column("delta_mean_logprob").to_numpy(zero_copy_only=False).astype(np.float64)
        what = "Δ mean log-prob per document (B − A, nats; positive: B better)"
    else:
        a, b = (
            t.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
            for k in ("bits_per_byte_a", "bits_per_byte_b")
        )
        delta, what = b - a, "Δ bits per byte per document (B − A; negative: B better)"
    delta = delta[np.isfinite(delta)]
    counts, edges = np.histogram(delta, bins=60) if len(delta) else (np.zeros(1), np.zeros(2))
    hist = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, marker_color="#f58518"))
    hist.update_traces(hovertemplate="Δ %{x:.4f}<br>%{y:,} documents<extra></extra>")
    hist.update_xaxes(title=what)
    figures = (
        f"<tr><th></th><th>A</th><th>B</th><th>B vs A</th></tr>"
        f"<tr><th>run</th><td>{html.escape(s['a'])}</td><td>{html.escape(s['b'])}</td><td></td></tr>"
        f"<tr><th>corpus perplexity</th><td>{_num(s['perplexity_a'])}</td><td>{_num(s['perplexity_b'])}</td>"
        f"<td>ratio {_num(s['perplexity_ratio'], 4)}{_ci(s['perplexity_ratio_ci'])}</td></tr>"
        f"<tr><th>bits per byte</th><td>{_num(s['bits_per_byte_a'], 4)}</td><td>{_num(s['bits_per_byte_b'], 4)}</td>"
        f"<td>Δ {_num(s['bits_per_byte_delta'], 4)}{_ci(s['bits_per_byte_delta_ci'])}</td></tr>"
    )
    note = (
        f"B is better on {100 * (s['share_b_better'] or 0):.1f}% of {s['compared_documents']:,} documents. "
        f"Paired bootstrap: the same resampled documents for both runs ({s['bootstrap_resamples']:,} resamples)."
    )
    if not s["same_tokens"]:
        note += " The runs' tokens differ: compare them by bits per byte."
    movers = _movers_html(c)
    return (
        f"<section id='compare'><h2>Comparison with another run</h2><table class='figures'>{figures}</table>"
        f"<p class='note'>{html.escape(note)}</p>"
        + _plot(scatter, "compare-scatter")
        + _plot(hist, "compare-delta")
        + movers
        + "</section>"
    )


def _movers_html(c: RunComparison) -> str:
    """The documents that moved most: per-token Δ heatmaps where the tokens match, else a table."""
    s = c.summary
    docs = [r["doc"] for r in s["most_improved"] + s["most_worsened"]]
    if not docs:
        return ""
    a, b = FinishedRun(Path(s["a"])), FinishedRun(Path(s["b"]))
    if not s["same_tokens"]:
        rows = "".join(
            f"<tr><td>{r['doc']}</td><td>{html.escape(str(r['id'] or ''))}</td><td>{_num(r['bits_per_byte_a'], 4)}</td>"
            f"<td>{_num(r['bits_per_byte_b'], 4)}</td><td>{html.escape(r['preview'])}</td></tr>"
            for r in s["most_improved"] + s["most_worsened"]
        )
        return (
            "<h3>Documents that moved most</h3><table class='movers'><tr><th>doc</th><th>id</th><th>bpb A</th>"
            f"<th>bpb B</th><th>text</th></tr>{rows}</table>"
        )
    ta, tb = a.doc_tokens(docs), b.doc_tokens(docs, ["doc", "logprob"])
    texts = a.input_texts(docs)
    blocks = []
    for kind, group in (("improved", s["most_improved"]), ("worsened", s["most_worsened"])):
        for r in group:
            mine = ta.filter(pc.equal(ta.column("doc"), r["doc"]))
            theirs = tb.filter(pc.equal(tb.column("doc"), r["doc"]))
            deltas = theirs.column("logprob").to_numpy().astype(np.float64) - mine.column("logprob").to_numpy()
            payload = _token_payload(mine, texts.get(r["doc"]), deltas)
            payload["colours"] = {"delta": payload["colours"].pop("delta")}
            row = {"id": r["id"], "perplexity": r["perplexity_a"], "n_tokens": mine.num_rows}
            blocks.append(_doc_block(kind, r["doc"], row, payload))
    cells = "".join(
        f"<span style='background:{hex_colour(col)}'>{v:+g}</span>"
        for v, col in zip(np.linspace(-2, 2, 9), delta_colours(np.linspace(-2, 2, 9)))
    )
    return (
        "<h3>Documents that moved most, token by token</h3><div class='legend-delta'>Δ log-prob (B − A, nats; blue: "
        f"B better, red: B worse; clamped at ±2) {cells}</div>" + "".join(blocks)
    )


def _accuracies(run: FinishedRun, seq, figures: dict) -> tuple[list[str], dict]:
    """A choice run's normalisations and its accuracies with their intervals: summary.json's, or computed."""
    names = [n for n in NORMALISATIONS if f"correct_{n}" in seq.column_names]
    if names and f"accuracy_{names[0]}" not in figures:
        columns = ["doc", "n_choices", "label", "margin", *(f"correct_{n}" for n in names)]
        figures = {**figures, **choice_figures(run.batches(SEQUENCES_FILE, columns, BATCH_ROWS), names)}
    return names, figures


def _accuracy_section(run: FinishedRun, seq, figures: dict, comparison: RunComparison | None) -> str:
    """A choice run's accuracy under each normalisation, as bars with their 95% intervals (and another run's)."""
    import plotly.graph_objects as go

    names, figures = _accuracies(run, seq, figures)
    labelled = figures.get("labelled_records") or 0
    head = (
        "<section id='choices'><h2>Choices: accuracy</h2>"
        f"<p class='note'>{seq.num_rows:,} records, {labelled:,} with a label. "
    )
    if not labelled:
        return head + "No record has a label: no accuracy; see the closest calls below.</p></section>"
    rows = "".join(
        f"<tr><th>{n}</th><td>{NORMALISATIONS[n][1] or ''}</td><td>{_acc(figures.get(f'accuracy_{n}'))}</td>"
        f"<td>{_acc_ci(figures.get(f'accuracy_{n}_ci'))}</td></tr>"
        for n in names
    )
    table = (
        "<table class='accuracy'><tr><th>normalisation</th><th>lm-eval</th><th>accuracy</th><th>95% CI</th></tr>"
        f"{rows}</table>"
    )
    bars = [(str(run), [figures.get(f"accuracy_{n}") for n in names], [figures.get(f"accuracy_{n}_ci") for n in names])]
    if comparison is not None and comparison.summary.get("kind") == "choices":
        s = comparison.summary
        shared = [n for n in names if f"accuracy_{n}" in s]
        bars = [(f"{k.upper()}: {s[k]}", [s[f"accuracy_{n}"][k] for n in shared], [s[f"accuracy_{n}"][f"{k}_ci"]
                 for n in shared]) for k in ("a", "b")]  # fmt: skip
        names = shared
    fig = go.Figure()
    for label, values, cis in bars:
        values = [math.nan if v is None else v for v in values]
        high = [c[1] - v if c else 0 for v, c in zip(values, cis)]
        low = [v - c[0] if c else 0 for v, c in zip(values, cis)]
        fig.add_trace(
            go.Bar(
                x=[n + (f" ({NORMALISATIONS[n][1]})" if NORMALISATIONS[n][1] else "") for n in names],
                y=values,
                name=label,
                error_y={"type": "data", "array": high, "arrayminus": low},
                hovertemplate="%{x}<br>accuracy %{y:.3f}<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_yaxes(title="accuracy (95% bootstrap interval over records)", range=[0, 1.05])
    fig.update_layout(barmode="group", showlegend=len(bars) > 1)
    note = "Bars: accuracy over the labelled records; whiskers: the 95% percentile bootstrap interval over records."
    return head + f"{note}</p>{table}" + _plot(fig, "choice-accuracy") + "</section>"


def _acc(value) -> str:
    """An accuracy for the page."""
    return "—" if value is None else f"{value:.4f}"


def _acc_ci(interval) -> str:
    """An accuracy's interval for the page."""
    return "—" if not interval else f"{interval[0]:.4f} – {interval[1]:.4f}"


def _closest_calls(run: FinishedRun, seq) -> str:
    """The records decided by the smallest margin: their context, and each choice's scores and tokens."""
    margin = seq.column("margin").to_numpy(zero_copy_only=False).astype(np.float64)
    known = np.flatnonzero(np.isfinite(margin))
    order = known[np.argsort(np.abs(margin[known]), kind="stable")][:CLOSEST_CALLS]  # ties: input order
    if not len(order):
        return ""
    rows = seq.take(_array(order.tolist())).to_pylist()
    docs = [r["doc"] for r in rows]
    choices = run.read(CHOICES_FILE, filters=[("doc", "in", docs)])
    tokens = run.doc_tokens(docs)
    texts = run.choice_texts(docs)
    blocks = [_closest_call(r, choices, tokens, texts.get(r["doc"])) for r in rows]
    return (
        "<section id='closest-calls'><h2>Closest calls</h2><p class='note'>The records whose verdict was decided "
        "by the smallest margin, |margin| in nats of summed log-prob: the label's score minus the best other "
        "choice's (negative: wrong), or without a label the best minus the second best. Choices are coloured by "
        "surprisal; hover a token for its figures.</p>" + _legend_html(["surprisal"]) + "".join(blocks) + "</section>"
    )


def _closest_call(row: dict, choices, tokens, texts: ChoiceTexts | None) -> str:
    """One record of the closest calls: its figures, its context, and a row per choice."""
    doc = row["doc"]
    mine = choices.filter(pc.equal(choices.column("doc"), doc)).to_pylist()
    record_tokens = tokens.filter(pc.equal(tokens.column("doc"), doc))
    named = [*((n, column) for n, (column, _) in NORMALISATIONS.items()), *_REFERENCE_COLUMNS]
    columns = [(n, column) for n, column in named if mine and column in mine[0]]
    head = "".join(f"<th>{n}</th>" for n, _ in columns)
    body = []
    for c in mine:
        part, text = choice_token_rows(record_tokens, texts, c["choice"])
        payload = html.escape(json.dumps(_token_payload(part, text), ensure_ascii=False), quote=True)
        marks = [m for m, on in (("label", c["choice"] == row["label"]),
                                 ("predicted", c["choice"] == row.get("predicted_sum"))) if on]  # fmt: skip
        cells = "".join(f"<td>{_num(c[column], 4)}</td>" for _, column in columns)
        body.append(
            f"<tr data-choice='{c['choice']}'><td>{c['choice']}</td><td>{' '.join(marks)}</td>"
            f"<td><div class='tokens' data-doc='{payload}'></div></td>{cells}<td>{'yes' if c['is_greedy'] else 'no'}"
            "</td></tr>"
        )
    title = f"doc {doc}" + (f" · id {html.escape(str(row['id']))}" if row.get("id") else "")
    title += f" · margin {row['margin']:+.4f} nats · label {'—' if row['label'] is None else row['label']}"
    context = f"<p class='context'>{html.escape(texts.context)}</p>" if texts is not None and texts.context else ""
    return (
        f"<div class='call' data-doc='{doc}'><h4>{title}</h4>{context}<table class='choices'><tr><th>choice</th>"
        f"<th></th><th>text</th>{head}<th>greedy</th></tr>{''.join(body)}</table></div>"
    )


def _choice_compare_section(c: RunComparison) -> str:
    """The comparison of two choice runs: the paired accuracy differences, and the records whose verdict changed."""
    s = c.summary
    rows = "".join(
        f"<tr><th>{n}</th><td>{_acc(f['a'])}</td><td>{_acc(f['b'])}</td><td>{_signed_acc(f['delta'])}</td>"
        f"<td>{_acc_ci(f['delta_ci'])}</td><td>{_acc(f['agreement'])}</td></tr>"
        for n, f in ((n, s[f"accuracy_{n}"]) for n in s["normalisations"])
    )
    table = (
        "<table class='choice-compare'><tr><th>normalisation</th><th>A</th><th>B</th><th>B − A</th><th>95% CI</th>"
        f"<th>same prediction</th></tr>{rows}</table>"
    )
    changed = "".join(
        f"<tr data-doc='{r['doc']}'><td>{r['doc']}</td><td>{html.escape(str(r['id'] or ''))}</td>"
        f"<td>{html.escape(', '.join(r['changes']))}</td>"
        f"<td>{html.escape(_verdict(r, 'a'))}</td><td>{html.escape(_verdict(r, 'b'))}</td>"
        f"<td>{'—' if r['label'] is None else r['label']}</td><td>{html.escape(r['context'][:120])}</td></tr>"
        for r in s["changed"][:CHANGES_LISTED]
    )
    more = s["changed_records"] - min(s["changed_records"], CHANGES_LISTED)
    listing = (
        "<h3>Verdicts that changed</h3><table class='changed'><tr><th>doc</th><th>id</th><th>normalisations</th>"
        f"<th>A</th><th>B</th><th>label</th><th>context</th></tr>{changed}</table>"
        + (f"<p class='note'>… and {more:,} more: scorecli compare --json lists them all.</p>" if more else "")
        if s["changed"]
        else "<p class='note'>No record's verdict changed.</p>"
    )
    note = (
        f"A: {s['a']} · B: {s['b']}. Accuracy over {s['labelled_records']:,} labelled records of {s['records']:,}; "
        f"paired bootstrap: the same resampled records for both runs ({s['bootstrap_resamples']:,} resamples). "
        f"The verdict changed on {s['changed_records']:,} records (right in one run and wrong in the other, or "
        "without a label another choice predicted)."
    )
    return (
        f"<section id='compare'><h2>Comparison with another run</h2><p class='note'>{html.escape(note)}</p>{table}"
        f"{listing}</section>"
    )


def _signed_acc(value) -> str:
    """An accuracy difference for the page."""
    return "—" if value is None else f"{value:+.4f}"


def _verdict(r: dict, run: str) -> str:
    """A run's choice under the first normalisation that changed, with its text and a tick or cross."""
    first = next(iter(r["changes"].values()))
    index, correct = first[f"predicted_{run}"], first[f"correct_{run}"]
    if index is None:
        return "—"
    text = " ".join(r["choices"][index].split()) if index < len(r["choices"]) else ""
    return f"{index}: {text[:40]}" + ("" if correct is None else (" ✓" if correct else " ✗"))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0; } .path { color: #666; margin-top: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { padding: 2px 10px; text-align: left; }
table.figures th { font-weight: 600; } .ci, .note { color: #666; }
table.meta td, table.movers td { font-size: 0.85em; } details { margin: 0.5em 0; }
.context { white-space: pre-wrap; color: #666; font-family: ui-monospace, monospace; font-size: 0.85em; }
table.choices .tokens { border: none; padding: 0; } table.choices td { vertical-align: top; }
.chart { min-height: 380px; } section { margin-bottom: 2em; }
.tokens { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.85em; line-height: 1.7;
  border: 1px solid #ddd; padding: 0.5em; border-radius: 4px; }
.tok { border-radius: 2px; cursor: default; } .ctx { color: #999; }
.legend span, .legend-delta span { display: inline-block; min-width: 2.4em; text-align: center; font-size: 0.8em; }
.legend { display: none; margin: 0.4em 0; } .legend.active { display: block; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; padding: 6px 8px; font-size: 0.8em;
  box-shadow: 0 2px 6px rgba(0,0,0,.2); pointer-events: none; z-index: 10; max-width: 360px; }
#tip table td, #tip table th { padding: 0 6px; }
"""

_SCRIPT = r"""
(function () {
  var tip = document.getElementById('tip');
  function fmt(v, d) { return (v === null || v === undefined) ? '—' : Number(v).toFixed(d); }
  function esc(s) { var e = document.createElement('span'); e.textContent = s; return e.innerHTML; }
  function paint(scale) {
    document.querySelectorAll('.tokens').forEach(function (box) {
      var d = box._doc, cs = d.colours[scale] || d.colours.delta;
      box.querySelectorAll('.tok').forEach(function (el) {
        var c = cs ? cs[+el.dataset.i] : null;
        el.style.background = c ? c[0] : 'transparent'; el.style.color = c ? c[1] : '#999';
      });
    });
    document.querySelectorAll('.legend').forEach(function (l) {
      l.classList.toggle('active', l.dataset.scale === scale);
    });
  }
  function show(ev, d, i) {
    var rows = [['token', esc(JSON.stringify(d.text[i]))], ['logprob', fmt(d.logprob[i], 4)]];
    var v = d.values;
    if (v.surprisal) rows.push(['surprisal', fmt(v.surprisal[i], 3) + ' bits']);
    if (v.entropy) rows.push(['entropy', fmt(v.entropy[i], 3) + ' bits']);
    if (d.rank) rows.push(['rank', fmt(d.rank[i], 0)]);
    if (d.kl) rows.push(['KL', fmt(d.kl[i], 4) + ' nats']);
    if (d.reverse_kl) rows.push(['reverse KL', fmt(d.reverse_kl[i], 4) + ' nats']);
    if (d.ref_logprob) rows.push(['ref logprob', fmt(d.ref_logprob[i], 4)]);
    if (v.delta) rows.push(['Δ logprob (B − A)', fmt(v.delta[i], 4)]);
    if (!d.response[i]) rows.push(['', 'context (not counted)']);
    var html = '<table>' + rows.map(function (r) {
      return '<tr><th>' + r[0] + '</th><td>' + r[1] + '</td></tr>';
    }).join('') + '</table>';
    if (d.top && d.top[i] && d.top[i].length) {
      html += '<div>top alternatives: ' + d.top[i].map(function (t) {
        return esc(JSON.stringify(t[0])) + ' ' + fmt(t[1], 2);
      }).join(', ') + '</div>';
    }
    tip.innerHTML = html; tip.style.display = 'block';
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 380) + 'px';
    tip.style.top = (ev.clientY + 14) + 'px';
  }
  document.querySelectorAll('.tokens').forEach(function (box) {
    var d = JSON.parse(box.dataset.doc); box._doc = d; box.removeAttribute('data-doc');
    d.text.forEach(function (t, i) {
      var el = document.createElement('span'); el.className = 'tok'; el.dataset.i = i; el.textContent = t;
      el.addEventListener('mouseenter', function (ev) { show(ev, d, i); });
      el.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
      box.appendChild(el);
    });
  });
  document.querySelectorAll('input[name=scale]').forEach(function (r) {
    r.addEventListener('change', function () { paint(r.value); });
  });
  var first = document.querySelector('input[name=scale]:checked');
  paint(first ? first.value : 'surprisal');
})();
"""

# Nothing may leave the page: scripts and styles are inline, and no network address is allowed.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta http-equiv="Content-Security-Policy" content="{csp}">
<style>{style}</style>
<script>{plotly}</script>
</head><body>
{body}
<div id="tip"></div>
<script>{script}</script>
</body></html>
"""
