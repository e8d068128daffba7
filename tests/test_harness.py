"""scorecli inside lm-evaluation-harness: the `scorecli` model against lm-eval's own `hf` backend on the same model.

Tasks are our own (samples/make_tasks.py) over local JSONL files, written to a temp folder; the models are the
tiny ones of conftest.py. Log-likelihoods must agree within 1e-4 nats per token (float32), is_greedy and the
accuracies exactly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
from conftest import ROOT, SAMPLES, one_line_error
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from scorecli.base.errors import InputError, UsageError
from scorecli.executors.harness import ScorecliLM

TOL = 1e-4  # nats per token
TASKS = ["scorecli_mc", "scorecli_pairs", "scorecli_rolling"]
ACCURACIES = ("acc,none", "acc_norm,none", "acc_bytes,none", "acc_mutual_info,none")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three generated tasks, with absolute data paths, in a temp folder."""
    spec = importlib.util.spec_from_file_location("make_tasks", SAMPLES / "make_tasks.py")
    make_tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tasks)
    return make_tasks.write_tasks(tmp_path_factory.mktemp("tasks"), questions=6, shots=3, pairs=6, documents=3)


def _evaluate(model: str, model_args: str, tasks: Path, **kwargs) -> dict:
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=TASKS, task_manager=manager, log_samples=True, **kwargs
    )


def _tokens(tokenizer, text: str) -> int:
    """An upper bound of the tokens a continuation or document is scored in (its tokens, a BOS, a moved space)."""
    return len(tokenizer.encode(text, add_special_tokens=False)) + 2


def _check_pair(a: tuple[float, bool], b: tuple[float, bool], tokens: int, what: str) -> None:
    assert abs(a[0] - b[0]) <= TOL * tokens, (what, a, b)
    assert a[1] == b[1], (what, a, b)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_tasks_match_hf_backend(request: pytest.FixtureRequest, tasks: Path, style: str) -> None:
    folder = request.getfixturevalue(f"{style}_dir")
    args = f"pretrained={folder},dtype=float32,device=cpu"
    hf = _evaluate("hf", args, tasks, batch_size=3)
    ours = _evaluate("scorecli", args, tasks)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    compared = 0
    for task in TASKS:
        theirs, mine = hf["samples"][task], ours["samples"][task]
        assert [s["doc_id"] for s in theirs] == [s["doc_id"] for s in mine] and len(mine) > 0
        for a, b in zip(theirs, mine):
            assert a["arguments"] == b["arguments"]
            for args_, resp_a, resp_b in zip(a["arguments"], a["resps"], b["resps"]):
                if task == "scorecli_rolling":
                    tokens = _tokens(tokenizer, args_[0])
                    assert abs(resp_a[0] - resp_b[0]) <= TOL * tokens, (task, a["doc_id"], resp_a, resp_b)
                else:
                    _check_pair(resp_a[0], resp_b[0], _tokens(tokenizer, args_[1]), (task, a["doc_id"], args_))
                compared += 1
        results_a, results_b = hf["results"][task], ours["results"][task]
        assert results_a.keys() == results_b.keys()
        for metric, value in results_a.items():
            if metric in ACCURACIES or not isinstance(value, float):
                assert results_b[metric] == value, (task, metric)
            else:  # perplexities: functions of the summed log-likelihoods, equal to their rounding
                assert math.isclose(results_b[metric], value, rel_tol=1e-4), (task, metric)
    # Every request of the three tasks: 6 questions x 4 choices, twice with acc_mutual_info; 6 pairs; 3 documents.
    assert compared == 6 * 4 * 2 + 6 * 2 + 3
    info = ours["config"]["scorecli"]
    assert info["tokens_shared"] > 0 and info["tokens_fed"] < info["tokens_scored"] + info["tokens_shared"]
    assert ours["config"]["model"] == "scorecli" and info["prefix_sharing"].startswith("on")


def _instances(pairs: list[tuple[str, str]]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _rolling(texts: list[str]) -> list[Instance]:
    return [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]


QUESTION = (
    "Answer each question with one of its four choices.\n\nQuestion: Which day comes after Monday?\nAnswer: Tuesday"
    "\n\nQuestion: What is 3 plus 4?\nAnswer: seven\n\nQuestion: Which month comes after May?\nAnswer:"
)
REQUESTS = [
    (QUESTION, " June"),
    (QUESTION, " July"),
    (QUESTION, " March and April"),
    (QUESTION, " January"),
    ("The cat sat on the ", "mat."),  # a trailing space moves to the continuation
    ("Hello", " world"),
    ("", "The dogs in the yard are barking."),  # an empty context: the prefix token before the continuation
    ("", " leading space"),
    ("", "<s>starts with the BOS text"),
    ("A <|endoftext|> inside", " a context"),
]
TEXTS = [
    "",
    "short",
    "The lighthouse keeper wrote the weather in a ledger every evening. " * 6,
    "Rain had softened the path, and the boots left deep prints in the mud. " * 20,
]


@pytest.mark.parametrize(
    ("style", "args"),
    [
        ("gpt2", {}),
        ("llama", {}),
        ("llama", {"add_bos_token": False}),
        ("gpt2", {"add_bos_token": True}),
        ("gpt2", {"prefix_token_id": 5}),
        ("llama", {"max_length": 24}),  # contexts cut from the left; rolling windows of 24 tokens
    ],
)
def test_requests_match_hf_backend(request: pytest.FixtureRequest, style: str, args: dict) -> None:
    folder = request.getfixturevalue(f"{style}_dir")
    hf = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=4, **args)
    ours = ScorecliLM(pretrained=str(folder), device="cpu", dtype="float32", **args)
    assert ours.max_length == hf.max_length and ours.prefix_token_id == hf.prefix_token_id
    for context, continuation in REQUESTS:
        assert ours.tok_encode(context + continuation) == hf.tok_encode(context + continuation)
    expected, got = hf.loglikelihood(_instances(REQUESTS)), ours.loglikelihood(_instances(REQUESTS))
    for (context, continuation), a, b in zip(REQUESTS, expected, got):
        _check_pair(a, b, _tokens(hf.tokenizer, continuation), (context[-20:], continuation))
    expected, got = hf.loglikelihood_rolling(_rolling(TEXTS)), ours.loglikelihood_rolling(_rolling(TEXTS))
    for text, a, b in zip(TEXTS, expected, got):
        assert abs(a - b) <= TOL * _tokens(hf.tokenizer, text), (text[:20], a, b)
    # The four choices after the question share its 150 tokens (64 or more are fed once), unless cut to 24.
    assert (ours.progress.tokens_shared > 0) == ("max_length" not in args)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_is_greedy_against_the_model(request: pytest.FixtureRequest, style: str) -> None:
    folder = request.getfixturevalue(f"{style}_dir")
    ours = ScorecliLM(pretrained=str(folder), device="cpu", dtype="float32")
    hf = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=2)
    context = ours.tok_encode("The river widened as it reached the plain")
    greedy = list(context)
    with torch.no_grad():
        for _ in range(6):  # the model's own most likely continuation, token by token
            greedy.append(int(hf.model(torch.tensor([greedy])).logits[0, -1].argmax()))
    continuation = greedy[len(context) :]
    changed = continuation[:-1] + [(continuation[-1] + 1) % len(ours.tokenizer)]
    requests = [(None, context, continuation), (None, context, changed), (None, context, continuation[:1])]
    got, expected = ours._loglikelihood_tokens(requests), hf._loglikelihood_tokens(requests)
    assert [g for _, g in got] == [True, False, True] == [g for _, g in expected]
    for a, b in zip(expected, got):
        _check_pair(a, b, 6, "greedy")


def test_prefix_sharing_off_gives_the_same_numbers(gpt2_dir: Path) -> None:
    shared = ScorecliLM(pretrained=str(gpt2_dir), device="cpu", dtype="float32", min_shared_prefix=2)
    plain = ScorecliLM(pretrained=str(gpt2_dir), device="cpu", dtype="float32", prefix_sharing=False)
    a, b = shared.loglikelihood(_instances(REQUESTS)), plain.loglikelihood(_instances(REQUESTS))
    for (_, continuation), x, y in zip(REQUESTS, a, b):
        _check_pair(x, y, _tokens(shared.tokenizer, continuation), continuation)
    assert shared.progress.tokens_shared > 0 and plain.progress.tokens_shared == 0
    # Fed once, the shared question spares its tokens for three of its four choices.
    assert shared.progress.tokens_fed < plain.progress.tokens_fed


def test_generate_until_refused(gpt2_dir: Path) -> None:
    ours = ScorecliLM(pretrained=str(gpt2_dir), device="cpu", dtype="float32")
    request = Instance("generate_until", {}, ("Question:", {"until": ["\n"]}), 0, metadata=("gen_task", 0, 1))
    with pytest.raises(UsageError, match="scores text, it does not generate: task.s. gen_task"):
        ours.generate_until([request])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"batchsize": 8}, "model_args batchsize: not an argument of the scorecli model"),
        ({"prefix_sharing": "maybe"}, "prefix_sharing must be True or False, not 'maybe'"),
        ({"min_shared_prefix": 1}, "min_shared_prefix must be a whole number of at least 2, not 1"),
        ({"dtype": "float64"}, "dtype must be one of auto, float32, bfloat16, float16, not 'float64'"),
    ],
)
def test_bad_model_args(gpt2_dir: Path, args: dict, message: str) -> None:
    with pytest.raises(UsageError) as e:
        ScorecliLM.create_from_arg_obj({"pretrained": str(gpt2_dir), "device": "cpu", **args}, {"batch_size": 1})
    assert str(e.value).startswith(message)


def test_model_args_win_over_run_settings(gpt2_dir: Path) -> None:
    # lm-eval's command line gives every backend its --device (cuda:0 by default): model_args' device wins.
    ours = ScorecliLM.create_from_arg_string(
        f"pretrained={gpt2_dir},device=cpu,dtype=float32", {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}
    )
    assert ours.device.type == "cpu"
    with pytest.raises(InputError, match="^a request of lm-eval has an empty continuation: nothing to score$"):
        ours._loglikelihood_tokens([(None, [1, 2], [])])
    with pytest.raises(InputError, match=r"^a continuation of 513 tokens is longer than `max_length` \(512\)$"):
        ours._loglikelihood_tokens([(None, [1, 2], [3] * 513)])


def test_cli_without_lm_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from scorecli.cli import app

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    result = CliRunner().invoke(app, ["lm-eval", "--tasks", "scorecli_mc"])
    line = one_line_error(result, 2)
    assert line == "scorecli: error: needs lm-evaluation-harness: pip install 'scorecli[lm-eval]'"


def test_cli_help_is_lm_evals() -> None:
    from typer.testing import CliRunner

    from scorecli.cli import app

    result = CliRunner().invoke(app, ["lm-eval", "--help"])
    assert result.exit_code == 0 and "--model_args" in result.output and "--include_path" in result.output


def test_cli_subprocess(tasks: Path, gpt2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = f"pretrained={gpt2_dir},dtype=float32,device=cpu"
    command = [sys.executable, "-m", "scorecli", "lm-eval", "--model_args", args, "--tasks", "scorecli_mc"]
    command += ["--include_path", str(tasks), "--num_fewshot", "2", "--limit", "4"]
    command += ["--output_path", str(out), "--log_samples"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scorecli_mc" in proc.stdout and "acc_mutual_info" in proc.stdout
    (results_file,) = out.rglob("results_*.json")
    (samples_file,) = out.rglob("samples_scorecli_mc_*.jsonl")
    saved = json.loads(results_file.read_text())
    assert saved["config"]["model"] == "scorecli" and saved["n-shot"]["scorecli_mc"] == 2
    assert len(samples_file.read_text().splitlines()) == 4
    # The same run in this process (the same seeds, so the same few-shot examples): the same numbers.
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    here = lm_eval.simple_evaluate(
        model="scorecli", model_args=args, tasks=["scorecli_mc"], task_manager=manager, num_fewshot=2, limit=4
    )
    for metric in ACCURACIES:
        assert saved["results"]["scorecli_mc"][metric] == here["results"]["scorecli_mc"][metric]


def test_cli_errors_name_model_args(tmp_path: Path) -> None:
    from scorecli.base.errors import ModelError
    from scorecli.cli import LM_EVAL_FLAGS

    missing = tmp_path / "missing"
    with pytest.raises(ModelError) as e:
        ScorecliLM(pretrained=str(missing))
    assert e.value.for_cli(LM_EVAL_FLAGS) == f"--model_args pretrained {missing}: no such model folder or file"
    with pytest.raises(UsageError) as e:
        ScorecliLM(batch_tokens=0)
    assert e.value.for_cli(LM_EVAL_FLAGS) == "--model_args batch_tokens must be a whole number of at least 1, not 0"


def test_run_cli_passes_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from scorecli.base.errors import ScorecliError
    from scorecli.executors.harness import run_cli

    seen: list[list[str]] = []
    monkeypatch.setattr("lm_eval.__main__.cli_evaluate", lambda: seen.append(sys.argv[1:]))
    options = ["--tasks", "t1", "t2", "--model_args", "dtype=float32", "--limit", "3", "--log_samples"]
    run_cli(options)
    run_cli(["run", "--model", "hf", *options])
    run_cli(["--model=scorecli", "--device", "cpu", *options])
    run_cli(["ls", "tasks"])
    assert seen == [
        ["run", "--model", "scorecli", "--device", "auto", *options],  # lm-eval's default device is cuda:0
        ["run", "--model", "hf", *options],
        ["run", "--model=scorecli", "--device", "cpu", *options],
        ["ls", "tasks"],
    ]

    def refuse() -> None:
        raise ValueError("Tasks not found: t1\nTry `lm-eval ls tasks`")

    monkeypatch.setattr("lm_eval.__main__.cli_evaluate", refuse)
    with pytest.raises(ScorecliError) as e:
        run_cli(options)
    assert str(e.value) == "lm-eval: ValueError: Tasks not found: t1"


def test_samples_tasks_are_make_tasks_output(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_tasks", SAMPLES / "make_tasks.py")
    make_tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tasks)
    written = make_tasks.write_tasks(tmp_path / "tasks")  # the defaults of `python samples/make_tasks.py`
    files = sorted(p.relative_to(written) for p in written.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(SAMPLES / "tasks") for p in (SAMPLES / "tasks").rglob("*") if p.is_file())
    for name in files:
        # The repository's copy names its data relative to the repository root; this one absolutely.
        text = (written / name).read_text(encoding="utf-8").replace(str(written), "samples/tasks")
        assert text == (SAMPLES / "tasks" / name).read_text(encoding="utf-8"), name
