import gzip
import json

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLES, one_line_error
from typer.testing import CliRunner

from scorecli.base.errors import InputError, UsageError
from scorecli.cli import app
from scorecli.inputs.corpus import corpus_metadata, decode_separator, expand_inputs, read_corpus
from scorecli.inputs.records import Fields
from scorecli.runfolder.outputs import read_metadata

runner = CliRunner()


def _rows(name="mixed.jsonl"):
    with open(SAMPLES / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _corpus(folder):
    """A folder of four kinds of file (and one that is not read), with the records each holds, in name order."""
    rows = _rows()
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + "\n", encoding="utf-8")
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[3:5])
    pq.write_table(pa.Table.from_pylist(rows[5:9]), folder / "c.parquet")
    (folder / "d.txt").write_text("A whole book,\n\non two lines.", encoding="utf-8")
    (folder / "notes.csv").write_text("not,a,corpus\n", encoding="utf-8")
    expected = [(r["id"], r["text"]) for r in rows[:9]] + [("d.txt", "A whole book,\n\non two lines.")]
    return expected


def _records(records):
    return [(r.doc, r.id, r.text) for r in records]


def test_a_folder_is_read_as_one_corpus_in_name_order(tmp_path):
    expected = _corpus(tmp_path / "data")
    sources = expand_inputs([str(tmp_path / "data")])
    assert [s.rsplit("/", 1)[1] for s in sources] == ["a.jsonl", "b.jsonl.gz", "c.parquet", "d.txt"]
    got = _records(read_corpus(sources, Fields()))
    assert got == [(i, doc_id, text) for i, (doc_id, text) in enumerate(expected)]


def test_globs_and_several_paths_keep_the_order_given(tmp_path):
    _corpus(tmp_path / "data")
    d = tmp_path / "data"
    assert expand_inputs([str(d / "*.jsonl*")]) == [str(d / "a.jsonl"), str(d / "b.jsonl.gz")]
    assert expand_inputs([str(d / "d.txt"), str(d / "a.jsonl")]) == [str(d / "d.txt"), str(d / "a.jsonl")]
    with pytest.raises(InputError, match="no files match"):
        expand_inputs([str(d / "*.json")])
    with pytest.raises(UsageError):
        expand_inputs(["-", str(d / "a.jsonl")])


@pytest.mark.parametrize("skip", range(11))
def test_skipping_for_resume_crosses_file_boundaries(tmp_path, skip):
    expected = _corpus(tmp_path / "data")
    sources = expand_inputs([str(tmp_path / "data")])
    got = _records(read_corpus(sources, Fields(), skip=skip))
    assert got == [(i, doc_id, text) for i, (doc_id, text) in enumerate(expected)][skip:]


def test_rejected_records_are_numbered_across_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": 5}\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "two"}\nnot json\n{"text": "three"}\n', encoding="utf-8")
    (tmp_path / "c.txt").write_bytes(b"bad \xff byte")
    (tmp_path / "d.jsonl").write_text('{"text": "four"}\n', encoding="utf-8")
    rejects = []
    got = _records(read_corpus(expand_inputs([str(tmp_path)]), Fields(), on_error=rejects.append))
    assert [(d, t) for d, _, t in got] == [(0, "one"), (2, "two"), (4, "three"), (6, "four")]
    assert [(r.doc, r.source.rsplit("/", 1)[1], r.line) for r in rejects] == [
        (1, "a.jsonl", 2),
        (3, "b.jsonl", 2),
        (5, "c.txt", 1),
    ]


def test_metadata_lists_every_file_with_size_and_time(tmp_path):
    _corpus(tmp_path / "data")
    sources = expand_inputs([str(tmp_path / "data")])
    meta = corpus_metadata(sources)
    assert json.loads(meta["input"]) == sources
    assert json.loads(meta["input_size"]) == [(tmp_path / "data" / s).stat().st_size for s in sources]
    assert json.loads(meta["input_mtime_ns"]) == [(tmp_path / "data" / s).stat().st_mtime_ns for s in sources]
    one = corpus_metadata(sources[:1])
    assert one["input"] == sources[0] and one["input_size"] == str((tmp_path / "data" / "a.jsonl").stat().st_size)


def test_memory_and_file_urls_read_like_local_files(tmp_path):
    expected = _corpus(tmp_path / "data")
    fs = fsspec.filesystem("memory")
    for path in sorted((tmp_path / "data").iterdir()):
        fs.pipe(f"/corpus-test/{path.name}", path.read_bytes())
    for url in ("memory://corpus-test", "memory://corpus-test/[a-d].*", f"file://{tmp_path / 'data'}"):
        sources = expand_inputs([url])
        assert len(sources) == 4 and all("://" in s for s in sources), sources
        assert _records(read_corpus(sources, Fields())) == [(i, d, t) for i, (d, t) in enumerate(expected)]
        assert _records(read_corpus(sources, Fields(), skip=4)) == [(i, d, t) for i, (d, t) in enumerate(expected)][4:]
    assert json.loads(corpus_metadata(expand_inputs(["memory://corpus-test"]))["input_size"])[0] == len(
        (tmp_path / "data" / "a.jsonl").read_bytes()
    )
    with pytest.raises(InputError, match="memory://corpus-test/nothing.jsonl: no such file"):
        list(read_corpus(["memory://corpus-test/nothing.jsonl"], Fields()))


def test_join_decodes_escapes_and_makes_one_document(tmp_path):
    assert decode_separator(r"\n\n") == "\n\n" and decode_separator(r"\t—") == "\t—"
    rows = _rows()
    [joined] = read_corpus([str(SAMPLES / "mixed.jsonl")], Fields(), join="\n\n")
    assert joined.doc == 0 and joined.text == "\n\n".join(r["text"] for r in rows)
    assert list(read_corpus([str(SAMPLES / "mixed.jsonl")], Fields(), join="\n\n", skip=1)) == []


def test_cli_scores_a_folder_like_the_concatenated_file(gpt2_dir, tmp_path):
    expected = _corpus(tmp_path / "data")
    single = tmp_path / "all.jsonl"
    single.write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in expected), encoding="utf-8")
    common = ["--model", str(gpt2_dir), "--batch-tokens", "300", "-q"]
    for args, out in (([str(tmp_path / "data")], "many"), ([str(single)], "one")):
        result = runner.invoke(app, ["score", *args, "--out", str(tmp_path / out), *common])
        assert result.exit_code == 0, result.output
    for kind in ("tokens", "sequences"):
        many = pd.read_parquet(tmp_path / "many" / f"{kind}.parquet")
        one = pd.read_parquet(tmp_path / "one" / f"{kind}.parquet")
        pd.testing.assert_frame_equal(many, one)
    meta = read_metadata(tmp_path / "many" / "sequences.parquet")
    assert json.loads(meta["input"]) == expand_inputs([str(tmp_path / "data")])


def test_cli_reads_urls_and_reports_unreachable_ones(gpt2_dir, tmp_path):
    common = ["--model", str(gpt2_dir), "-q"]
    url = f"file://{SAMPLES / 'mixed.parquet'}"
    result = runner.invoke(app, ["score", url, "--out", str(tmp_path / "url"), *common])
    assert result.exit_code == 0, result.output
    local = runner.invoke(app, ["score", str(SAMPLES / "mixed.parquet"), "--out", str(tmp_path / "local"), *common])
    assert local.exit_code == 0, local.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "url" / "tokens.parquet"), pd.read_parquet(tmp_path / "local" / "tokens.parquet")
    )
    assert read_metadata(tmp_path / "url" / "tokens.parquet")["input"] == url
    for bad in ("memory://nowhere/data.jsonl", "http://127.0.0.1:9/data.jsonl", "nosuchprotocol://x/data.jsonl"):
        result = runner.invoke(app, ["score", bad, "--out", str(tmp_path / "bad"), *common])
        assert bad in one_line_error(result, 3)


def test_cli_join_scores_one_document_with_hugging_face_windows(gpt2_dir, tmp_path):
    """--join with windows scores exactly the tokens, with exactly the context, of the perplexity guide's loop."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "joined"
    args = ["score", str(SAMPLES / "mixed.jsonl"), "--out", str(out), "--model", str(gpt2_dir), "-q"]
    result = runner.invoke(app, [*args, "--join", r"\n\n", "--no-bos", "--max-length", "64", "--stride", "24"])
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(out / "tokens.parquet")
    assert set(tokens["doc"]) == {0}
    assert json.loads(read_metadata(out / "tokens.parquet")["join"]) == "\n\n"

    # The guide: tokenizer("\n\n".join(test["text"])), windows of max_length every stride, labels of the
    # tokens an earlier window scored set to -100.
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    ids = tokenizer("\n\n".join(r["text"] for r in _rows()), return_tensors="pt").input_ids
    seq_len, max_length, stride = ids.size(1), 64, 24
    guide, prev_end = {}, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        window = ids[:, begin:end]
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0].float(), dim=-1)
        for i in range(max(1, window.size(1) - trg_len), window.size(1)):
            guide[begin + i] = (int(window[0, i]), float(logp[i - 1, window[0, i]]))
        prev_end = end
        if end == seq_len:
            break
    assert list(tokens["position"]) == sorted(guide)
    assert list(tokens["token_id"]) == [guide[p][0] for p in sorted(guide)]
    assert max(abs(a - guide[p][1]) for a, p in zip(tokens["logprob"], sorted(guide))) < 1e-4

    result = runner.invoke(app, [*args, "--join", "x", "--on-error", "skip", "--overwrite"])
    assert "--join" in one_line_error(result, 2)


def test_cli_many_inputs_need_an_out_folder(tmp_path):
    _corpus(tmp_path / "data")
    result = runner.invoke(app, ["score", str(tmp_path / "data" / "*.jsonl*")])
    assert "--out" in one_line_error(result, 2)
    result = runner.invoke(app, ["score", str(tmp_path / "data" / "a.jsonl"), str(tmp_path / "data" / "d.txt")])
    assert "--out" in one_line_error(result, 2)


def test_subprocess_reads_a_glob(gpt2_dir, tmp_path, forked_scorecli):
    import subprocess

    _corpus(tmp_path / "data")
    cmd = [forked_scorecli, "score", str(tmp_path / "data" / "*.parquet"), "-o", "-"]
    done = subprocess.run([*cmd, "--model", str(gpt2_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == [r["id"] for r in _rows()[5:9]]


@pytest.mark.parametrize("limit", [1, 3, 4, 9, 10, 20])
def test_limit_counts_records_across_files(tmp_path, limit):
    expected = _corpus(tmp_path / "data")
    sources = expand_inputs([str(tmp_path / "data")])
    got = _records(read_corpus(sources, Fields(), limit=limit))
    assert got == [(i, doc_id, text) for i, (doc_id, text) in enumerate(expected)][:limit]
    [joined] = read_corpus(sources, Fields(), join=" ", limit=limit)
    assert joined.text == " ".join(text for _, text in expected[:limit])


def test_a_stopped_corpus_run_resumes_from_its_folder_alone(gpt2_dir, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = [f"{i}: {row['text']}" for i, row in enumerate(_rows() * 40)]
    half = len(texts) // 2
    for name, part in (("a.jsonl", texts[:half]), ("b.jsonl", texts[half:])):
        lines = [json.dumps({"text": t}) for t in part]
        (folder / name).write_text("\n".join(lines) + "\n")
    lines = (folder / "b.jsonl").read_text().splitlines()
    lines[-3] = '{"text": 12}'  # near the end of the second file: parts of both files are saved before it
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n")
    args = ["-m", str(gpt2_dir), "--batch-tokens", "64"]

    stopped = runner.invoke(app, ["score", str(folder), *args, "-o", str(tmp_path / "o")])
    assert stopped.exit_code == 3 and "saved in" in stopped.stderr
    saved = pd.read_parquet(tmp_path / "o" / "parts" / "sequences")
    assert half < len(saved) < len(texts)
    # No INPUT: the folder's saved INPUT list and options are used.
    resumed = runner.invoke(app, ["score", "-o", str(tmp_path / "o"), "--resume", "--on-error", "skip"])
    assert resumed.exit_code == 0, resumed.output
    straight = runner.invoke(app, ["score", str(folder), *args, "-o", str(tmp_path / "s"), "--on-error", "skip"])
    assert straight.exit_code == 0, straight.output
    for name in ("tokens.parquet", "sequences.parquet"):
        assert pq.read_table(tmp_path / "o" / name).equals(pq.read_table(tmp_path / "s" / name))
    assert read_metadata(tmp_path / "o" / "sequences.parquet") == read_metadata(tmp_path / "s" / "sequences.parquet")
    skipped = len(texts) - 3  # the bad record, skipped by the resumed session
    docs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")["doc"].tolist()
    assert docs == [d for d in range(len(texts)) if d != skipped]


# A template that refuses conversations with a turn of role "wizard" (as templates refuse roles they lack).
REFUSING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'wizard' %}{{ raise_exception('no wizards here') }}{% endif %}"
    "<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
)


def test_a_chat_the_template_refuses_is_filed_under_its_own_file(gpt2_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(gpt2_dir, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = REFUSING_TEMPLATE
    tokenizer.save_pretrained(model)
    chat = [{"role": "user", "content": "What is a river?"}, {"role": "assistant", "content": "Flowing water."}]
    wizard = [{"role": "wizard", "content": "Abracadabra."}, {"role": "assistant", "content": "No."}]
    folder = tmp_path / "chats"
    folder.mkdir()
    first, second = folder / "a.jsonl", folder / "b.jsonl"
    first.write_text("".join(json.dumps({"messages": chat}) + "\n" for _ in range(3)))
    second.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (chat, wizard, chat)))
    args = ["score", str(folder / "*.jsonl"), "-m", str(model), "--messages-field", "messages", "-q"]

    result = runner.invoke(app, [*args, "--on-error", "skip", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert (row["doc"], row["input"], row["line"]) == (4, str(second), 2)
    assert "no wizards here" in row["reason"]
    # On stdout, the skipped record is reported under the same file and line.
    streamed = runner.invoke(app, [*args, "--on-error", "skip", "-o", "-"])
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stderr.startswith(f"scorecli: skipped {second}: line 2: the chat template cannot render")
    stopped = runner.invoke(app, [*args, "-o", str(tmp_path / "stopped")])
    assert one_line_error(stopped, 3).startswith(f"scorecli: error: {second}: line 2: the chat template cannot")


def test_a_glob_run_resumes_from_another_folder_reading_the_files_it_read(gpt2_dir, tmp_path, monkeypatch):
    rows = _rows() * 20
    here, there = tmp_path.resolve() / "here", tmp_path.resolve() / "there"
    for folder, shift in ((here, 0), (there, 7)):  # "there" holds other files under the same names
        (folder / "data").mkdir(parents=True)
        texts = [f"{i + shift}: {r['text']}" for i, r in enumerate(rows)]
        lines = [json.dumps({"text": t}) for t in texts]
        (folder / "data" / "a.jsonl").write_text("\n".join(lines[:100]) + "\n")
        (folder / "data" / "b.jsonl").write_text("\n".join(lines[100:-3] + ['{"text": 12}'] + lines[-2:]) + "\n")
    args = ["-m", str(gpt2_dir), "--batch-tokens", "64", "-q"]
    monkeypatch.chdir(here)
    stopped = runner.invoke(app, ["score", "data/*.jsonl", *args, "-o", str(tmp_path / "o")])
    assert stopped.exit_code == 3 and "saved in" in stopped.stderr
    saved = json.loads((tmp_path / "o" / "parts" / "run.json").read_text())["options"]
    assert saved["files"] == [str(here / "data" / "a.jsonl"), str(here / "data" / "b.jsonl")]
    assert saved["input"] == [str(here / "data" / "*.jsonl")]
    straight = runner.invoke(app, ["score", "data/*.jsonl", *args, "--on-error", "skip", "-o", str(tmp_path / "s")])
    assert straight.exit_code == 0, straight.output

    monkeypatch.chdir(there)
    # The same pattern typed here names other files: refused, naming the files the run read.
    refused = runner.invoke(app, ["score", "data/*.jsonl", "-o", str(tmp_path / "o"), "--resume"])
    line = one_line_error(refused, 5)
    assert line.startswith("scorecli: error: --resume: the run was started with input [")
    assert str(here / "data" / "a.jsonl") in line and str(there / "data" / "a.jsonl") in line
    # Without INPUT, it reads the files it read before, wherever it is resumed from.
    resumed = runner.invoke(app, ["score", "-o", str(tmp_path / "o"), "--resume", "--on-error", "skip"])
    assert resumed.exit_code == 0, resumed.output
    for name in ("tokens.parquet", "sequences.parquet"):
        assert (tmp_path / "o" / name).read_bytes() == (tmp_path / "s" / name).read_bytes(), name
    [skipped] = [json.loads(line) for line in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    where = (skipped["doc"], skipped["input"], skipped["line"])
    assert where == (len(rows) - 3, str(here / "data" / "b.jsonl"), len(rows) - 102)
