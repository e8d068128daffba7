"""The analysis of choice runs (open_run, compare, report, show, summary, filter) against the runs' Parquet files."""

import html
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES, one_line_error
from typer.testing import CliRunner

import scorecli
from scorecli.base.errors import OutputError
from scorecli.cli import app

runner = CliRunner()
MC = ["--prompt-field", "question", "--choices-field", "choices", "--label-field", "label"]
PAIRS = ["--choices-field", "sentence_good,sentence_bad"]
LABELLED = ["sum", "per_token", "per_char", "per_byte"]  # the normalisations of both multiple-choice runs


@pytest.fixture(scope="module")
def runs(gpt2_dir, gpt2_ref_dir, tmp_path_factory):
    """Choice runs of two tiny GPT-2s (same tokenizer, other weights): multiple choice with labels (a with
    --unconditional, ref with the other as reference model), minimal pairs without; and a plain run."""
    root = tmp_path_factory.mktemp("choice-runs")
    for name in ("choices.jsonl", "minimal_pairs.jsonl", "mixed.jsonl"):
        shutil.copy(SAMPLES / name, root / name)
    plan = {
        "a": ("choices.jsonl", gpt2_dir, [*MC, "--unconditional"]),
        "b": ("choices.jsonl", gpt2_ref_dir, MC),
        "pa": ("minimal_pairs.jsonl", gpt2_dir, PAIRS),
        "pb": ("minimal_pairs.jsonl", gpt2_ref_dir, PAIRS),
        "plain": ("mixed.jsonl", gpt2_dir, []),
        "ref": ("choices.jsonl", gpt2_dir, [*MC, "--ref-model", str(gpt2_ref_dir)]),
    }
    out = {"root": root}
    for name, (data, model, extra) in plan.items():
        out[name] = root / name
        args = ["score", str(root / data), "-m", str(model), "-o", str(out[name]), "-q", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return out


def _seq(run):
    return pd.read_parquet(run / "sequences.parquet")


def _right(seq, name):
    """Whether each labelled record is right under a normalisation (a missing verdict: wrong)."""
    labelled = seq[seq["label"].notna()]
    return labelled[f"correct_{name}"].fillna(False).astype(bool).to_numpy()


def _questions():
    """The multiple-choice sample's records, each label as the index of its choice (the file gives some as text)."""
    with open(SAMPLES / "choices.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for q in rows:
        q["label"] = q["choices"].index(q["label"]) if isinstance(q["label"], str) else q["label"]
    return rows


def test_open_run_reads_a_choice_run_in_either_layout(runs, tmp_path):
    run = scorecli.open_run(runs["a"])
    assert run.is_choice_run and not scorecli.open_run(runs["plain"]).is_choice_run
    assert scorecli.open_run(runs["plain"]).choices is None
    expected = pd.read_parquet(runs["a"] / "choices.parquet")
    assert run.choices.to_pandas().equals(expected) and len(expected) == 4 * len(_seq(runs["a"]))
    texts = run.choice_texts([0, 2])
    for doc in (0, 2):
        q = _questions()[doc]
        assert texts[doc].context == q["question"] and texts[doc].choices == q["choices"]
        assert texts[doc].texts == [q["question"] + c for c in q["choices"]]
    pair = scorecli.open_run(runs["pa"]).choice_texts([1])[1]  # no context: each choice scored from BOS alone
    with open(SAMPLES / "minimal_pairs.jsonl", encoding="utf-8") as f:
        row = [json.loads(line) for line in f if line.strip()][1]
    assert pair.context == "" and pair.texts == pair.choices == [row["sentence_good"], row["sentence_bad"]]
    # The --ray layout: each result a folder of shard files, read as one table.
    ray = tmp_path / "ray"
    ray.mkdir()
    for kind in ("tokens", "sequences", "choices"):
        table = pq.read_table(runs["a"] / f"{kind}.parquet")
        (ray / kind).mkdir()
        docs = table.column("doc").to_numpy()
        pq.write_table(table.filter(docs < 3), ray / kind / "00000.parquet")
        pq.write_table(table.filter(docs >= 3), ray / kind / "00001.parquet")
    shutil.copy(runs["a"] / "summary.json", ray / "summary.json")
    opened = scorecli.open_run(ray)
    assert opened.is_choice_run and opened.choices.to_pandas().equals(expected)
    s = json.loads(runner.invoke(app, ["compare", str(runs["a"]), str(ray), "--json"]).stdout)
    assert s["changed_records"] == 0 and all(s[f"accuracy_{n}"]["delta"] == 0 for n in s["normalisations"])
    shutil.rmtree(ray / "choices")
    with pytest.raises(OutputError, match="choices.parquet: is missing"):
        assert opened.choices is None


def test_compare_paired_accuracy_difference_and_interval_by_hand(runs, tmp_path):
    out = tmp_path / "cmp.parquet"
    result = runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    a, b = _seq(runs["a"]), _seq(runs["b"])
    assert s["kind"] == "choices" and s["normalisations"] == LABELLED  # pmi: only A has it
    assert s["records"] == len(a) and s["labelled_records"] == a["label"].notna().sum()
    n = s["labelled_records"]
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, n, size=n) for _ in range(1000)]
    for name in LABELLED:
        ra, rb = _right(a, name), _right(b, name)
        f = s[f"accuracy_{name}"]
        assert f["a"] == pytest.approx(ra.mean()) and f["b"] == pytest.approx(rb.mean())
        assert f["delta"] == pytest.approx(rb.mean() - ra.mean())
        assert (f["right_only_a"], f["right_only_b"]) == ((ra & ~rb).sum(), (rb & ~ra).sum())
        deltas = [rb[i].mean() - ra[i].mean() for i in draws]
        assert f["delta_ci"] == pytest.approx(np.quantile(deltas, [0.025, 0.975]).tolist())
        assert f["a_ci"] == pytest.approx(np.quantile([ra[i].mean() for i in draws], [0.025, 0.975]).tolist())
        # Each run's own interval (summary.json) is the same bootstrap of the same records.
        own = json.loads((runs["b"] / "summary.json").read_text())["summary"]
        assert f["b_ci"] == pytest.approx(own[f"accuracy_{name}_ci"]) and f["b"] == pytest.approx(
            own[f"accuracy_{name}"]
        )
        assert f["agreement"] == pytest.approx((a[f"predicted_{name}"] == b[f"predicted_{name}"]).mean())
    assert s["accuracy_sum"]["lm_eval"] == "acc" and s["accuracy_per_char"]["lm_eval"] == "acc_norm"

    # The changed verdicts: right under some normalisation in one run and wrong in the other.
    moved = {int(doc): [n for n in LABELLED if _right(a, n)[i] != _right(b, n)[i]] for i, doc in enumerate(a["doc"])}
    moved = {doc: names for doc, names in moved.items() if names}
    assert moved, "the two tiny models must disagree somewhere for this test to check anything"
    assert {r["doc"]: list(r["changes"]) for r in s["changed"]} == moved and s["changed_records"] == len(moved)
    questions = _questions()
    for r in s["changed"]:
        q = questions[r["doc"]]
        assert r["id"] == q["id"] and r["label"] == q["label"] and r["choices"] == q["choices"]
        assert r["context"] == " ".join(q["question"].split())
        for name, change in r["changes"].items():
            row_a, row_b = a[a["doc"] == r["doc"]].iloc[0], b[b["doc"] == r["doc"]].iloc[0]
            assert (
                change["predicted_a"] == row_a[f"predicted_{name}"] and change["correct_b"] == row_b[f"correct_{name}"]
            )

    table = pd.read_parquet(out)
    assert table["doc"].tolist() == a["doc"].tolist() and table["changed"].tolist() == [d in moved for d in a["doc"]]
    for name in LABELLED:
        assert table[f"predicted_{name}_b"].tolist() == b[f"predicted_{name}"].tolist()
    assert np.allclose(table["margin_a"], a["margin"]) and np.allclose(table["margin_b"], b["margin"])
    assert json.loads(pq.read_schema(out).metadata[b"scorecli_compare"]) == s

    shown = runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"])])
    assert shown.exit_code == 0, shown.output
    words = " ".join(shown.stdout.split())
    delta = s["accuracy_sum"]["delta"]
    assert f"{100 * delta:+.1f} pts" in words and "verdict changed" in words
    assert all(questions[d]["id"] in words for d in moved)


def test_compare_without_labels_lists_the_changed_predictions(runs):
    s = json.loads(runner.invoke(app, ["compare", str(runs["pa"]), str(runs["pb"]), "--json"]).stdout)
    a, b = _seq(runs["pa"]), _seq(runs["pb"])
    assert s["labelled_records"] == 0 and s["accuracy_sum"]["a"] is None and s["accuracy_sum"]["delta_ci"] is None
    moved = {}
    for i, doc in enumerate(a["doc"]):
        names = [n for n in LABELLED if a[f"predicted_{n}"][i] != b[f"predicted_{n}"][i]]
        if names:
            moved[int(doc)] = names
    assert moved and {r["doc"]: list(r["changes"]) for r in s["changed"]} == moved
    for name in LABELLED:
        assert s[f"accuracy_{name}"]["agreement"] == pytest.approx(
            (a[f"predicted_{name}"] == b[f"predicted_{name}"]).mean()
        )
    r = s["changed"][0]
    assert r["label"] is None and r["context"] == "" and len(r["choices"]) == 2


def test_compare_refuses_runs_it_cannot_pair(runs, gpt2_dir, tmp_path):
    line = one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(runs["plain"])]), 2)
    assert "is a run of records with choices" in line and str(runs["plain"]) in line
    line = one_line_error(runner.invoke(app, ["compare", str(runs["plain"]), str(runs["pa"])]), 2)
    assert f"{runs['pa']} is a run of records with choices and {runs['plain']} is not" in line
    line = one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(runs["pa"])]), 2)
    assert "choice runs of different inputs ('choices.jsonl' and 'minimal_pairs.jsonl')" in line
    unlabelled = tmp_path / "unlabelled"
    args = ["score", str(runs["root"] / "choices.jsonl"), "-m", str(gpt2_dir), "-o", str(unlabelled), "-q"]
    assert runner.invoke(app, [*args, *MC[:4]]).exit_code == 0
    line = one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(unlabelled)]), 2)
    assert "took their choices from other fields (label_field 'label' and None)" in line
    # As a subprocess: one line on stderr, exit code 2.
    done = subprocess.run(
        [sys.executable, "-m", "scorecli", "compare", str(runs["plain"]), str(runs["b"])],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "is a run of records with choices" in done.stderr


def _cells(page, table_class):
    """The rows of an HTML table of the page, as lists of cell texts."""
    body = re.search(rf"<table class='{table_class}'>(.*?)</table>", page, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)] for row in rows][1:]


def test_report_of_two_choice_runs(runs, tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(runs["a"]), "--compare", str(runs["b"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "data-chart='choice-accuracy'" in page.replace('"', "'") and "doc-perplexity" not in page
    a, b = _seq(runs["a"]), _seq(runs["b"])
    accuracy = _cells(page, "accuracy")
    assert [r[0] for r in accuracy] == [*LABELLED, "pmi"]
    own = json.loads((runs["a"] / "summary.json").read_text())["summary"]
    for name, _, value, ci in accuracy:
        assert value == f"{_right(a, name).mean():.4f}"
        low, high = own[f"accuracy_{name}_ci"]
        assert ci == f"{low:.4f} – {high:.4f}"
    # Both runs' bars, with their intervals as whiskers.
    bars = re.findall(r'"name":"([AB]): [^"]*",[^}]*?"y":\[([^\]]*)\]', page)
    assert [k for k, _ in bars] == ["A", "B"]
    for (_, ys), seq in zip(bars, (a, b)):
        assert [float(y) for y in ys.split(",")] == pytest.approx([_right(seq, n).mean() for n in LABELLED])

    # The closest calls: the records by |margin|, each choice's scores and tokens.
    order = a.assign(m=a["margin"].abs()).sort_values("m", kind="stable")["doc"].tolist()[:10]
    calls = re.findall(r"<div class='call' data-doc='(\d+)'>(.*?)</table></div>", page, re.S)
    assert [int(d) for d, _ in calls] == order
    choices = pd.read_parquet(runs["a"] / "choices.parquet")
    tokens = pd.read_parquet(runs["a"] / "tokens.parquet")
    questions = _questions()
    for doc, block in calls:
        doc = int(doc)
        assert f"margin {a['margin'][doc]:+.4f} nats" in block
        assert html.escape(questions[doc]["question"], quote=False) in block
        mine = choices[choices["doc"] == doc]
        rows = _cells(block + "</table>", "choices")
        assert [r[3] for r in rows] == [f"{v:,.4f}" for v in mine["sum_logprob"]]
        assert [r[-2] for r in rows] == [f"{v:,.4f}" for v in mine["pmi"]]
        assert [("label" in r[1]) for r in rows] == [i == questions[doc]["label"] for i in mine["choice"]]
        payloads = re.findall(r"data-doc='([^']*)'", block)
        for choice, data in enumerate(payloads):
            p = json.loads(html.unescape(data))
            rows = tokens[(tokens["doc"] == doc) & (tokens["choice"] == choice)]
            assert "".join(p["text"]) == questions[doc]["choices"][choice]
            assert p["logprob"] == pytest.approx(rows["logprob"].tolist(), abs=1e-5)

    compared = json.loads(runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--json"]).stdout)
    cells = _cells(page, "choice-compare")
    assert [r[0] for r in cells] == LABELLED
    for name, va, vb, delta, ci, _ in cells:
        f = compared[f"accuracy_{name}"]
        assert (va, vb, delta) == (f"{f['a']:.4f}", f"{f['b']:.4f}", f"{f['delta']:+.4f}")
        assert ci == f"{f['delta_ci'][0]:.4f} – {f['delta_ci'][1]:.4f}"
    assert [int(r[0]) for r in _cells(page, "changed")] == [r["doc"] for r in compared["changed"]]


def test_report_of_unlabelled_choices_and_refusals(runs, tmp_path):
    out = tmp_path / "p.html"
    assert runner.invoke(app, ["report", str(runs["pa"]), "-o", str(out)]).exit_code == 0
    page = out.read_text()
    assert "No record has a label: no accuracy" in page and "choice-accuracy" not in page
    assert "Closest calls" in page and "label —" in page
    line = one_line_error(runner.invoke(app, ["report", str(runs["pa"]), "--compare", str(runs["plain"])]), 2)
    assert "is a run of records with choices" in line


def test_show_summary_and_filter_of_a_choice_run(runs, monkeypatch, tmp_path):
    result = runner.invoke(app, ["show", str(runs["a"]), "--doc", "2"])
    assert result.exit_code == 0, result.output
    q, seq = _questions()[2], _seq(runs["a"])
    mine = pd.read_parquet(runs["a"] / "choices.parquet").query("doc == 2")
    words = " ".join(result.stdout.split())
    assert " ".join(q["question"].split()) in words
    for c, text, total in zip(mine["choice"], mine["text"], mine["sum_logprob"]):
        assert f"choice {c}" in words and f"sum {total:.4f}" in words and text.strip() in words
    assert f"predicted (sum) │ {seq['predicted_sum'][2]}" in words and f"{seq['margin'][2]:+.4f}" in words
    # Without the input at hand: the tokens as decoded, no context.
    monkeypatch.setattr(scorecli.runfolder.rundocs.FinishedRun, "choice_texts", lambda self, docs: {})
    result = runner.invoke(app, ["show", str(runs["pa"]), "--id", "mp1"])
    assert result.exit_code == 0, result.output
    assert "sentence_good" in result.stdout and "(sentence_bad)" in result.stdout
    assert runner.invoke(app, ["summary", str(runs["a"])]).exit_code == 0
    args = ["filter", str(runs["root"] / "choices.jsonl"), "--scores", str(runs["a"]), "--max-perplexity", "5"]
    line = one_line_error(runner.invoke(app, [*args, "-o", str(tmp_path / "kept.jsonl")]), 2)
    assert line.startswith(f"scorecli: error: --scores: {runs['a']} scored records with choices")
    assert line.endswith("not perplexities to filter by") and not (tmp_path / "kept.jsonl").exists()


def test_show_and_report_give_a_reference_models_sums(runs, tmp_path):
    choices = pd.read_parquet(runs["ref"] / "choices.parquet")
    result = runner.invoke(app, ["show", str(runs["ref"]), "--doc", "1"])
    assert result.exit_code == 0, result.output
    words = " ".join(result.stdout.split())
    for _, c in choices[choices["doc"] == 1].iterrows():
        assert f"ref sum {c['ref_sum_logprob']:.4f} · log-ratio {c['log_ratio']:.4f}" in words
    out = tmp_path / "ref.html"
    assert runner.invoke(app, ["report", str(runs["ref"]), "-o", str(out)]).exit_code == 0
    page = out.read_text()
    calls = re.findall(r"<div class='call' data-doc='(\d+)'>(.*?)</table></div>", page, re.S)
    assert len(calls) == min(10, choices["doc"].nunique())
    for doc, block in calls:
        rows = _cells(block + "</table>", "choices")
        mine = choices[choices["doc"] == int(doc)]
        assert [r[-3:-1] for r in rows] == [
            [f"{x:,.4f}", f"{y:,.4f}"] for x, y in zip(mine["ref_sum_logprob"], mine["log_ratio"])
        ]
