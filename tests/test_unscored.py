"""Characters that the tokenizer gives no token are counted (`unscored_chars`), never dropped in silence.

Each count is checked against an independent one: the characters of the scored text that no token's
offsets, as the tokenizer itself gives them, cover.
"""

import hashlib
import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import one_line_error
from typer.testing import CliRunner

from scorecli.base.faults import FAULT_ENV
from scorecli.cli import app
from scorecli.engine.batching import Encoder
from scorecli.engine.chat import render_chat
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import Record

runner = CliRunner()
# SmolLM2's converted tokenizer has no token for these six control characters (all others have one).
DROPPED = "\x04\x06\x13\x14\x16\x1d"
TEXTS = [
    "A plain sentence, every character of it scored.",
    "left\x1dright",
    DROPPED,
    "\x1d",
    "",
    "é\x1d東\x1d🎉 and\x13 \x1d\x1d more\n\x16",
    "  \x1d leading and trailing spaces \x1d  ",
]


def _score(*args, env=None):
    return runner.invoke(app, ["score", *map(str, args)], env=env)


def _covered(tokenizer, text: str, chat: bool = False) -> set[int]:
    """The indices of the characters that any token's own offsets cover."""
    enc = tokenizer(text, add_special_tokens=False, split_special_tokens=not chat, return_offsets_mapping=True)
    return {i for start, end in enc["offset_mapping"] for i in range(start, end)}


def _uncovered(tokenizer, text: str, spans=None, chat: bool = False) -> int:
    """How many characters of `text` inside `spans` (all of it where None) no token covers."""
    scored = range(len(text)) if spans is None else {i for start, end in spans for i in range(start, end)}
    return len(set(scored) - _covered(tokenizer, text, chat))


def test_smollm_counts_the_characters_its_tokenizer_drops(smollm):
    docs = Scorer(smollm.model, smollm.tokenizer, batch_tokens=256).score_texts(TEXTS)
    expected = [_uncovered(smollm.tokenizer, text) for text in TEXTS]
    assert [d.unscored_chars for d in docs] == expected
    assert expected[2] == len(DROPPED) and expected[3] == 1 and expected[0] == 0
    assert [d.sequence_row()["unscored_chars"] for d in docs] == expected


def test_smollm_counts_only_the_response_and_the_scored_turns(smollm):
    prompt, response = "Q\x1d: what\x13 is it? ", "It\x1d is \x1d\x1dthis."
    user, reply = "Hi\x1d there\x16", "Hello\x1d\x1d, friend\x04."
    messages = (("user", user), ("assistant", reply))
    records = [
        Record(0, prompt + response, spans=((len(prompt), len(prompt + response)),)),
        Record(1, "", messages=messages),
    ]
    scorer = Scorer(smollm.model, smollm.tokenizer, batch_tokens=256)
    plain, chat = scorer.score_records(records)
    assert plain.unscored_chars == _uncovered(smollm.tokenizer, records[0].text, records[0].spans) == 3
    text, spans = render_chat(smollm.tokenizer, messages, ("assistant",))
    assert chat.unscored_chars == _uncovered(smollm.tokenizer, text, spans, chat=True) == 3


def test_smollm_a_truncated_text_counts_up_to_its_cut(smollm):
    text = "word\x1d " * 40
    [doc] = Scorer(smollm.model, smollm.tokenizer, max_length=9, truncate=True).score_texts([text])
    enc = smollm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    kept = enc["offset_mapping"][:8]  # the BOS and 8 tokens of the text fill the window
    reach = max(end for _, end in kept)
    covered = {i for start, end in kept for i in range(start, end)}
    assert doc.truncated and doc.unscored_chars == len(set(range(reach)) - covered) > 0


def test_smollm_a_text_tokenised_in_pieces_counts_the_same(smollm):
    text = "".join(f"line {i}\x1d with\x13 some\x1d\x1d text.\n" for i in range(300))
    [whole] = Encoder(smollm.tokenizer).encode([text])
    [pieces] = Encoder(smollm.tokenizer, piece_chars=256).encode([text])
    assert pieces.unscored == whole.unscored == _uncovered(smollm.tokenizer, text) == 1200


def _dropping_tokenizer(source, trim: bool = False):
    """The tiny GPT-2's tokenizer with a normalizer that drops \\x1d; with `trim`, offsets that leave spaces out."""
    from tokenizers import normalizers, processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.backend_tokenizer.normalizer = normalizers.Replace("\x1d", "")
    if trim:
        tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tokenizer


@pytest.fixture(scope="module")
def dropping_dir(gpt2_dir, tmp_path_factory):
    """A copy of the tiny GPT-2 whose tokenizer gives no token for \\x1d."""
    folder = tmp_path_factory.mktemp("dropping") / "model"
    shutil.copytree(gpt2_dir, folder)
    _dropping_tokenizer(gpt2_dir).save_pretrained(folder)
    return folder


def test_a_tiny_tokenizer_that_drops_a_character(gpt2_dir, tiny):
    tokenizer = _dropping_tokenizer(gpt2_dir)
    docs = Scorer(tiny.model, tokenizer, batch_tokens=256).score_texts(TEXTS)
    expected = [_uncovered(tokenizer, text) for text in TEXTS]
    assert [d.unscored_chars for d in docs] == expected
    assert expected == [text.count("\x1d") for text in TEXTS]
    # The same model with its own byte-level tokenizer has a token for every byte: nothing is left out.
    assert [d.unscored_chars for d in Scorer(tiny.model, tiny.tokenizer).score_texts(TEXTS)] == [0] * len(TEXTS)


def test_spaces_that_trimmed_offsets_leave_out_are_not_counted(gpt2_dir, tiny):
    # A tokenizer whose offsets are trimmed of spaces (a ByteLevel post-processor with trim_offsets) leaves
    # them out of every offset although its tokens hold them: only what no token holds counts.
    trimming = _dropping_tokenizer(gpt2_dir, trim=True)
    untrimmed = _dropping_tokenizer(gpt2_dir)
    texts = ["a  b \x1d c", "  lead \x1d\x1d and  trail  ", *TEXTS]
    assert any(_uncovered(trimming, t) > _uncovered(untrimmed, t) for t in texts)  # trimming leaves gaps
    docs = Scorer(tiny.model, trimming, batch_tokens=256).score_texts(texts)
    assert [d.unscored_chars for d in docs] == [_uncovered(untrimmed, t) for t in texts]
    assert [d.unscored_chars for d in docs] == [t.count("\x1d") for t in texts]


def _texts_file(path, texts):
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_cli_writes_the_column_the_json_lines_and_the_total(dropping_dir, gpt2_dir, tmp_path):
    data = _texts_file(tmp_path / "data.jsonl", TEXTS)
    result = _score(data, "-m", dropping_dir, "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    expected = [_uncovered(_dropping_tokenizer(gpt2_dir), t) for t in TEXTS]
    total = sum(expected)
    assert total > 0
    seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    assert seqs["unscored_chars"].tolist() == expected
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["summary"]["unscored_chars"] == total
    assert f"{total:,} character(s) of the scored text have no token" in " ".join(result.stderr.split())
    lines = _score(data, "-m", dropping_dir, "-o", "-", "-q")
    assert lines.exit_code == 0, lines.output
    assert [json.loads(line)["unscored_chars"] for line in lines.stdout.splitlines()] == expected
    # A model that leaves nothing out says nothing of it, and counts 0.
    plain = _score(data, "-m", gpt2_dir, "-o", tmp_path / "plain")
    assert plain.exit_code == 0 and "have no token" not in plain.stderr
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["summary"]["unscored_chars"] == 0


def _stopped_run(model, tmp_path, name):
    """A run stopped by a bad record near its end, with parts saved: the folder and the command's arguments."""
    texts = [f"{i}: some text\x1d here, and\x1d more" for i in range(800)]
    data = _texts_file(tmp_path / f"{name}.jsonl", texts)
    lines = data.read_text().splitlines()
    lines[-5] = '{"text": 12}'
    data.write_text("\n".join(lines) + "\n")
    args = [data, "-m", model, "--batch-tokens", 64]
    stopped = _score(*args, "-o", tmp_path / name)
    assert stopped.exit_code == 3 and list((tmp_path / name / "parts" / "sequences").iterdir())
    return tmp_path / name, args


def test_a_run_saved_before_the_column_existed_is_refused_on_resume(dropping_dir, tmp_path):
    out, _ = _stopped_run(dropping_dir, tmp_path, "old")
    # As an older scorecli saved it: its sequences parts have no unscored_chars (manifests updated to match).
    for manifest in sorted((out / "parts").glob("0*.json")):
        info = json.loads(manifest.read_text())
        part = out / "parts" / "sequences" / f"{manifest.stem}.parquet"
        pq.write_table(pq.read_table(part).drop_columns(["unscored_chars"]), part)
        data = part.read_bytes()
        info["files"]["sequences"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        manifest.write_text(json.dumps(info))
    line = one_line_error(_score("-o", out, "--resume", "--on-error", "skip"), 5)
    assert "older version of scorecli" in line and "unscored_chars" in line and "--overwrite" in line
    assert not (out / "summary.json").exists() and list((out / "parts" / "sequences").iterdir())


def test_documents_an_older_version_kept_from_an_interrupt_are_scored_again(dropping_dir, tmp_path):
    # Ctrl-C after the first batch: the finished documents of the buffer are kept in in-flight.json (no part).
    texts = [f"{i}: some text\x1d here" * (1 + i % 3) for i in range(40)]
    data = _texts_file(tmp_path / "data.jsonl", texts)
    args = [data, "-m", dropping_dir, "--batch-tokens", 64, "--threads", 1]
    stopped = _score(*args, "-o", tmp_path / "o", env={FAULT_ENV: "batch"})
    assert stopped.exit_code == 130, stopped.output
    in_flight = tmp_path / "o" / "parts" / "in-flight.json"
    saved = json.loads(in_flight.read_text())
    assert saved["docs"] and not list((tmp_path / "o" / "parts").glob("0*.json"))
    for doc in saved["docs"]:  # as an older scorecli saved them
        del doc["unscored_chars"]
    in_flight.write_text(json.dumps(saved))
    resumed = _score("-o", tmp_path / "o", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert _score(*args, "-o", tmp_path / "straight").exit_code == 0
    for name in ("tokens.parquet", "sequences.parquet"):
        assert pq.read_table(tmp_path / "o" / name).equals(pq.read_table(tmp_path / "straight" / name)), name
    seqs = pd.read_parquet(tmp_path / "o" / "sequences.parquet")
    assert seqs["unscored_chars"].tolist() == [t.count("\x1d") for t in texts]


def test_a_ray_run_with_a_shard_an_older_version_finished_is_refused_before_ray_starts(tmp_path):
    import pyarrow as pa

    from scorecli.base.errors import OutputError
    from scorecli.data.options import OPTIONS_BEFORE_THEY_EXISTED
    from scorecli.data.tables import SEQUENCE_SCHEMA
    from scorecli.executors.scaleout import Job, _check_complete_shards, score_sharded

    pytest.importorskip("ray")
    shard = tmp_path / "o" / "shards" / "00000"
    shard.mkdir(parents=True)
    options = dict(OPTIONS_BEFORE_THEY_EXISTED)  # the options of the run, the same now as when it was started
    planned = {"number": 0, "source": "x.jsonl", "first_doc": 0, "records": 1, "at": [0, 0]}
    plan = {"options": options, "shards": [planned], "seconds": 0}
    (tmp_path / "o" / "shards" / "plan.json").write_text(json.dumps(plan))
    (shard / "summary.json").write_text(json.dumps({"summary": {}, "metadata": {}}))
    old = SEQUENCE_SCHEMA.remove(SEQUENCE_SCHEMA.get_field_index("unscored_chars"))
    pq.write_table(pa.Table.from_pylist([], old), shard / "sequences.parquet")
    job = Job(options=options)
    with pytest.raises(OutputError, match="older version of scorecli, whose sequences.parquet has no unscored_chars"):
        score_sharded(job, ["x.jsonl"], tmp_path / "o", address="127.0.0.1:1")
    # A shard this version finished passes the check.
    pq.write_table(pa.Table.from_pylist([], SEQUENCE_SCHEMA), shard / "sequences.parquet")
    _check_complete_shards(tmp_path / "o", plan)
