"""`scorecli show`: a document's tokens coloured by their scores, through the CLI with colours forced."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import sample_texts
from runfolders import TEXTS, make_run
from typer.testing import CliRunner

from scorecli.cli import app

runner = CliRunner()
COLOURS = {"FORCE_COLOR": "1", "COLORTERM": "truecolor", "COLUMNS": "200"}
STOPS = [(255, 255, 255), (255, 237, 160), (254, 178, 76), (240, 59, 32), (128, 0, 38)]


def _expected_rgb(value, low, high):
    """The documented scale, by hand: clamp to [low, high], then linear between five colour stops."""
    t = min(max((value - low) / (high - low), 0.0), 1.0) * 4
    i = min(int(t), 3)
    f = t - i
    return tuple(round(STOPS[i][c] * (1 - f) + STOPS[i + 1][c] * f) for c in range(3))


def _show(*args):
    return runner.invoke(app, ["show", *map(str, args)], env=COLOURS)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("show") / "plain")


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("show") / "extras", extras=True)


def _styled_tokens(out):
    """(background rgb, text) of each background-coloured span in ANSI output."""
    return [
        (tuple(map(int, m.group(1, 2, 3))), m.group(4))
        for m in re.finditer(r"\x1b\[(?:\d+;)*48;2;(\d+);(\d+);(\d+)m([^\x1b]*)\x1b\[0m", out)
    ]


@pytest.mark.parametrize(
    ("by", "column", "convert", "high"),
    [
        ("surprisal", "logprob", lambda v: -v / math.log(2), 16),
        ("entropy", "entropy", lambda v: v / math.log(2), 8),
    ],
)
def test_tokens_are_coloured_by_their_value(plain, by, column, convert, high):
    result = _show(plain, "--doc", 2, "--by", by)
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(plain / "tokens.parquet")
    rows = tokens[tokens["doc"] == 2]
    spans = _styled_tokens(result.stdout)
    legend, body = spans[:9], spans[9:]
    assert [t.strip() for _, t in legend] == ["0", "2", "4", "6", "8", "10", "12", "14", "16+"][:9] or by == "entropy"
    assert legend[0][0] == (255, 255, 255) and legend[-1][0] == (128, 0, 38)
    # every token, with the characters it covers in the input text, on the colour of its value
    text = TEXTS[2]
    assert [t for _, t in body] == [text[a:b] for a, b in zip(rows["start"], rows["end"])]
    assert "é" in "".join(t for _, t in body)
    for (rgb, _), value in zip(body, rows[column]):
        assert rgb == _expected_rgb(convert(float(value)), 0, high)
    assert len({rgb for rgb, _ in body}) > 3  # the values cover the scale
    assert "perplexity" in result.stdout and f"{math.exp(-rows['logprob'].astype(float).mean()):,.3f}" in result.stdout


def test_by_id_and_by_kl_and_rank_where_the_run_has_them(extras):
    tokens = pd.read_parquet(extras / "tokens.parquet")
    rows = tokens[tokens["doc"] == 1]
    for by, column, convert, high in (
        ("kl", "kl", lambda v: v / math.log(2), 4),
        ("rank", "rank", lambda v: math.log2(v), 12),
    ):
        result = _show(extras, "--id", "d1", "--by", by)
        assert result.exit_code == 0, result.output
        body = _styled_tokens(result.stdout)[9:]
        assert [rgb for rgb, _ in body] == [_expected_rgb(convert(float(v)), 0, high) for v in rows[column]]


def _error(result, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorecli: error: "), result.stderr
    return lines[0]


def test_clear_errors(plain, tmp_path):
    assert "--doc 99: no such document" in _error(_show(plain, "--doc", 99))
    assert "--id 'nope': no document has this id" in _error(_show(plain, "--id", "nope"))
    assert "not scored with a reference model" in _error(_show(plain, "--doc", 0, "--by", "kl"))
    assert "no `rank` column" in _error(_show(plain, "--doc", 0, "--by", "rank"))
    assert "must be one of surprisal, entropy, kl, rank" in _error(_show(plain, "--doc", 0, "--by", "x"))
    assert "exactly one of --doc and --id" in _error(_show(plain))
    assert "no such run folder" in _error(_show(tmp_path / "nope", "--doc", 0), code=5)


def test_show_a_real_run_without_its_input(gpt2_dir, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"text": "A small test of show."}) + "\n")
    assert runner.invoke(app, ["score", str(data), "-m", str(gpt2_dir), "-o", str(tmp_path / "o"), "-q"]).exit_code == 0
    data.unlink()  # the decoded tokens stand in for the text
    result = _show(tmp_path / "o", "--doc", 0)
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(tmp_path / "o" / "tokens.parquet")
    body = _styled_tokens(result.stdout)[9:]
    assert [t for _, t in body] == tokens["token"].tolist()
    expected = [_expected_rgb(-float(v) / math.log(2), 0, 16) for v in tokens["logprob"]]
    assert [rgb for rgb, _ in body] == expected and np.isfinite(tokens["logprob"]).all()


def test_characters_split_across_tokens_show_once(gpt2_dir, tmp_path):
    text = "Le canapé 🎉 est là."
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    assert runner.invoke(app, ["score", str(data), "-m", str(gpt2_dir), "-o", str(tmp_path / "o"), "-q"]).exit_code == 0
    tokens = pd.read_parquet(tmp_path / "o" / "tokens.parquet")
    # the tiny tokenizer splits é and 🎉 into byte tokens: those that only start a character have empty spans
    assert (tokens["start"] == tokens["end"]).any()
    result = _show(tmp_path / "o", "--doc", 0)
    assert result.exit_code == 0, result.output
    body = _styled_tokens(result.stdout)[9:]
    assert "".join(t for _, t in body) == text


def _expected_spans(tokens, text):
    """Where show colours each token in `text`: the characters it covers, a split character with its first token."""
    spans, at = [], 0
    for a, b in zip(tokens["start"], tokens["end"]):
        if b > max(a, at):
            spans.append((max(a, at), b))
        at = max(at, b)
    return spans


def test_a_joined_run_shows_the_joined_text_its_offsets_refer_to(gpt2_dir, tmp_path):
    from scorecli.analysis.show import render_document

    # Accented letters and Japanese (characters the tokenizer splits), then code with newlines.
    parts = (sample_texts()[5:9], sample_texts()[:5])
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path, part in zip(files, parts):
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in part), encoding="utf-8")
    for inputs in (files[:1], files):  # one file, and a corpus of two
        out = tmp_path / f"o{len(inputs)}"
        args = ["score", *map(str, inputs), "-m", str(gpt2_dir), "--join", r"\n\n", "-o", str(out), "-q"]
        assert runner.invoke(app, args).exit_code == 0
        expected = "\n\n".join([t for part in parts[: len(inputs)] for t in part])  # what --join '\n\n' scores
        tokens = pd.read_parquet(out / "tokens.parquet")
        # The offsets index the joined text: each token covers the characters it decodes to.
        whole = [(a, b, t) for a, b, t in zip(tokens["start"], tokens["end"], tokens["token"]) if "\ufffd" not in t]
        assert [expected[a:b] for a, b, _ in whole] == [t for _, _, t in whole] and len(whole) > len(tokens) / 2
        assert tokens["end"].max() == len(expected) and "\ufffd" in "".join(tokens["token"])  # split characters
        text = render_document(out, doc=0).renderables[-1]
        assert text.plain == expected
        assert [(s.start, s.end) for s in text.spans if " on #" in str(s.style)] == _expected_spans(tokens, expected)
        result = runner.invoke(app, ["show", str(out), "--doc", "0"], env={"COLUMNS": "1000"})
        assert result.exit_code == 0 and expected in result.stdout, result.output
