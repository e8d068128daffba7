"""--compile: compiled and eager scores agree, the choice is recorded, failures fall back, bad values fail."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch._inductor.config
from conftest import SAMPLES
from typer.testing import CliRunner

from scorecli.base.errors import UsageError
from scorecli.cli import app
from scorecli.engine import compiled
from scorecli.engine.compiled import _WARM_UP_SHAPES, AUTO_MIN_TOKENS, should_compile
from scorecli.engine.scorer import Scorer
from scorecli.runfolder.outputs import read_metadata

runner = CliRunner()
CPU = torch.device("cpu")


def _tokens(folder):
    return pd.read_parquet(folder / "tokens.parquet", columns=["doc", "position", "logprob", "entropy"])


def test_compiled_scores_equal_eager_ones_and_the_choice_is_recorded(
    llama_dir, tmp_path, monkeypatch, inductor_in_process
):
    # Compiled kernels go to the scorecli cache folder (here a temporary one), so a later run reuses them.
    monkeypatch.setenv("SCORECLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    runs = {}
    for choice in ("on", "off"):
        out = tmp_path / choice
        args = ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(llama_dir), "-o", str(out), "-q"]
        result = runner.invoke(app, [*args, "--compile", choice])
        assert result.exit_code == 0, result.output
        runs[choice] = (_tokens(out), read_metadata(out / "tokens.parquet"))
    (on, on_meta), (off, off_meta) = runs["on"], runs["off"]
    assert on_meta["compile"] == "inductor (dynamic shapes, decoder layers)"
    assert off_meta["compile"] == "off"
    assert list(on["doc"]) == list(off["doc"]) and list(on["position"]) == list(off["position"])
    assert len(on) > 100
    for column in ("logprob", "entropy"):
        assert np.abs(on[column].to_numpy() - off[column].to_numpy()).max() <= 1e-4
    assert any((tmp_path / "cache" / compiled.INDUCTOR_CACHE).iterdir())


def test_a_failed_compile_falls_back_to_eager_and_says_why(llama_dir, monkeypatch):
    from scorecli.engine.models import load_model

    loaded = load_model(str(llama_dir), device="cpu", dtype="float32")

    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("no C++ compiler found\nsecond line")

    def broken(module, **kwargs):
        return Broken()

    monkeypatch.setattr(torch, "compile", broken)
    texts = ["A short text to score.", "Another one, a little longer than the first."]
    scorer = Scorer(loaded.model, loaded.tokenizer, compile="on")
    assert scorer.metadata["compile"] == "off (compiling failed: no C++ compiler found)"
    eager = Scorer(loaded.model, loaded.tokenizer, compile="off")
    for a, b in zip(scorer.score_texts(texts), eager.score_texts(texts)):
        assert np.array_equal(a.logprobs, b.logprobs)


def test_auto_compiles_nothing_on_the_cpu_and_says_why():
    # Whole runs were slower compiled (engine/compiled.py's AUTO_COMPILES_ON_CPU): `auto` must not slow a large run.
    assert should_compile("auto", CPU, True, 10**9) == (False, compiled.AUTO_CPU_REASON)
    assert should_compile("on", CPU, True, 10**9) == (True, "")


def test_auto_compiles_only_large_inputs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(compiled, "AUTO_COMPILES_ON_CPU", True)
    assert should_compile("auto", CPU, True, AUTO_MIN_TOKENS) == (True, "")
    assert should_compile("on", CPU, True, 10) == (True, "")
    compiling, why = should_compile("auto", CPU, True, AUTO_MIN_TOKENS - 1)
    assert not compiling and why.startswith("off (auto: an input of about") and f"{AUTO_MIN_TOKENS:,}" in why
    assert not should_compile("auto", CPU, True, None)[0]
    assert should_compile("on", torch.device("cuda"), True, 10**9) == (
        False,
        "off (compiling is done on the CPU only, not on cuda)",
    )
    assert not should_compile("on", CPU, False, 10**9)[0]
    assert should_compile("off", CPU, True, 10**9) == (False, "off")
    with pytest.raises(UsageError, match="must be one of auto, on, off, not 'yes'"):
        should_compile("yes", CPU, True, 10)


def test_compiling_once_serves_every_width_and_row_count_without_a_causal_mask(llama_dir, tmp_path, monkeypatch):
    # The regression: a whole-model graph materialised the causal mask (transformers takes compiling for
    # exporting on torch < 2.14) and later batches could recompile; the layers compiled alone do neither.
    from torch._dynamo.utils import counters

    from scorecli.engine.models import load_model

    monkeypatch.setenv("SCORECLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    loaded = load_model(str(llama_dir), device="cpu", dtype="float32")
    torch._dynamo.reset()
    counters.clear()
    scorer = Scorer(loaded.model, loaded.tokenizer, compile="on", max_length=64)
    warm = counters["stats"]["unique_graphs"]
    assert 1 <= warm <= len(_WARM_UP_SHAPES)  # one graph for all the layers, per warm-up shape at most
    texts = ["word " * n for n in (3, 17, 40, 90, 150)] + ["A short one.", "Two rows of different widths here."]
    got = scorer.score_texts(texts)
    assert counters["stats"]["unique_graphs"] == warm and not counters["recompiles"]
    masks = []
    first = scorer.head.base.compiled.layers[0]  # hooks on the compiled wrapper run eagerly, outside its graph
    first.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True
    )
    scorer.score_texts(texts[:2])
    assert masks and all(m is None for m in masks)  # no [B, 1, T, T] mask: attention keeps the fused causal kernel
    eager = Scorer(loaded.model, loaded.tokenizer, compile="off", max_length=64).score_texts(texts)
    for a, b in zip(got, eager):
        assert np.abs(a.logprobs - b.logprobs).max() <= 1e-4


def test_auto_on_a_small_input_does_not_compile(llama_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["score", str(SAMPLES / "mixed.jsonl"), "-m", str(llama_dir), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    size = (SAMPLES / "mixed.jsonl").stat().st_size // compiled.BYTES_PER_TOKEN
    assert read_metadata(out / "tokens.parquet")["compile"] == compiled.AUTO_CPU_REASON
    assert size < AUTO_MIN_TOKENS


def test_a_bad_compile_value_is_one_line_naming_the_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scorecli", "score", str(SAMPLES / "mixed.jsonl"), "-o", str(tmp_path / "o")]
        + ["--compile", "sometimes"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "scorecli: error: --compile must be one of auto, on, off, not 'sometimes'"
    ]
    assert not (tmp_path / "o" / "tokens.parquet").exists()
