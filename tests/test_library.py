"""The library as a notebook or a training script calls it: `scorecli.score`, models of one's own, threads kept."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLES, reference_scores, sample_texts
from typer.testing import CliRunner

import scorecli
from scorecli.base.errors import InputError, ModelError, UsageError
from scorecli.cli import app
from scorecli.data.tables import SEQUENCE_SCHEMA, TOKEN_SCHEMA, WORD_SCHEMA
from scorecli.engine.models import load_model
from scorecli.engine.scorer import Scorer
from scorecli.inputs.records import Record
from scorecli.runfolder.outputs import read_metadata

runner = CliRunner()
TEXTS = sample_texts()[:8] + ["", " ", "東京タワー"]
ON_CPU = {"device": "cpu", "dtype": "float32"}


def _cli(*args):
    result = runner.invoke(app, ["score", *map(str, args), "--device", "cpu", "--dtype", "float32", "-q"])
    assert result.exit_code == 0, result.output


# Models of one's own


def test_loading_a_model_twice_gives_two_modules_and_training_one_leaves_the_other(gpt2_dir):
    policy = load_model(str(gpt2_dir), **ON_CPU)
    reference = load_model(str(gpt2_dir), **ON_CPU)
    assert policy.model is not reference.model
    before = {name: p.detach().clone() for name, p in reference.model.named_parameters()}
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.5)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    policy.model.train()
    policy.model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    trained = dict(policy.model.named_parameters())
    assert any(not torch.equal(trained[name], before[name]) for name in before)  # the step changed the policy
    for name, p in reference.model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_a_shared_model_is_one_module_for_those_that_ask(gpt2_dir):
    own = load_model(str(gpt2_dir), **ON_CPU)
    first = load_model(str(gpt2_dir), **ON_CPU, shared=True)
    second = load_model(str(gpt2_dir), **ON_CPU, shared=True)
    assert first.model is second.model and first.tokenizer is second.tokenizer
    assert own.model is not first.model
    assert load_model(str(gpt2_dir), device="cpu", dtype="bfloat16", shared=True).model is not first.model


# Threads


def test_scoring_leaves_the_callers_thread_setting_as_it_was(tiny):
    texts = sample_texts()
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the Scorer's 1, whatever this machine's default
    try:
        scorer = Scorer(tiny.model, tiny.tokenizer, threads=1, batch_tokens=64)
        assert len(scorer.score_texts(texts)) == len(texts)
        assert torch.get_num_threads() == 2
        # Streaming, the caller holds each part while scoring waits: on its own setting, not the Scorer's.
        streaming = Scorer(tiny.model, tiny.tokenizer, threads=1, batch_tokens=64, stream=True)
        seen = []
        for part in streaming.score_buffers(Record(i, t) for i, t in enumerate(texts)):
            seen.append((len(part), torch.get_num_threads()))
        assert len(seen) > 2 and {threads for _, threads in seen} == {2}, seen
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# scorecli.score


def test_score_gives_the_columns_and_values_of_the_cli_parquet_files(tiny, tmp_path):
    model = tiny.info["model"]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    _cli(data, "-m", model, "-o", tmp_path / "out", "--words")
    for rows, schema in (("sequences", SEQUENCE_SCHEMA), ("tokens", TOKEN_SCHEMA), ("words", WORD_SCHEMA)):
        frame = scorecli.score(TEXTS, model, rows=rows, **ON_CPU)
        assert list(frame.columns) == schema.names
        written = pq.read_table(tmp_path / "out" / f"{rows}.parquet").to_pandas()
        # The CLI's --words run also has the word-start statistic's columns, which scorecli.score leaves out.
        extra = [c for c in written.columns if c not in frame.columns]
        assert extra in ([], ["word_start_logprob"], ["word_perplexity_corrected"]), extra
        pd.testing.assert_frame_equal(frame, written[list(frame.columns)], check_exact=True)
    meta = read_metadata(tmp_path / "out" / "tokens.parquet")
    for key in ("model", "model_fingerprint", "dtype", "bos", "max_length", "stride", "head", "head_dtype", "top_k"):
        assert frame.attrs[key] == meta[key], key


def test_score_tokens_equal_the_plain_reference(tiny):
    tokens = scorecli.score(TEXTS, tiny.info["model"], rows="tokens", batch_tokens=64, **ON_CPU)
    for doc, text in enumerate(TEXTS):
        rows = tokens[tokens["doc"] == doc]
        ref_lp, ref_entropy = reference_scores(tiny.model, tiny.tokenizer, text)
        assert len(rows) == len(ref_lp), text
        if len(rows):
            assert np.abs(rows["logprob"].to_numpy() - ref_lp.numpy()).max() <= 1e-4
            assert np.abs(rows["entropy"].to_numpy() - ref_entropy.numpy()).max() <= 1e-4


def test_score_reads_records_and_files_with_the_cli_fields(tiny, tmp_path):
    model = tiny.info["model"]
    records = [
        {"id": f"q{i}", "prompt": f"Question {i}: what follows?", "response": f" {t}", "label": i % 2 or "odd"}
        for i, t in enumerate(sample_texts()[:6])
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    fields = ["--prompt-field", "prompt", "--response-field", "response", "--keep-fields", "label"]
    _cli(data, "-m", model, "-o", tmp_path / "out", *fields)
    written = pq.read_table(tmp_path / "out" / "sequences.parquet")
    options = {"prompt_field": "prompt", "response_field": "response", **ON_CPU}
    ways = [(records, ["label"]), (pd.DataFrame(records), "label"), (data, ("label",)), (str(data), "label")]
    for inputs, keep in ways:
        frame = scorecli.score(inputs, model, keep_fields=keep, **options)
        pd.testing.assert_frame_equal(frame, written.to_pandas(), check_exact=True)
        assert frame.attrs["kept_types"] == read_metadata(tmp_path / "out" / "sequences.parquet")["kept_types"]
    from_parquet = scorecli.score(SAMPLES / "mixed.parquet", model, limit=3, **ON_CPU)
    assert from_parquet["doc"].tolist() == [0, 1, 2]
    rows = pd.read_parquet(SAMPLES / "mixed.parquet").head(3)
    pd.testing.assert_frame_equal(from_parquet, scorecli.score(rows, model, **ON_CPU), check_exact=True)


def test_score_takes_a_loaded_model_and_scorer_options(tiny):
    frame = scorecli.score("The cat sat on the mat.", tiny, rows="tokens", top_k=3, bos=False)
    assert list(frame.columns) == [*TOKEN_SCHEMA.names[:-1], "top_ids", "top_logprobs", "top_tokens", "is_response"]
    assert frame.attrs["top_k"] == "3" and frame.attrs["bos"].startswith("none")
    ref_lp, _ = reference_scores(tiny.model, tiny.tokenizer, "The cat sat on the mat.", bos=False)
    assert np.abs(frame["logprob"].to_numpy() - ref_lp.numpy()).max() <= 1e-4
    assert [len(ids) for ids in frame["top_ids"]] == [3] * len(frame)
    empty = scorecli.score([], tiny)
    assert empty.empty and list(empty.columns) == SEQUENCE_SCHEMA.names


def test_score_against_a_reference_model_of_the_same_checkpoint(tiny):
    name = tiny.info["model"]
    tokens = scorecli.score(TEXTS[:4], name, ref_model=name, rows="tokens", **ON_CPU)
    assert {"ref_logprob", "ref_entropy", "kl", "reverse_kl", "same_top"} <= set(tokens.columns)
    # Scored only, the two are one shared model: the same numbers, nothing between them.
    assert (tokens["ref_logprob"] == tokens["logprob"]).all() and tokens["same_top"].all()
    assert np.abs(tokens[["kl", "reverse_kl"]].to_numpy()).max() <= 1e-6
    assert tokens.attrs["ref_model"] == name and tokens.attrs["ref_dtype"] == "float32"


def test_score_raises_scorecli_errors_and_prints_nothing(tiny, tmp_path, capfd):
    cases = [
        (dict(inputs=["a"], rows="lines"), UsageError, "rows must be one of sequences, tokens, words, not 'lines'"),
        (dict(inputs=["a"], batch_size=8), UsageError, "batch_size: not an option of score (options: "),
        (dict(inputs=["a", {"text": "b"}]), UsageError, "inputs mixes texts, records and paths: give one kind"),
        (dict(inputs=["a"], text_field="body"), UsageError, "inputs texts have no fields"),
        (dict(inputs=[{"text": "a"}, {"body": "b"}]), InputError, "inputs[1]: field 'text' is missing (fields: body)"),
        (dict(inputs=["a", 5]), InputError, "inputs[1]: expected a text (str), a record (dict) or a path, got a int"),
        (dict(inputs=[tmp_path / "none.jsonl"]), InputError, f"{tmp_path / 'none.jsonl'}: no such file"),
        (dict(inputs=[{"p": "a"}], prompt_field="p"), UsageError, "`prompt_field` and `response_field` go together"),
        (dict(inputs=["a"], max_length=1), UsageError, "max_length must be at least 2, not 1"),
        (dict(inputs=["a"], ref_dtype="float32"), UsageError, "ref_dtype goes with `ref_model`"),
        (dict(inputs=["a"], dtype="float16"), UsageError, "dtype applies to models loaded by name, not to those"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error) as caught:
            scorecli.score(model=tiny, **kwargs)
        assert str(caught.value).startswith(message), (kwargs, str(caught.value))
    # A bad record is found before the model loads (here one that cannot be loaded).
    with pytest.raises(InputError, match=r"^inputs\[0\]: field 'text' is null$"):
        scorecli.score([{"text": None}], tmp_path / "no-model")
    with pytest.raises(ModelError, match="no-model: no such model folder or file"):
        scorecli.score(["a"], tmp_path / "no-model")
    assert capfd.readouterr() == ("", "")
