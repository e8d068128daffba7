"""scorecli inside lm-evaluation-harness: the `scorecli` model of lm_eval, and the `scorecli lm-eval` command's run.

Importing this module registers the model under the name `scorecli` (it needs the lm-eval extra:
`pip install 'scorecli[lm-eval]'`). Requests are tokenised as lm-eval's `hf` backend tokenises them (the same
tokenizer settings, BOS and empty-context conventions, left truncation and rolling windows), so the same
model arguments give the same numbers, and scored by scorecli's engine: every request of a call at once,
sorted and packed by tokens, a context shared by several continuations (the choices of a question) fed once.

Layer: executors. It must not import the front of scorecli, nor torch, rich, typer or plotly.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lm_eval.models  # noqa: F401  (lm-eval's own backends: get_model imports them only into an empty registry)
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import has_bos_prefix, resolve_max_length

from scorecli.base.errors import InputError, ScorecliError, UsageError, first_line
from scorecli.data.options import DEFAULT_MIN_SHARED_PREFIX
from scorecli.engine.models import load_model
from scorecli.engine.scorer import ScoreProgress, Scorer

NAME = "scorecli"
# lm-eval's CLI gives every backend its batch settings; scorecli batches by tokens (`batch_tokens`) instead.
IGNORED = ("batch_size", "max_batch_size")
# Requests that share a context (the choices of a question) share its tokens, and the engine feeds a shared start
# once where it is at least `min_shared_prefix` tokens long: the same default as `scorecli score`. A shared start
# costs a forward pass of its own (the continuations follow in another): with SmolLM2 on a busy 2-core CPU, a
# question's continuation pass of 4 rows of a few tokens took 0.5 s, its 80-token context 1.2 s (2026-12-06), so
# a pass costs about what 30-40 fed tokens do, and sharing a context of 16 tokens among 4 choices (45 tokens
# spared) would barely pay. Few-shot contexts (hundreds of tokens) are far above 64; shorter ones are fed with
# each choice, as lm-eval's `hf` backend feeds them.


@register_model(NAME)
class ScorecliLM(TemplateLM):
    """An lm_eval model that scores with scorecli's engine: exact, lean, batched by tokens, contexts fed once.

    `pretrained` is what `scorecli score --model` takes (a hub id, a model folder, a .gguf file; none: the
    embedded default); `dtype`, `device`, `batch_tokens`, `threads`, `prefix_sharing`, `min_shared_prefix`,
    `head_dtype`, `compile`, `revision` and `trust_remote_code` are scorecli's options of the same names.
    `add_bos_token`, `prefix_token_id` and `max_length` are lm-eval's `hf` backend's: whether the tokenizer
    adds its special tokens (None: its own default), the token an empty context stands for (None: BOS,
    else EOS), and the longest sequence fed (None: the model's, as `hf` reads it), inputs longer than it
    being cut from the left.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_tokens: int | None = None,
        threads: int | None = None,
        prefix_sharing: bool = True,
        min_shared_prefix: int = DEFAULT_MIN_SHARED_PREFIX,
        head_dtype: str = "auto",
        compile: str = "off",
        revision: str | None = None,
        trust_remote_code: bool = False,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        max_length: int | None = None,
        **others: object,
    ) -> None:
        """Load the model and set up the scorer; unknown arguments are refused, naming them."""
        super().__init__()
        unknown = sorted(set(others) - set(IGNORED))
        if unknown:
            raise UsageError(
                f"{unknown[0]}: not an argument of the {NAME} model (it takes pretrained, dtype, device, "
                "batch_tokens, threads, prefix_sharing, min_shared_prefix, head_dtype, compile, revision, "
                "trust_remote_code, add_bos_token, prefix_token_id, max_length)",
                arg="model_args",
            )
        for name, value in {"prefix_sharing": prefix_sharing, "trust_remote_code": trust_remote_code}.items():
            _check_bool(name, value)
        if add_bos_token is not None:
            _check_bool("add_bos_token", add_bos_token)
        for name, value in {"batch_tokens": batch_tokens, "threads": threads, "max_length": max_length}.items():
            _check_int(name, value, 1)
        _check_int("min_shared_prefix", min_shared_prefix, 2)
        _check_int("prefix_token_id", prefix_token_id, 0)
        loaded = load_model(
            None if pretrained is None else str(pretrained),
            device=str(device),
            dtype=str(dtype),
            revision=None if revision is None else str(revision),
            trust_remote_code=trust_remote_code,
        )
        self.loaded = loaded
        self.tokenizer = _tokenizer(loaded, add_bos_token, revision, trust_remote_code)
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self._max_length = max_length or resolve_max_length(loaded.model.config, self.tokenizer)
        self._device = loaded.device
        self.scorer = Scorer(
            loaded.model,
            loaded.tokenizer,
            bos=False,
            batch_tokens=batch_tokens,
            threads=threads,
            prefix_sharing=prefix_sharing,
            min_shared_prefix=min_shared_prefix,
            head_dtype=str(head_dtype),
            compile=str(compile),
        )
        # Tokens scored, fed to the model and spared by shared contexts, over every call.
        self.progress = ScoreProgress()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ScorecliLM:
        """The model of a `key=value,…` argument string (lm-eval's `model_args`) and the run's own settings."""
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> ScorecliLM:
        """The model of its arguments and the run's own settings (batch size, device), the arguments winning.

        lm-eval's command line passes every backend its --device (cuda:0 unless given) beside `model_args`;
        a `device` in the model's own arguments is the one meant.
        """
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @property
    def eot_token_id(self) -> int:
        """The end-of-text token, as lm-eval's `hf` backend takes it: the tokenizer's EOS."""
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context stands for: `prefix_token_id` if given, else BOS, else EOS (as `hf`)."""
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        """The longest token sequence fed to the model; longer inputs lose tokens at their start (as `hf`)."""
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's name, for lm-eval's request cache keys (as `hf` names it)."""
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: object) -> list[int]:
        """Token ids of a string as `hf` makes them: special tokens as `add_bos_token` says, no BOS added twice."""
        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special = {"add_special_tokens": False}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        else:
            special = {}
        return self.tokenizer.encode(string, **special)

    def _loglikelihood_tokens(
        self, requests: Sequence[tuple[object, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: object
    ) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) of each (key, context ids, continuation ids): all scored in one go."""
        sequences, first = [], []
        for _, context, continuation in requests:
            if not continuation:
                raise InputError("a request of lm-eval has an empty continuation: nothing to score")
            if len(continuation) > self.max_length:
                raise InputError(
                    f"a continuation of {len(continuation)} tokens is longer than `max_length` ({self.max_length})"
                )
            # As `hf`: the last max_length + 1 tokens, of which all but the last are fed.
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            sequences.append(whole)
            first.append(len(whole) - len(continuation))
        stats = self.scorer.score_sequences(sequences, first, self.progress)
        # is_greedy: every continuation token is the model's most likely (rank 1: no logit above it), lm-eval's exact
        # match; `hf` takes the first of tied largest logits instead, which differs only where floats tie exactly.
        return [(float(np.sum(s["logprob"], dtype=np.float64)), bool((s["rank"] == 1).all())) for s in stats]

    def loglikelihood_rolling(self, requests: Sequence[object], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, in lm-eval's own disjoint rolling windows of `max_length` tokens."""
        windows, owners = [], []
        for k, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tok_encode(text)
            pairs = lm_utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
            )
            for context, continuation in map(lm_utils.make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owners.append(k)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[k] += logprob
        return totals

    def generate_until(self, requests: Sequence[object], disable_tqdm: bool = False) -> list[str]:
        """Refuse: scorecli scores text, it does not generate."""
        tasks = sorted({str(getattr(r, "task_name", None) or "?") for r in requests})
        raise UsageError(
            f"{NAME} scores text, it does not generate: task(s) {', '.join(tasks)} ask for generated text "
            "(generate_until); run them with a generating backend such as hf or vllm"
        )

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat rendered by the tokenizer's template, as `hf` renders it for --apply_chat_template."""
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def get_model_info(self) -> dict:
        """What identifies the model and every scoring choice, for lm-eval's results (`config`)."""
        model = self.loaded.model
        kept = ("head", "head_dtype", "dtype", "device", "threads", "batch_tokens", "compile", "prefix_sharing")
        engine = {k: v for k, v in self.scorer.metadata.items() if k in kept}
        return {
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(self.loaded.dtype),
            NAME: {
                **self.loaded.info,
                **engine,
                "add_bos_token": str(self.add_bos_token),
                "prefix_token_id": str(self.prefix_token_id),
                "max_length": str(self.max_length),
                "tokens_scored": self.progress.tokens_done,
                "tokens_fed": self.progress.tokens_fed,
                "tokens_shared": self.progress.tokens_shared,
            },
        }


def run_cli(argv: Sequence[str]) -> None:
    """Run lm-eval's command line (`lm-eval run …`) on `argv`, with `--model scorecli` unless a model is named."""
    from lm_eval.__main__ import cli_evaluate

    args = list(argv)
    if args[:1] and args[0] in ("ls", "validate"):
        full = args
    else:
        args = args[1:] if args[:1] == ["run"] else args
        model = _option(args, "--model", "-M")
        # lm-eval's own default device (cuda:0) is no choice of scorecli's: its `auto` stands in where none is given.
        ours = ["--device", "auto"] if model in (None, NAME) and _option(args, "--device") is None else []
        full = ["run", *(["--model", NAME] if model is None else []), *ours, *args]
    saved = sys.argv
    sys.argv = ["scorecli lm-eval", *full]
    try:
        cli_evaluate()
    except ScorecliError:
        raise
    except Exception as e:  # lm-eval's own errors (an unknown task, a config it refuses): one line, as ours
        raise ScorecliError(f"lm-eval: {type(e).__name__}: {first_line(e)}") from None
    finally:
        sys.argv = saved


def _option(args: Sequence[str], *names: str) -> str | None:
    """The value given to a command-line option under any of its `names` (the last one given), or None."""
    value = None
    for k, arg in enumerate(args):
        for name in names:
            if arg == name and k + 1 < len(args):
                value = args[k + 1]
            elif arg.startswith(f"{name}="):
                value = arg.split("=", 1)[1]
    return value


def _tokenizer(loaded: object, add_bos_token: bool | None, revision: object, trust_remote_code: bool) -> object:
    """The tokenizer lm-eval's `hf` backend would load: the model's, reloaded with `add_bos_token` where given."""
    if add_bos_token is None:
        return loaded.tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        loaded.tokenizer.name_or_path,
        add_bos_token=add_bos_token,
        revision=None if revision is None else str(revision),
        trust_remote_code=trust_remote_code,
    )


def _check_bool(name: str, value: object) -> None:
    """Refuse a model argument that should be true or false (lm-eval turns 'True' and 'False' into booleans)."""
    if not isinstance(value, bool):
        raise UsageError(f"must be True or False, not {value!r}", arg=name)


def _check_int(name: str, value: object, least: int) -> None:
    """Refuse a model argument that should be a whole number of at least `least` (None: its default)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise UsageError(f"must be a whole number of at least {least}, not {value!r}", arg=name)
