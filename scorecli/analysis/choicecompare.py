"""Compare two choice runs of the same input: paired accuracy differences with bootstrap intervals, changed verdicts.

`scorecli compare` of two runs of records with choices (`--choices-field`) comes here (analysis/compare.py). Under each
normalisation both runs predict with, the accuracy of each over the labelled records and the difference
B − A, with a paired percentile bootstrap interval (the same resampled records for both runs); and the records
whose verdict changed: right in one run and wrong in the other, or, for a record without a label, another
choice predicted. Needs numpy, pyarrow and rich, not torch.

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from scorecli.analysis.bootstrap import DocSums, percentile_interval, resample_sums
from scorecli.base.errors import UsageError
from scorecli.data.choices import NORMALISATIONS
from scorecli.runfolder.layout import CHOICES_FILE, SEQUENCES_FILE
from scorecli.runfolder.rundocs import FinishedRun

CHANGES_SHOWN = 20  # changed verdicts the terminal lists; --json and --out hold them all
# What must be the same for two choice runs to be compared: the same records, context, choices and labels.
_SAME_FIELDS = ("choices_field", "prompt_field", "messages_field", "label_field")


def check_comparable(a: FinishedRun, b: FinishedRun) -> None:
    """UsageError where two runs are not both choice runs, or are choice runs of other inputs, fields or choices."""
    if a.is_choice_run != b.is_choice_run:
        choice, plain = (a, b) if a.is_choice_run else (b, a)
        raise UsageError(
            f"{choice} is a run of records with choices and {plain} is not: compare compares runs of one kind"
        )
    meta_a, meta_b = a.metadata, b.metadata
    was, now = Path(meta_a.get("input") or "").name, Path(meta_b.get("input") or "").name
    if (was, meta_a.get("input_size")) != (now, meta_b.get("input_size")):
        raise UsageError(f"{a} and {b} are choice runs of different inputs ({was!r} and {now!r})")
    for key in _SAME_FIELDS:
        was, now = _field(meta_a, key), _field(meta_b, key)
        if was != now:
            raise UsageError(f"{a} and {b} took their choices from other fields ({key} {was!r} and {now!r})")


def _field(meta: dict[str, str], key: str) -> str | None:
    """A field option as the run's metadata records it, None where it was not given."""
    value = meta.get(key)
    return None if value in (None, "None") else value


def compare_choice_runs(a: FinishedRun, b: FinishedRun, resamples: int, seed: int) -> tuple[pa.Table, dict]:
    """The per-record table and the summary of choice run B against choice run A (check_comparable's runs)."""
    check_comparable(a, b)
    seq_a, seq_b = a.read(SEQUENCES_FILE), b.read(SEQUENCES_FILE)
    for col in ("doc", "id", "n_choices", "label"):
        if not seq_a.column(col).equals(seq_b.column(col)):
            raise UsageError(f"{a} and {b} hold different records (their '{col}' columns differ)")
    keys = ["doc", "choice", "text"]
    if not a.read(CHOICES_FILE, columns=keys).equals(b.read(CHOICES_FILE, columns=keys)):
        raise UsageError(f"{a} and {b} hold different choices (their choices.parquet 'text' columns differ)")
    names = [n for n in NORMALISATIONS if f"correct_{n}" in seq_a.column_names and f"correct_{n}" in seq_b.column_names]
    table = _per_record(seq_a, seq_b, names)
    meta_a, meta_b = a.metadata, b.metadata
    summary = {
        "kind": "choices",
        "a": str(a),
        "b": str(b),
        "model_a": meta_a.get("model"),
        "model_b": meta_b.get("model"),
        "dtype_a": meta_a.get("dtype"),
        "dtype_b": meta_b.get("dtype"),
        "records": seq_a.num_rows,
        "normalisations": names,
        **_paired_accuracies(table, names, resamples, seed),
    }
    summary.update(_changes(table, names, a))
    return table, summary


def _per_record(seq_a: pa.Table, seq_b: pa.Table, names: list[str]) -> pa.Table:
    """A row per record: each run's prediction and verdict under each normalisation, the margins, whether it changed."""
    columns = {c: seq_a.column(c) for c in ("doc", "id", "n_choices", "label")}
    changed = np.zeros(seq_a.num_rows, dtype=bool)
    labelled = seq_a.column("label").is_valid().to_numpy(zero_copy_only=False)
    for n in names:
        for run, seq in (("a", seq_a), ("b", seq_b)):
            columns[f"predicted_{n}_{run}"] = seq.column(f"predicted_{n}")
        for run, seq in (("a", seq_a), ("b", seq_b)):
            columns[f"correct_{n}_{run}"] = seq.column(f"correct_{n}")
        # A record none of whose choices has a score counts as wrong, as in the run's own accuracy.
        right_a, right_b = (_right(seq, n) for seq in (seq_a, seq_b))
        pred_a, pred_b = (seq.column(f"predicted_{n}").to_numpy(zero_copy_only=False) for seq in (seq_a, seq_b))
        moved = ~((pred_a == pred_b) | (np.isnan(pred_a.astype(float)) & np.isnan(pred_b.astype(float))))
        changed |= np.where(labelled, right_a != right_b, moved)
    columns["margin_a"], columns["margin_b"] = seq_a.column("margin"), seq_b.column("margin")
    columns["changed"] = pa.array(changed)
    return pa.table(columns)


def _right(seq: pa.Table, name: str) -> np.ndarray:
    """Whether each record is right under a normalisation, a missing verdict as wrong."""
    return pc.fill_null(seq.column(f"correct_{name}"), False).to_numpy(zero_copy_only=False).astype(bool)


def _paired_accuracies(table: pa.Table, names: list[str], resamples: int, seed: int) -> dict:
    """Each run's accuracy and the difference B − A under each normalisation, with paired bootstrap intervals."""
    labelled = table.filter(pc.is_valid(table.column("label")))
    k = len(names)
    rows = np.ones((labelled.num_rows, 2 * k + 1))
    for j, n in enumerate(names):
        for side, run in enumerate(("a", "b")):
            right = pc.fill_null(labelled.column(f"correct_{n}_{run}"), False).to_numpy(zero_copy_only=False)
            rows[:, side * k + j] = right
    sums = DocSums(2 * k + 1)
    sums.add(labelled.column("doc").to_numpy(), rows)
    units = sums.units()
    total = units.sum(axis=0)
    resampled = resample_sums(units, resamples, seed) if len(units) >= 2 else None
    figures: dict = {"labelled_records": labelled.num_rows}
    for j, n in enumerate(names):
        pred_a, pred_b = (table.column(f"predicted_{n}_{run}").to_pylist() for run in ("a", "b"))
        agreement = sum(x == y for x, y in zip(pred_a, pred_b)) / len(pred_a) if pred_a else None
        right_a, right_b = rows[:, j].astype(bool), rows[:, k + j].astype(bool)
        figures[f"accuracy_{n}"] = {
            "lm_eval": NORMALISATIONS[n][1],
            **_accuracy(total, resampled, j, k),
            "right_only_a": int((right_a & ~right_b).sum()),
            "right_only_b": int((right_b & ~right_a).sum()),
            "agreement": agreement,
        }
    figures.update({"bootstrap_resamples": resamples, "bootstrap_seed": seed, "bootstrap_units": _units_name(sums)})
    return figures


def _accuracy(total: np.ndarray, resampled: np.ndarray | None, j: int, k: int) -> dict:
    """One normalisation's accuracy in each run and their difference, with intervals where there are resamples."""
    n = total[-1]
    if not n:
        return {"a": None, "b": None, "delta": None, "a_ci": None, "b_ci": None, "delta_ci": None}
    out = {"a": total[j] / n, "b": total[k + j] / n, "delta": (total[k + j] - total[j]) / n}
    out.update(a_ci=None, b_ci=None, delta_ci=None)
    if resampled is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            count = resampled[:, -1]
            out["a_ci"] = percentile_interval(resampled[:, j] / count)
            out["b_ci"] = percentile_interval(resampled[:, k + j] / count)
            out["delta_ci"] = percentile_interval((resampled[:, k + j] - resampled[:, j]) / count)
    return {key: (float(v) if isinstance(v, np.floating) else v) for key, v in out.items()}


def _units_name(sums: DocSums) -> str:
    """What the bootstrap resampled, in words."""
    return "buckets of records" if sums.bucketed else "records"


def _changes(table: pa.Table, names: list[str], a: FinishedRun) -> dict:
    """The records whose verdict changed: under which normalisations, each run's prediction, the choices' texts."""
    changed = table.filter(table.column("changed"))
    docs = changed.column("doc").to_pylist()
    choices = a.read(CHOICES_FILE, columns=["doc", "choice", "text"], filters=[("doc", "in", docs)]) if docs else None
    texts: dict[int, list[str]] = {}
    if choices is not None:
        for doc, text in zip(choices.column("doc").to_pylist(), choices.column("text").to_pylist()):
            texts.setdefault(doc, []).append(text)
    contexts = a.choice_texts(docs)
    out = []
    for row in changed.to_pylist():
        moves = {}
        for n in names:
            pa_, pb = row[f"predicted_{n}_a"], row[f"predicted_{n}_b"]
            ca, cb = row[f"correct_{n}_a"], row[f"correct_{n}_b"]
            if (row["label"] is not None and bool(ca) != bool(cb)) or (row["label"] is None and pa_ != pb):
                moves[n] = {"predicted_a": pa_, "predicted_b": pb, "correct_a": ca, "correct_b": cb}
        context = contexts[row["doc"]].context if row["doc"] in contexts else ""
        out.append(
            {
                "doc": row["doc"],
                "id": row["id"],
                "label": row["label"],
                "changes": moves,
                "choices": texts.get(row["doc"], []),
                "context": " ".join(context.split()),
                "margin_a": row["margin_a"],
                "margin_b": row["margin_b"],
            }
        )
    return {"changed_records": len(out), "changed": out}


def render_choice_comparison(s: dict) -> Group:
    """A Rich renderable: accuracies of A and B and their difference with its interval, then the changed verdicts."""
    figures = Table(title="scorecli compare: choices", title_justify="left")
    for name in ("normalisation", "lm-eval", "A", "B", "B − A", "95% CI", "agree"):
        figures.add_column(name, justify="left" if name in ("normalisation", "lm-eval") else "right")
    for n in s["normalisations"]:
        f = s[f"accuracy_{n}"]
        ci = f["delta_ci"]
        figures.add_row(
            n,
            f["lm_eval"] or "",
            _pct(f["a"]),
            _pct(f["b"]),
            "—" if f["delta"] is None else f"{100 * f['delta']:+.1f} pts",
            "—" if not ci else f"{100 * ci[0]:+.1f} – {100 * ci[1]:+.1f}",
            _pct(f["agreement"]),
        )
    parts: list = [figures]
    for key in ("a", "b"):
        parts.append(
            f"{key.upper()}: {escape(s[key])} [dim](model {escape(str(s['model_' + key]))}, {s['dtype_' + key]})[/dim]"
        )
    parts.append(
        f"records: {s['records']:,} ({s['labelled_records']:,} with a label); accuracy over the labelled records; "
        f"paired bootstrap over {s['bootstrap_units']}, {s['bootstrap_resamples']:,} resamples; "
        f"verdict changed on {s['changed_records']:,}"
    )
    if s["changed"]:
        parts.append(_changes_table(s["changed"][:CHANGES_SHOWN]))
        if s["changed_records"] > CHANGES_SHOWN:
            parts.append(f"[dim]… and {s['changed_records'] - CHANGES_SHOWN:,} more (all of them: --json, --out)[/dim]")
    return Group(*parts)


def _changes_table(changed: list[dict]) -> Table:
    """The records whose verdict changed: each run's choice under each normalisation that changed."""
    table = Table(
        title="verdict changed (A, B: under the first normalisation listed; ✓ right, ✗ wrong)", title_justify="left"
    )
    for name in ("doc", "id", "normalisations", "A", "B", "label", "context"):
        table.add_column(name, justify="right" if name == "doc" else "left")
    for r in changed:
        first = next(iter(r["changes"].values()))
        table.add_row(
            str(r["doc"]),
            escape(r["id"] or ""),
            ", ".join(r["changes"]),
            escape(_choice(r, first["predicted_a"], first["correct_a"])),
            escape(_choice(r, first["predicted_b"], first["correct_b"])),
            "—" if r["label"] is None else escape(_choice(r, r["label"], None)),
            escape(_short(r["context"], 40)),
        )
    return table


def _choice(r: dict, index: int | None, correct: bool | None) -> str:
    """A choice as its index and the start of its text, with a tick or cross where there is a verdict."""
    if index is None:
        return "—"
    mark = "" if correct is None else (" ✓" if correct else " ✗")
    text = r["choices"][index] if index < len(r["choices"]) else ""
    return f"{index}: {_short(text.strip(), 24)}{mark}"


def _short(text: str, chars: int) -> str:
    """One line, cut with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _pct(share: float | None) -> str:
    """A share as a percentage."""
    return "—" if share is None else f"{100 * share:.1f}%"
