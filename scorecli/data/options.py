"""`ScoreOptions`: every scoring option, defined once, with all that is said of it.

Each option has its type, default, check, command-line flag and help, its entry in a run folder's saved
options, the value a run saved before it existed implies, and the metadata key that records it.

The command line's `score` parameters and flag names (cli.py), the options a run saves for `resume` and
merges back (runner.py), the Ray job's options (executors/scaleout.py) and the Scorer's and model loader's keywords
are all derived from the definitions below: adding an option is one entry here plus its use.

Needs neither torch nor pyarrow (the command line imports it at start-up); must not import the engine.

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, Optional

from scorecli.base.checks import check_compile, check_device, check_dtype, check_head_dtype, check_limits
from scorecli.base.errors import UsageError
from scorecli.inputs.records import STDIN, Fields, parse_choice_fields

RAY_INSTALL = "pip install 'scorecli[ray]'"
NOT_SET = object()  # an Option's `before` where the option is as old as saved runs

# A group costs an extra forward pass (a few milliseconds of fixed cost on a CPU, as much as a few tokens),
# one token fed again per document, and padding: its continuations are batched apart from the buffer's other
# windows. benchmarks/prefix_cost.py counts it (README, "Shared prefixes"): starts of hundreds of tokens share
# the same from any minimum up to 128; on natural texts sharing starts by chance, minimums of 2-8 compute
# about 20% more than no sharing, 32 about 5-10% more, 48 or more nothing. Timed on samples/long.jsonl
# (SmolLM2, float32, 2026-12-05): 32 took 58.8 s and 57.9 s, 64 56.3 s, no sharing 56.1 s.
DEFAULT_MIN_SHARED_PREFIX = 64


@dataclass(frozen=True)
class Option:
    """What ScoreOptions says of one option besides its name, type and default."""

    flags: tuple[str, ...]  # its command-line flags: the first is the name error messages use
    help: str  # its command-line help
    check: Callable[[str, object], None] | None = None  # check(name, value): UsageError where it cannot work
    saved: bool = True  # saved in the run folder (parts/run.json, shards/plan.json): `resume` takes it from there
    before: object = NOT_SET  # the value a run saved before the option existed was scored with
    metadata: str | None = None  # the output metadata key that records what the option did
    metadata_before: str | None = None  # that key's value in the files of a run from before the option existed
    scorer: bool = False  # a keyword of Scorer
    ray_only: bool = False  # a setting of `ray` runs only: given without it, a usage error
    show_default: bool = True  # the command-line help shows the default


def _option(default: object, *flags: str, help: str, **spec: object) -> object:
    """A ScoreOptions field: its default and its Option."""
    return field(default=default, metadata={"option": Option(flags, help, **spec)})


def _at_least(low: int) -> Callable[[str, object], None]:
    """A check that a count (None: the default) is at least `low`."""

    def check(name: str, value: object) -> None:
        if value is not None and value < low:
            raise UsageError(f"must be at least {low}, not {value}", arg=name)

    return check


def _one_of(*choices: str) -> Callable[[str, object], None]:
    """A check that a value is one of `choices`."""

    def check(name: str, value: object) -> None:
        if value not in choices:
            raise UsageError(f"must be one of {', '.join(choices)}, not {value!r}", arg=name)

    return check


def _checked(check: Callable[..., None]) -> Callable[[str, object], None]:
    """A check of base/checks.py, which names its own argument."""
    return lambda name, value: check(value)


@dataclass(frozen=True)
class ScoreOptions:
    """Every option of a scoring run (see `scorecli score --help` for each, and the README's Usage).

    A value that cannot work, or a combination that cannot, raises UsageError as the options are made.
    """

    model: Optional[str] = _option(
        None,
        "--model",
        "-m",
        help="Hub id (gpt2), local model folder, or .gguf file. Default: the embedded SmolLM2-135M.",
        metadata="model",
    )
    text_field: Optional[str] = _option(
        None,
        "--text-field",
        help="Field (column) holding the text. Default: text.",
        show_default=False,
        metadata="text_field",
    )
    id_field: str = _option(
        "id", "--id-field", help="Field holding the document id (optional in the data).", metadata="id_field"
    )
    prompt_field: Optional[str] = _option(
        None,
        "--prompt-field",
        help="Field holding a prompt: context only, not scored. Needs --response-field.",
        metadata="prompt_field",
    )
    response_field: Optional[str] = _option(
        None,
        "--response-field",
        help="Field holding the response that follows the prompt: the scored part.",
        metadata="response_field",
    )
    messages_field: Optional[str] = _option(
        None,
        "--messages-field",
        help="Field holding a chat ([{role, content}, ...]), rendered with the model's chat template.",
        metadata="messages_field",
    )
    words_field: Optional[str] = _option(
        None,
        "--words-field",
        help="Field holding the text cut into words or regions (a list of strings, joined by single spaces): "
        "each is one word in words.parquet. Instead of --text-field.",
        metadata="words_field",
    )
    choices_field: Optional[str] = _option(
        None,
        "--choices-field",
        help="Field holding the choices (an array of strings), or comma-separated fields holding one each: "
        "each scored after --prompt-field or --messages-field (or BOS alone); writes choices.parquet.",
        metadata="choices_field",
    )
    label_field: Optional[str] = _option(
        None,
        "--label-field",
        help="With --choices-field: field holding the right choice, its 0-based index or its text.",
        metadata="label_field",
    )
    unconditional: bool = _option(
        False,
        "--unconditional",
        help="With --choices-field: also score each choice after BOS alone (unconditional_sum_logprob, pmi).",
        metadata="unconditional",
    )
    roles: str = _option(
        "assistant", "--roles", help="Comma-separated chat roles whose turns are scored.", metadata="roles"
    )
    all_tokens: bool = _option(
        False,
        "--all-tokens",
        help="Also write prompt (context) token rows, with is_response false.",
        metadata="all_tokens",
        scorer=True,
    )
    words: bool = _option(
        False, "--words", help="Also write words.parquet: surprisal per word, plain and corrected.", metadata="words"
    )
    batch_tokens: Optional[int] = _option(
        None,
        "--batch-tokens",
        help="Token budget per batch, padding included. Default: 1024 on CPU, 16384 on CUDA.",
        metadata="batch_tokens",
        scorer=True,
    )
    max_length: Optional[int] = _option(
        None,
        "--max-length",
        help="Window length: the longest sequence fed to the model, BOS included. Default: the model's context.",
        metadata="max_length",
        scorer=True,
    )
    stride: Optional[int] = _option(
        None,
        "--stride",
        help="Tokens between the starts of a long text's windows. Default: half of --max-length.",
        metadata="stride",
        scorer=True,
    )
    truncate: bool = _option(
        False,
        "--truncate",
        help="Cut texts longer than --max-length instead of scoring them in windows.",
        metadata="long_texts",
        scorer=True,
    )
    bos: bool = _option(
        True,
        "--bos/--no-bos",
        help="Prepend BOS (EOS where there is none) so the first token is scored.",
        metadata="bos",
        scorer=True,
    )
    device: str = _option(
        "auto", "--device", help="auto, cpu, cuda or mps.", check=_checked(check_device), metadata="device"
    )
    dtype: str = _option(
        "auto",
        "--dtype",
        help="auto (float32; bfloat16 on CUDA), float32, bfloat16 or float16.",
        check=_checked(check_dtype),
        metadata="dtype",
    )
    top_k: int = _option(
        0,
        "--top-k",
        help="Also write the K most likely next tokens at each position (top_ids, top_logprobs, top_tokens).",
        check=_at_least(0),
        metadata="top_k",
        scorer=True,
    )
    ref_model: Optional[str] = _option(
        None,
        "--ref-model",
        help="A reference model (as --model, same tokenizer): adds ref_logprob, ref_entropy, kl and reverse_kl.",
        metadata="ref_model",
    )
    ref_dtype: Optional[str] = _option(
        None, "--ref-dtype", help="The reference model's dtype. Default: --dtype.", metadata="ref_dtype"
    )
    head_dtype: str = _option(
        "auto",
        "--head-dtype",
        help="The output layer's products: float32 (exact), bfloat16 or float16 (faster), or auto "
        "(a 16-bit model's own dtype where such products are fast here, else float32).",
        check=_checked(check_head_dtype),
        before="float32",
        metadata="head_dtype",
        metadata_before="float32",
        scorer=True,
    )
    ref_revision: Optional[str] = _option(
        None,
        "--ref-revision",
        help="The reference model's hub revision (as --revision). Default: its default branch, not --revision.",
        metadata="ref_revision",
    )
    on_error: Literal["stop", "skip"] = _option(
        "stop",
        "--on-error",
        help="stop at the first bad record, or skip bad records into errors.jsonl.",
        check=_one_of("stop", "skip"),
    )
    limit: Optional[int] = _option(
        None, "--limit", help="Score only the first N records (a quick look).", check=_at_least(1), metadata="limit"
    )
    threads: Optional[int] = _option(
        None,
        "--threads",
        help="CPU threads to use (batches run side by side, one thread each). Default: all cores.",
        check=_at_least(1),
        metadata="threads",
        scorer=True,
    )
    compile: str = _option(
        "auto",
        "--compile",
        help="Compile the model's decoder layers on the CPU: on, off or auto (off on the CPU for now).",
        check=_checked(check_compile),
        metadata="compile",
        scorer=True,
    )
    revision: Optional[str] = _option(
        None,
        "--revision",
        help="Hub model revision: a branch, tag or commit hash. Default: main.",
        metadata="revision",
    )
    trust_remote_code: bool = _option(
        False,
        "--trust-remote-code",
        help="Run the model's own code from the hub (only for models you trust).",
        metadata="trust_remote_code",
    )
    join: Optional[str] = _option(
        None,
        "--join",
        help="Score the whole input as one document, its texts joined by this (escapes decoded).",
        metadata="join",
    )
    keep_fields: Optional[str] = _option(
        None,
        "--keep-fields",
        help="Comma-separated input fields (columns) to copy into sequences.parquet and the JSON lines.",
        metadata="keep_fields",
    )
    ray: bool = _option(
        False,
        "--ray",
        help=f"Score on a Ray cluster, one task per shard of the input ({RAY_INSTALL}).",
        saved=False,
        metadata="shards",
    )
    ray_address: Optional[str] = _option(
        None,
        "--ray-address",
        help="With --ray: join this cluster (host:port, or auto). Default: start a local one.",
        saved=False,
        ray_only=True,
    )
    shards: Optional[int] = _option(
        None,
        "--shards",
        help="With --ray: shards to cut the input into (files, line ranges, row groups). Default: 4 per worker.",
        saved=False,
        ray_only=True,
    )
    workers: Optional[int] = _option(
        None,
        "--workers",
        help="With --ray: shards scored at once. Default: the cluster's CPUs (GPUs) per worker's share.",
        saved=False,
        ray_only=True,
    )
    gpus_per_worker: Optional[float] = _option(
        None,
        "--gpus-per-worker",
        help="With --ray: GPUs per task. Default: 1 where CUDA is present, else 0.",
        saved=False,
        ray_only=True,
    )
    prefix_sharing: bool = _option(
        True,
        "--prefix-sharing/--no-prefix-sharing",
        help="Feed the start that documents of a read-ahead buffer share once, reusing its key/value cache.",
        before=False,
        metadata="prefix_sharing",
        metadata_before="off",
        scorer=True,
    )
    min_shared_prefix: int = _option(
        DEFAULT_MIN_SHARED_PREFIX,
        "--min-shared-prefix",
        help="The fewest tokens documents must share at their start for it to be fed once.",
        check=_at_least(2),
        metadata="prefix_sharing",
        scorer=True,
    )

    def __post_init__(self) -> None:
        """Check every value, then the combinations: UsageError naming the option where one cannot work."""
        check_limits(self.batch_tokens, self.max_length, self.stride, self.truncate)
        for name, spec in SPECS.items():
            if spec.check is not None:
                spec.check(name, getattr(self, name))
        if self.ref_model is not None and self.ref_dtype is not None:
            check_dtype(self.ref_dtype, arg="ref_dtype")
        self.input_fields()
        if not self.role_names():
            raise UsageError(f"must name at least one chat role, not {self.roles!r}", arg="roles")

    def input_fields(self) -> Fields:
        """The record fields to read, checking that the options name one consistent way to find the text."""
        text, prompt, response, messages = self.text_field, self.prompt_field, self.response_field, self.messages_field
        words = self.words_field
        choices = self.choice_fields()
        if not choices and (self.label_field is not None or self.unconditional):
            name = "label_field" if self.label_field is not None else "unconditional"
            raise UsageError("goes with `choices_field`: it is about choices", arg=name)
        if choices:
            for name in ("text_field", "words_field", "response_field", "join"):
                if getattr(self, name) is not None:
                    raise UsageError(
                        "cannot be combined with `choices_field`, whose choices are the scored text", arg=name
                    )
            if prompt is not None and messages is not None:
                raise UsageError(
                    "cannot be combined with `prompt_field`: both are the choices' context", arg="messages_field"
                )
            if self.unconditional and not self.bos:
                raise UsageError("needs `bos`: a choice alone is scored from BOS", arg="unconditional")
            response = None
        if words is not None and (text is not None or messages is not None or prompt is not None):
            other = "`text_field`" if text is not None else "`messages_field`" if messages else "`prompt_field`"
            raise UsageError(f"cannot be combined with {other}: both say where the text is", arg="words_field")
        if text is not None and (messages is not None or prompt is not None):
            other = "`messages_field`" if messages is not None else "`prompt_field`/`response_field`"
            raise UsageError(f"cannot be combined with {other}, which say where the text is", arg="text_field")
        if not choices and (prompt is None) != (response is None):
            raise UsageError("`prompt_field` and `response_field` go together: give both or neither")
        if messages is not None and prompt is not None:
            raise UsageError("cannot be combined with `prompt_field`/`response_field`", arg="messages_field")
        # Imported here: inputs/kept.py and data/scores.py need pyarrow, which the command line imports later.
        from scorecli.data.scores import SEQUENCE_COLUMNS
        from scorecli.inputs.kept import parse_keep_fields

        taken = [c.name for c in SEQUENCE_COLUMNS]
        if choices:
            from scorecli.data.choices import SEQUENCE_NAMES

            taken += [*SEQUENCE_NAMES, "choices"]  # the JSON lines' record holds its choices under "choices"
        keep = parse_keep_fields(self.keep_fields, taken, self.id_field)
        text = text or "text"
        return Fields(
            text=text,
            id=self.id_field,
            prompt=prompt,
            response=response,
            messages=messages,
            keep=keep,
            words=words,
            choices=choices,
            label=self.label_field,
            unconditional=self.unconditional,
        )

    def choice_fields(self) -> tuple[str, ...]:
        """The fields `choices_field` names (none without it)."""
        return parse_choice_fields(self.choices_field)

    def role_names(self) -> tuple[str, ...]:
        """The chat roles whose turns are scored."""
        return tuple(r.strip() for r in self.roles.split(",") if r.strip())

    @property
    def skip_bad(self) -> bool:
        """Whether bad records are skipped (into errors.jsonl), rather than stopping the run."""
        return self.on_error == "skip"

    def scorer_kwargs(self) -> dict:
        """The Scorer's keywords these options set."""
        return {name: getattr(self, name) for name, spec in SPECS.items() if spec.scorer}

    def model_kwargs(self) -> dict:
        """load_model's keywords for the model."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "revision": self.revision,
            "trust_remote_code": self.trust_remote_code,
        }

    def ref_kwargs(self) -> dict:
        """load_model's keywords for the reference model: the model's, but for its own dtype and revision."""
        return {**self.model_kwargs(), "dtype": self.ref_dtype or self.dtype, "revision": self.ref_revision}

    def saved(self, inputs: list[str] | str) -> dict:
        """The options a run saves in its folder, as JSON values, after its INPUT; local paths made absolute."""
        values = {name: getattr(self, name) for name, spec in SPECS.items() if spec.saved}
        return {
            "input": resolved_inputs(inputs),
            **values,
            "model": resolved_path(self.model),
            "ref_model": resolved_path(self.ref_model),
        }

    def resumed(self, saved: Mapping, given: Collection[str] | None = None) -> ScoreOptions:
        """The options of a resumed run: those `given` from these, the others as the run was started with.

        `given` names the options set on purpose (None: those that differ from their defaults). An option a
        run saved by an older version lacks is as it was before it existed, where there is such a value.
        """
        given = self.given() if given is None else set(given)
        saved = {**OPTIONS_BEFORE_THEY_EXISTED, **saved}
        kept = {name: saved[name] for name in SPECS if name in saved and name not in given}
        return replace(self, **kept)

    def given(self) -> set[str]:
        """The options that differ from their defaults."""
        return {name for name in SPECS if getattr(self, name) != DEFAULTS[name]}

    @classmethod
    def from_saved(cls, saved: Mapping) -> ScoreOptions:
        """The options a run folder saved (`saved`), those it lacks as before they existed, else their defaults."""
        return cls().resumed(saved, given=())


SPECS: dict[str, Option] = {f.name: f.metadata["option"] for f in fields(ScoreOptions)}
DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(ScoreOptions)}
TYPES: dict[str, object] = typing.get_type_hints(ScoreOptions)
# The options, and the metadata, of a run saved by an older version that lacks them: it was scored that way.
OPTIONS_BEFORE_THEY_EXISTED = {name: spec.before for name, spec in SPECS.items() if spec.before is not NOT_SET}
METADATA_BEFORE_IT_EXISTED = {
    **{spec.metadata: spec.metadata_before for spec in SPECS.values() if spec.metadata_before is not None},
    # Not an option: what the run's words were corrected by (data/words.py), none before the correction existed.
    "word_correction": "none (a run of a scorecli before the correction of word surprisal)",
}


def flags() -> dict[str, str]:
    """Each option's command-line flag, by its name, for error messages (`--bos/--no-bos` as --bos)."""
    return {name: spec.flags[0].split("/")[0] for name, spec in SPECS.items()}


def resolved_path(path: str | None) -> str | None:
    """A local path as an absolute one (a hub id or stdin as it is), to compare paths typed from anywhere."""
    if path is None or path == STDIN or not os.path.exists(path):
        return path
    return str(Path(path).resolve())


def resolved_inputs(inputs: list[str] | str) -> list[str]:
    """The inputs with local paths and globs made absolute (a run saved before INPUT was a list names one)."""
    args = [inputs] if isinstance(inputs, str) else inputs
    return [str(Path(arg).resolve()) if _is_local_pattern(arg) else resolved_path(arg) for arg in args]


def _is_local_pattern(arg: str) -> bool:
    """Whether an input is a glob of local paths (read relative to the working folder)."""
    from scorecli.inputs.corpus import is_pattern

    return arg != STDIN and "://" not in arg and is_pattern(arg)
