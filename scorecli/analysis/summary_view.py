"""The Rich rendering of a run's summary: its figures (`Summary.as_dict`, as summary.json holds them) and settings.

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from scorecli.analysis.summary import DELTA_P_PERCENTILES, KL_PERCENTILES, percentile_name

_ID_WIDTH = 16
_SETTINGS = ("model", "dtype", "ref_model", "ref_dtype", "device", "bos", "long_texts", "scored")


def render(figures: dict, metadata: dict[str, str]) -> Group:
    """A Rich renderable of a run's figures (`Summary.as_dict`, as summary.json holds them) and settings.

    It fits the console's width, each document on one line, and takes about 20 lines.
    """
    pairs = [
        ("documents", _int(figures.get("documents"))),
        ("scored tokens", _int(figures.get("scored_tokens"))),
        *_fed(figures),
        ("corpus perplexity", _num(figures.get("perplexity"))),
        *_ci("perplexity 95% CI", figures.get("perplexity_ci")),
        ("mean doc perplexity", _num(figures.get("mean_doc_perplexity"))),
        ("bits per byte", _num(figures.get("bits_per_byte"))),
        *_ci("bits/byte 95% CI", figures.get("bits_per_byte_ci")),
        ("word perplexity", _num(figures.get("word_perplexity"))),
        *(
            [("word perplexity, corrected", _num(figures["word_perplexity_corrected"]))]
            if figures.get("word_perplexity_corrected") is not None
            else []
        ),
        ("mean entropy (nats)", _num(figures.get("mean_entropy"))),
        ("top-1 rate", _pct_text(figures.get("top1_rate"))),
        ("tokens/s", _num(figures.get("tokens_per_second"), 1)),
        ("wall time", f"{figures.get('seconds') or 0:.1f} s"),
    ]
    if figures.get("sessions", 1) > 1:
        # A resumed run: say which sessions each figure covers.
        every = f"(all {figures['sessions']} sessions)"
        pairs[-2:] = [
            (f"tokens/s {every}", _num(figures.get("tokens_per_second"), 1)),
            (f"wall time {every}", f"{figures.get('seconds') or 0:.1f} s"),
            ("tokens/s (this session)", _num(figures.get("session_tokens_per_second"), 1)),
            ("wall time (this session)", f"{figures.get('session_seconds') or 0:.1f} s"),
        ]
    settings = [f"{key} {metadata[key]}" for key in _SETTINGS if key in metadata]
    if "choice_records" in figures:  # a run of records with choices: its documents are their choices
        pairs[0] = ("records (choices)", f"{_int(figures['choice_records'])} ({_int(figures.get('documents'))})")
    parts = [
        Text("scorecli summary", style="italic"),
        _Figures(pairs),
        *_choices(figures),
        *_comparison(figures),
        _Settings(settings),
    ]
    if figures.get("truncated"):
        parts.append(
            f"[yellow]warning:[/yellow] {figures['truncated']:,} document(s) were longer than --max-length "
            f"{metadata.get('max_length')} and were truncated (see the `truncated` column)"
        )
    if figures.get("unscored_chars"):
        parts.append(
            f"[yellow]warning:[/yellow] {figures['unscored_chars']:,} character(s) of the scored text have no token "
            "(the tokenizer drops them) and were not scored (see the `unscored_chars` column)"
        )
    if figures.get("rejected"):
        parts.append(f"[yellow]warning:[/yellow] {figures['rejected']:,} record(s) were rejected (see errors.jsonl)")
    if figures.get("unscored"):
        parts.append(f"[yellow]note:[/yellow] {figures['unscored']:,} document(s) had no token to score")
    if metadata.get("head", "chunked").startswith("model logits"):
        parts.append(f"[yellow]note:[/yellow] scored with {metadata['head']}")
    for which in ("highest", "lowest"):
        if figures.get(which):
            parts += [Text(), _doc_table(f"{which} perplexity", figures[which])]
    return Group(*parts)


class _Figures:
    """Name/value pairs in two columns of pairs where the console is wide enough, else in one."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        """Show `pairs` in order, down the columns."""
        self.pairs = pairs

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """A borderless grid sized to the width at hand."""
        name_width = max(len(name) for name, _ in self.pairs)
        value_width = max(len(value) for _, value in self.pairs)
        columns = 2 if 2 * (name_width + value_width + 2) + 2 <= options.max_width else 1
        grid = Table.grid(padding=(0, 1))
        for column in range(columns):
            grid.add_column(style="bold", no_wrap=True, min_width=name_width + 1 if column else name_width)
            grid.add_column(justify="right", no_wrap=True, min_width=value_width)
        rows = -(-len(self.pairs) // columns)
        for row in range(rows):
            cells = []
            for column in range(columns):
                i = column * rows + row
                name, value = self.pairs[i] if i < len(self.pairs) else ("", "")
                cells += [(" " if column and name else "") + name, value]
            grid.add_row(*cells)
        yield grid


class _Settings:
    """The run's settings, "key value" pairs filled into lines, a pair broken only where it is wider than a line."""

    def __init__(self, pairs: list[str]) -> None:
        """Show `pairs` in order."""
        self.pairs = pairs

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Dim lines of pairs separated by dots, each line as full as the width allows."""
        lines = [""]
        for pair in self.pairs:
            joined = f"{lines[-1]} · {pair}" if lines[-1] else pair
            if len(joined) <= options.max_width or not lines[-1]:
                lines[-1] = joined
            else:
                lines.append(pair)
        for line in lines:
            yield Text(line, style="dim")


def _comparison(f: dict) -> list:
    """The model against the reference model, as llama-perplexity --kl-divergence shows it (if there is one)."""
    if "mean_kl" not in f:
        return []
    rows = [
        ("PPL(model)", f"{_num(f.get('perplexity'))} ± {_num(f['perplexity_se'])}"),
        ("PPL(ref)", f"{_num(f['ref_perplexity'])} ± {_num(f['ref_perplexity_se'])}"),
        ("ln(PPL(model)/PPL(ref))", f"{_num(f['ln_ppl_ratio'], 5)} ± {_num(f['ln_ppl_ratio_se'], 5)}"),
        ("mean KL(ref‖model)", f"{_num(f['mean_kl'], 6)} ± {_num(f['mean_kl_se'], 6)}"),
        *((f"  KL {percentile_name(q)}", _num(f[f"kl_{percentile_name(q)}"], 6)) for q in KL_PERCENTILES),
        ("mean KL(model‖ref)", f"{_num(f['mean_reverse_kl'], 6)} ± {_num(f['mean_reverse_kl_se'], 6)}"),
        ("mean Δp", f"{_pct_text(f['delta_p_mean'])} ± {_pct_text(f['delta_p_mean_se'])}"),
        ("RMS Δp", f"{_pct_text(f['delta_p_rms'])} ± {_pct_text(f['delta_p_rms_se'])}"),
        *((f"  Δp {percentile_name(q)}", _pct_text(f[f"delta_p_{percentile_name(q)}"])) for q in DELTA_P_PERCENTILES),
        ("same top token", f"{_pct_text(f['same_top'])} ± {_pct_text(f['same_top_se'])}"),
    ]
    return [Text(), Text("model vs reference (± standard errors)", style="italic"), _Figures(rows)]


# A choice run's accuracies, in summary.json's names: ours, and lm-evaluation-harness's where it has one.
_ACCURACIES = (
    ("sum", "sum of log-probs", "acc"),
    ("per_token", "per token", ""),
    ("per_char", "per character", "acc_norm"),
    ("per_byte", "per byte", "acc_bytes"),
    ("pmi", "pmi (minus alone)", "acc_mutual_info"),
)


def _choices(f: dict) -> list:
    """A choice run's accuracy under each normalisation, with its 95% interval and lm-eval's name (if labelled)."""
    if not f.get("labelled_records") and f.get("mean_margin") is None:
        return []
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name, justify in (("choice by", "left"), ("lm-eval", "left"), ("accuracy", "right"), ("95% CI", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    for key, label, lm_eval in _ACCURACIES:
        if f.get(f"accuracy_{key}") is not None:
            interval = f.get(f"accuracy_{key}_ci")
            ci = f"{_pct_text(interval[0])}–{_pct_text(interval[1])}" if interval else "—"
            table.add_row(label, lm_eval, _pct_text(f[f"accuracy_{key}"]), ci)
    title = f"choices: {f['labelled_records']:,} labelled records" if f.get("labelled_records") else "choices"
    parts = [Text(), Text(title, style="italic")]
    if table.rows:
        parts.append(table)
    if f.get("mean_margin") is not None:
        parts.append(_Figures([("mean margin (nats, two choices)", _num(f["mean_margin"]))]))
    return parts


def _fed(figures: dict) -> list[tuple[str, str]]:
    """Tokens fed to the model, and those shared prefixes spared it, where the run counted them."""
    if not figures.get("fed_tokens"):
        return []
    shared = figures.get("shared_tokens") or 0
    return [("tokens fed", _short(figures["fed_tokens"]) + (f" (sharing saved {_short(shared)})" if shared else ""))]


def _short(count: int) -> str:
    """A count in a few characters: 950, 12.3k, 4.5M."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def _pct_text(value: float | None) -> str:
    """A share as a percentage, or a dash where it is undefined."""
    return "—" if value is None else f"{100 * value:.3f}%"


def _doc_table(title: str, docs: list[dict]) -> Table:
    """A table of documents with their perplexity and the start of their scored text, one line each."""
    table = Table(title=title, title_justify="left", title_style="italic", box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("doc", "tokens", "perplexity"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True, max_width=_ID_WIDTH, overflow="ellipsis")
    # The only column that may give way: a narrow console shortens the text (with an ellipsis), never a number.
    table.add_column("scored text", min_width=8)
    for d in docs:
        text = Text(" ".join(d["text"].split()), no_wrap=True, overflow="ellipsis")
        table.add_row(str(d["doc"]), _int(d["tokens"]), _num(d["perplexity"]), d["id"] or "", text)
    return table


def _int(value: int | None) -> str:
    """Format a count, or a dash where there is none."""
    return "—" if value is None else f"{value:,}"


def _ci(name: str, interval: list[float] | None) -> list[tuple[str, str]]:
    """A 95% interval as a name/value pair, or none where the run has none."""
    return [(name, f"{_num(interval[0])}–{_num(interval[1])}")] if interval else []


def _num(value: float | None, digits: int = 3) -> str:
    """Format a figure, or a dash where it is undefined."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"
