"""The `scorecli` command line: options in, library calls, errors and summaries out."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.status import Status
from rich.text import Text
from typer.core import TyperGroup

from scorecli import __version__, interrupts
from scorecli.checks import (
    check_compile,
    check_counts,
    check_device,
    check_dtype,
    check_head_dtype,
    check_limits,
)
from scorecli.corpus import (
    corpus_bytes,
    corpus_metadata,
    count_corpus,
    decode_separator,
    expand_inputs,
    is_pattern,
    read_corpus,
)
from scorecli.errors import InputError, OutputError, ScorecliError, UsageError, one_line, shown
from scorecli.inputs import STDIN, Fields, Record, Rejected, display_name
from scorecli.prefix import DEFAULT_MIN_SHARED_PREFIX
from scorecli.summary import Summary, render

# torch, transformers and pyarrow load inside the command, after Ctrl-C is deferred (see interrupts.py), so
# that `--help` stays fast and an early Ctrl-C never lands inside their native initialisation.
if TYPE_CHECKING:
    from scorecli.bootstrap import DocSums
    from scorecli.engine import DocScore, ScoreProgress, Scorer
    from scorecli.kept import KeptTypes
    from scorecli.models import LoadStep
    from scorecli.outputs import JsonlOutput
    from scorecli.runs import RunFolder, RunState, RunWriter


class _OneLineErrors(TyperGroup):
    """Click's own usage errors (a bad option value, a missing INPUT) as one line, like scorecli's errors."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        """Show the help for `scorecli` alone: it asks what the tool can do, which is no error."""
        return super().parse_args(ctx, args or ["--help"])

    def main(self, *args: object, standalone_mode: bool = True, **kwargs: object) -> object:
        """Run the CLI, turning usage errors into `scorecli: error: …` and exit code 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"scorecli: error: {e.format_message()}{hint}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("scorecli: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Score text with causal language models: per-token log-probabilities and entropies.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The command-line flag of each library argument (or argument setting) that error messages name.
FLAGS = {
    "bos=False": "--no-bos",
    "messages": "--messages-field",
    "overwrite": "--overwrite",
    "threads": "--threads",
    "compile": "--compile",
    "limit": "--limit",
    "revision": "--revision",
    "trust_remote_code": "--trust-remote-code",
    "model": "--model",
    "out_dir": "--out",
    "device": "--device",
    "dtype": "--dtype",
    "batch_tokens": "--batch-tokens",
    "max_length": "--max-length",
    "stride": "--stride",
    "truncate": "--truncate",
    "resume": "--resume",
    "top_k": "--top-k",
    "ref_model": "--ref-model",
    "ref_dtype": "--ref-dtype",
    "ref_revision": "--ref-revision",
    "doc": "--doc",
    "doc_id": "--id",
    "by": "--by",
    "out": "--out",
    "rows": "--rows",
    "join": "--join",
    "scores": "--scores",
    "max_perplexity": "--max-perplexity",
    "min_perplexity": "--min-perplexity",
    "buckets": "--buckets",
    "keep_fields": "--keep-fields",
    "ray": "--ray",
    "ray_address": "--ray-address",
    "shards": "--shards",
    "workers": "--workers",
    "gpus_per_worker": "--gpus-per-worker",
    "min_shared_prefix": "--min-shared-prefix",
    "head_dtype": "--head-dtype",
}
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _show_version(value: bool) -> None:
    """Print the version and exit."""
    if value:
        typer.echo(f"scorecli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Show the version."),
) -> None:
    """Score text with causal language models: per-token log-probabilities and entropies."""
    with _reported_errors():
        interrupts.release()  # held by the entry point while the CLI's modules imported


class Rows(str, Enum):
    """Which rows `--out -` writes, one JSON object each."""

    sequences = "sequences"
    tokens = "tokens"
    words = "words"


class OnError(str, Enum):
    """What to do with a record that cannot be scored."""

    stop = "stop"
    skip = "skip"


SCORE_EPILOG = """Examples:
  scorecli score samples/mixed.jsonl -o scores/
  scorecli score data.jsonl -m gpt2 --limit 100 -o -
  scorecli score chats.jsonl --messages-field messages
Exit codes:
  0 done, 2 usage (an option), 3 input (file, line, field),
  4 model, 5 output folder (not empty, nothing to resume),
  130 Ctrl-C / 143 SIGTERM (work saved; resume command shown)"""


@app.command(epilog=SCORE_EPILOG)
def score(
    ctx: typer.Context,
    input: Optional[list[str]] = typer.Argument(
        None,
        metavar="INPUT",
        help="Files (.jsonl, .jsonl.gz, .parquet, .txt), globs, folders or fsspec URLs, read as one corpus; "
        "or - for JSONL on stdin. Optional with --resume.",
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Hub id (gpt2), local model folder, or .gguf file. Default: the embedded SmolLM2-135M.",
    ),
    out: Optional[str] = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder for tokens.parquet and sequences.parquet, or - for JSON lines on stdout. "
        "Default: INPUT's name + .scores (stdout for stdin input).",
    ),
    text_field: Optional[str] = typer.Option(
        None, "--text-field", help="Field (column) holding the text. Default: text.", show_default=False
    ),
    id_field: str = typer.Option("id", "--id-field", help="Field holding the document id (optional in the data)."),
    prompt_field: Optional[str] = typer.Option(
        None, "--prompt-field", help="Field holding a prompt: context only, not scored. Needs --response-field."
    ),
    response_field: Optional[str] = typer.Option(
        None, "--response-field", help="Field holding the response that follows the prompt: the scored part."
    ),
    messages_field: Optional[str] = typer.Option(
        None,
        "--messages-field",
        help="Field holding a chat ([{role, content}, ...]), rendered with the model's chat template.",
    ),
    roles: str = typer.Option("assistant", "--roles", help="Comma-separated chat roles whose turns are scored."),
    all_tokens: bool = typer.Option(
        False, "--all-tokens", help="Also write prompt (context) token rows, with is_response false."
    ),
    words: bool = typer.Option(False, "--words", help="Also write words.parquet: surprisal per word."),
    batch_tokens: Optional[int] = typer.Option(
        None, "--batch-tokens", help="Token budget per batch, padding included. Default: 1024 on CPU, 16384 on CUDA."
    ),
    max_length: Optional[int] = typer.Option(
        None,
        "--max-length",
        help="Window length: the longest sequence fed to the model, BOS included. Default: the model's context.",
    ),
    stride: Optional[int] = typer.Option(
        None, "--stride", help="Tokens between the starts of a long text's windows. Default: half of --max-length."
    ),
    truncate: bool = typer.Option(
        False, "--truncate", help="Cut texts longer than --max-length instead of scoring them in windows."
    ),
    bos: bool = typer.Option(
        True, "--bos/--no-bos", help="Prepend BOS (EOS where there is none) so the first token is scored."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (float32; bfloat16 on CUDA), float32, bfloat16 or float16."
    ),
    top_k: int = typer.Option(
        0,
        "--top-k",
        help="Also write the K most likely next tokens at each position (top_ids, top_logprobs, top_tokens).",
    ),
    ref_model: Optional[str] = typer.Option(
        None,
        "--ref-model",
        help="A reference model (as --model, same tokenizer): adds ref_logprob, ref_entropy, kl and reverse_kl.",
    ),
    ref_dtype: Optional[str] = typer.Option(None, "--ref-dtype", help="The reference model's dtype. Default: --dtype."),
    head_dtype: str = typer.Option(
        "auto",
        "--head-dtype",
        help="The output layer's products: float32 (exact), bfloat16 or float16 (faster), or auto "
        "(a 16-bit model's own dtype where such products are fast here, else float32).",
    ),
    ref_revision: Optional[str] = typer.Option(
        None,
        "--ref-revision",
        help="The reference model's hub revision (as --revision). Default: its default branch, not --revision.",
    ),
    on_error: OnError = typer.Option(
        OnError.stop, "--on-error", help="stop at the first bad record, or skip bad records into errors.jsonl."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out, with its saved INPUT and options."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results in a non-empty output folder."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N records (a quick look)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads to use (batches run side by side, one thread each). Default: all cores."
    ),
    compile: str = typer.Option(
        "auto",
        "--compile",
        help="Compile the model's decoder layers on the CPU: on, off or auto (off on the CPU for now).",
    ),
    revision: Optional[str] = typer.Option(
        None, "--revision", help="Hub model revision: a branch, tag or commit hash. Default: main."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run the model's own code from the hub (only for models you trust)."
    ),
    join: Optional[str] = typer.Option(
        None, "--join", help="Score the whole input as one document, its texts joined by this (escapes decoded)."
    ),
    keep_fields: Optional[str] = typer.Option(
        None,
        "--keep-fields",
        help="Comma-separated input fields (columns) to copy into sequences.parquet and the JSON lines.",
    ),
    ray: bool = typer.Option(
        False, "--ray", help="Score on a Ray cluster, one task per shard of the input (pip install 'scorecli[ray]')."
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="With --ray: join this cluster (host:port, or auto). Default: start a local one."
    ),
    shards: Optional[int] = typer.Option(
        None,
        "--shards",
        help="With --ray: shards to cut the input into (files, line ranges, row groups). Default: 4 per worker.",
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        help="With --ray: shards scored at once. Default: the cluster's CPUs (GPUs) per worker's share.",
    ),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--gpus-per-worker", help="With --ray: GPUs per task. Default: 1 where CUDA is present, else 0."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
    prefix_sharing: bool = typer.Option(
        True,
        "--prefix-sharing/--no-prefix-sharing",
        help="Feed the start that documents of a read-ahead buffer share once, reusing its key/value cache.",
    ),
    min_shared_prefix: int = typer.Option(
        DEFAULT_MIN_SHARED_PREFIX,
        "--min-shared-prefix",
        help="The fewest tokens documents must share at their start for it to be fed once.",
    ),
    rows: Optional[Rows] = typer.Option(
        None,
        "--rows",
        help="With --out -: one JSON line per document (sequences), per token (tokens) or per word (words). "
        "Default: sequences.",
    ),
) -> None:
    """Score every token of every text in INPUT and write per-token and per-sequence scores."""
    console = Console(stderr=True, quiet=quiet)
    # Read by name from here on: a resumed run's options are those saved in its folder, where not given.
    options = {name: value for name, value in locals().items() if name in _SAVED_OPTIONS}
    with _reported_errors(), ExitStack() as cleanup:
        with interrupts.deferred("tables"):  # pyarrow's native parts, held like torch's below
            from scorecli.kept import kept_types
            from scorecli.runs import check_resume
        # Options, input and output folder are all checked before torch imports and the model loads, so
        # mistakes fail at once.
        fields, role_names = _checked_options(options)
        from scorecli.scaleout import is_sharded_run

        ray_options = {
            "ray_address": ray_address,
            "shards": shards,
            "workers": workers,
            "gpus_per_worker": gpus_per_worker,
        }
        if ray or (resume and out not in (None, STDIN) and is_sharded_run(out)):
            _score_on_ray(ctx, options, console, out, resume, overwrite, rows, ray_options)
            return
        for name, value in ray_options.items():
            if value is not None:
                raise UsageError("goes with --ray (scoring on a Ray cluster)", arg=name)
        input = input or None  # no INPUT: the resumed run's own
        if input is None and not resume:
            raise UsageError("Missing argument 'INPUT'.")
        if input is None and out is None:
            raise UsageError("--resume without INPUT needs --out DIR, the folder of the run to resume")
        sources = expand_inputs(input) if input is not None else []
        source = sources[0] if len(sources) == 1 else ""  # "": a corpus of several files
        out = out or (STDIN if source == STDIN else _default_out(input))
        _check_run_options(source, out, resume, overwrite, words, rows)
        run = _Run(sources[0] if sources else "", out, console, (rows or Rows.sequences).value)
        cleanup.callback(run.release)
        state = run.claim(overwrite=overwrite, resume=resume)
        if state is not None:
            # Options not given are those the run was started with; those given must agree (check_resume).
            options = _resumed_options(ctx, options, state.options)
            fields, role_names = _checked_options(options)
            input = options["input"]
            input = [input] if isinstance(input, str) else input  # a run saved before INPUT became a list
            sources = expand_inputs(input)
            source = sources[0] if len(sources) == 1 else ""
            _check_run_options(source, out, resume, overwrite, options["words"], rows)
            run.source = sources[0]
        separator = _join_separator(options["join"], fields, options["on_error"])
        if fields.keep and separator is not None:
            raise UsageError("--keep-fields cannot be combined with --join, whose one document has no fields")
        kept = kept_types(sources, fields.keep)
        records = read_corpus(
            sources,
            fields,
            on_error=run.reject if options["on_error"] is OnError.skip else None,
            skip=state.records_done if state else 0,
            limit=options["limit"],
            join=separator,
        )
        selected = _Selected(records, fields, role_names)
        records = run.peek(iter(selected))  # reads and validates the first record before any model work
        with interrupts.deferred("imports"):
            from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (their native parts too)

            from scorecli.engine import Scorer
            from scorecli.models import load_model
        interrupts.checkpoint("model")
        with console.status("loading model…") as status:
            loaded = load_model(
                options["model"],
                device=options["device"],
                dtype=options["dtype"],
                revision=options["revision"],
                trust_remote_code=options["trust_remote_code"],
                progress=lambda step: _loading(console, status, step),
            )
        ref = None
        if options["ref_model"] is not None:
            with console.status("loading reference model…") as status:
                ref = load_model(
                    options["ref_model"],
                    device=options["device"],
                    dtype=options["ref_dtype"] or options["dtype"],
                    revision=options["ref_revision"],
                    trust_remote_code=options["trust_remote_code"],
                    progress=lambda step: _loading(console, status, step),
                    arg="ref_model",
                )

        records_total = count_corpus(sources) if separator is None or options["limit"] else None
        scorer = Scorer(
            loaded.model,
            loaded.tokenizer,
            bos=options["bos"],
            max_length=options["max_length"],
            stride=options["stride"],
            truncate=options["truncate"],
            all_tokens=options["all_tokens"],
            roles=role_names,
            batch_tokens=options["batch_tokens"],
            threads=options["threads"],
            top_k=options["top_k"],
            ref_model=None if ref is None else ref.model,
            ref_tokenizer=None if ref is None else ref.tokenizer,
            # On stdout, lines are wanted as soon as they exist; a folder run keeps fixed buffers for resume.
            stream=out == STDIN,
            compile=options["compile"],
            expected_tokens=_expected_tokens(sources, options["limit"], records_total),
            prefix_sharing=options["prefix_sharing"],
            min_shared_prefix=options["min_shared_prefix"],
            head_dtype=options["head_dtype"],
        )
        metadata = {
            **loaded.info,
            **({} if ref is None else {f"ref_{k}": v for k, v in ref.info.items()}),
            **scorer.metadata,
            **_input_metadata(sources, fields, separator),
            "scored": _scored(fields, scorer.roles, options["all_tokens"]),
            **({"limit": str(options["limit"])} if options["limit"] else {}),
            **({"keep_fields": json.dumps(fields.keep, ensure_ascii=False)} if fields.keep else {}),
            "words": str(options["words"]).lower(),
            "scorecli_version": __version__,
        }
        if state is not None:
            _check_resumed_input(state, metadata, input, options["model"], options["ref_model"])
            check_resume(state, metadata)
        saved = _saved_options(options, input, options["model"])
        run.start(metadata, options["words"], state, saved, scorer.columns, kept)
        total = 1 if separator is not None else records_total
        run.score(
            scorer,
            records,
            min(total, options["limit"]) if total and options["limit"] else total,
            skip_bad=options["on_error"] is OnError.skip,
            nothing=selected.why_none,
        )
        console.print(render(run.summary.as_dict(), metadata))
        for path in run.written:
            console.print(f"wrote {path}")


def _score_on_ray(
    ctx: typer.Context,
    options: dict,
    console: Console,
    out: str | None,
    resume: bool,
    overwrite: bool,
    rows: Rows | None,
    ray_options: dict,
) -> None:
    """`score --ray`: the same scoring as Ray tasks, one per shard of the input, joined into Parquet datasets.

    With `--out -`, the shards' rows go to stdout as JSON lines, in input order, as the shards complete.
    """
    from scorecli import scaleout

    scaleout.require_ray()
    if out is None:
        raise UsageError("--ray writes Parquet datasets into a folder: give --out DIR (or --out - for JSON lines)")
    if out == STDIN:
        _check_run_options("", out, resume, overwrite, options["words"], rows)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite cannot be used together")
    saved = scaleout.saved_options(out)
    if resume and saved is None:
        if scaleout.is_sharded_run(out):
            console.print(
                f"scorecli: nothing to do: the run in {out} is finished (see: scorecli summary {out})", soft_wrap=True
            )
            return
        raise OutputError(f"{out}: nothing to resume (there is no unfinished --ray run in it)", arg="out_dir")
    if saved is not None and not overwrite:
        options = _resumed_options(ctx, options, saved)
    if options["input"] is None:
        raise UsageError("Missing argument 'INPUT'.")
    input = [options["input"]] if isinstance(options["input"], str) else options["input"]
    if options["join"] is not None:
        raise UsageError("--join scores the input as one document, which cannot be cut into shards: leave out --ray")
    sources = expand_inputs(input)
    if STDIN in sources:
        raise UsageError("--ray needs input files: standard input cannot be cut into shards")
    fields, role_names = _checked_options(options)
    from scorecli.kept import kept_types

    kept = kept_types(sources, fields.keep)
    _check_run_options("", out, False, overwrite, options["words"], rows)
    dtype, device, ref_dtype = options["dtype"], options["device"], options["ref_dtype"] or options["dtype"]
    limit = options["limit"]
    metadata = {
        **_input_metadata(sources, fields, None),
        "scored": _scored(fields, tuple(role_names), options["all_tokens"]),
        **({"limit": str(limit)} if limit else {}),
        **({"keep_fields": json.dumps(fields.keep, ensure_ascii=False)} if fields.keep else {}),
        "words": str(options["words"]).lower(),
        "scorecli_version": __version__,
    }
    load = {"device": device, "revision": options["revision"], "trust_remote_code": options["trust_remote_code"]}
    job = scaleout.Job(
        fields=fields,
        roles=tuple(role_names),
        model=_resolved(options["model"]),
        load={**load, "dtype": dtype},
        scorer={
            **{k: options[k] for k in ("bos", "max_length", "stride", "truncate", "all_tokens", "batch_tokens")},
            **{k: options[k] for k in ("top_k", "compile", "prefix_sharing", "min_shared_prefix", "head_dtype")},
            # The whole input's size decides --compile auto, for every shard alike (and as a single process).
            "expected_tokens": _expected_tokens(sources, limit),
        },
        ref_model=_resolved(options["ref_model"]),
        ref_load={**load, "dtype": ref_dtype, "revision": options["ref_revision"]},
        words=options["words"] or rows is Rows.words,
        skip_bad=OnError(options["on_error"]) is OnError.skip,
        metadata=metadata,
        options=_saved_options(options, input, options["model"]),
        kept=kept,
    )
    progress, advance = _sharded_progress_bar(console)
    command = shlex.join(["scorecli", *sys.argv[1:]])
    run = {
        "address": ray_options["ray_address"],
        "shards": ray_options["shards"],
        "workers": ray_options["workers"],
        "threads": options["threads"],
        "gpus_per_worker": ray_options["gpus_per_worker"],
        "limit": limit,
        "command": command,
        "progress": advance,
    }
    resolved = [_resolved(s) for s in sources]  # workers may run in another folder
    try:
        with interrupts.as_exceptions(), progress:
            if out == STDIN:
                typed = dict(zip(resolved, sources))

                def skipped(rejected: Rejected) -> None:
                    """Report a skipped record under its file's name as typed, as a single process does."""
                    _report_skipped(replace(rejected, source=typed.get(rejected.source, rejected.source)))

                row_kind = (rows or Rows.sequences).value
                result = scaleout.stream_sharded(job, resolved, sys.stdout, row_kind, on_reject=skipped, **run)
            else:
                result = scaleout.score_sharded(job, resolved, Path(out).resolve(), overwrite=overwrite, **run)
    except KeyboardInterrupt as e:
        code = EXIT_TERMINATED if isinstance(e, interrupts.Terminated) else EXIT_INTERRUPTED
        if out == STDIN:
            typer.echo("scorecli: interrupted", err=True)
            raise typer.Exit(code) from None
        typer.echo(
            f"scorecli: interrupted; complete shards and the parts of the others are kept in {out}; "
            f"run the same command again (or: scorecli score -o {shlex.quote(out)} --resume) to go on",
            err=True,
        )
        raise typer.Exit(code) from None
    if result.nothing_to_do:
        console.print(
            f"scorecli: nothing to do: the run in {out} is finished (see: scorecli summary {out})", soft_wrap=True
        )
        return
    console.print(render(result.figures, result.metadata))
    console.print(
        f"Ray: {result.shards_scored} of {result.shards} shards scored in this session "
        f"(cluster ready in {result.ray_seconds:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    for path in result.written if out != STDIN else ():
        console.print(f"wrote {path}", soft_wrap=True)


def _sharded_progress_bar(console: Console) -> tuple[Progress, Callable]:
    """A progress bar over the documents of all shards, with shards done and tokens/s, and its callback."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[docs]}"),
        TextColumn("{task.fields[shards]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task("starting Ray", total=None, docs="", shards="", rate="")
    started: list[float] = []

    def advance(state: object) -> None:
        """Move the bar to where the shards stand."""
        if state.stage != "scoring":
            progress.update(task, description=f"{state.stage} Ray" if state.stage == "starting" else state.stage)
            return
        started or started.append(time.perf_counter())
        elapsed = time.perf_counter() - started[0]
        rate = f"{state.tokens_done / elapsed:,.0f} tok/s" if elapsed > 0 and state.tokens_done else ""
        progress.update(
            task,
            description=f"scoring ({state.workers} workers)",
            completed=state.docs_done,
            total=state.docs_total,
            docs=f"{state.docs_done:,}/{state.docs_total:,} docs",
            shards=f"{state.shards_done}/{state.shards} shards",
            rate=rate,
        )

    return progress, advance


@app.command()
def summary(
    out_dir: str = typer.Argument(..., metavar="DIR", help="The output folder of a finished `scorecli score` run."),
) -> None:
    """Print the summary of a finished run again (on stdout: here it is the output), from DIR/summary.json."""
    with _reported_errors({**FLAGS, "out_dir": ""}):  # DIR is an argument here, not --out
        from scorecli.runs import read_summary

        figures, metadata = read_summary(Path(out_dir))
        Console().print(render(figures, metadata))


@app.command("filter")
def filter_command(
    input: list[str] = typer.Argument(
        ..., metavar="INPUT", help="The input the scores were made from, as given to score."
    ),
    scores: str = typer.Option(..., "--scores", help="The output folder of a finished `scorecli score` run of INPUT."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Output file (same format as INPUT), or with --buckets a folder for head/middle/tail."
    ),
    max_perplexity: Optional[float] = typer.Option(None, "--max-perplexity", help="Keep documents at or below this."),
    min_perplexity: Optional[float] = typer.Option(None, "--min-perplexity", help="Keep documents at or above this."),
    buckets: Optional[str] = typer.Option(
        None, "--buckets", help="Two percentiles (30,60): head, middle and tail files split at the run's perplexities."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary."),
) -> None:
    """Copy the original records of INPUT whose perplexity in a finished run passes a threshold or bucket."""
    console = Console(stderr=True, quiet=quiet)
    with _reported_errors():
        from scorecli.filter import describe, filter_corpus, parse_buckets

        result = filter_corpus(
            expand_inputs(input),
            scores,
            out,
            max_perplexity=max_perplexity,
            min_perplexity=min_perplexity,
            buckets=parse_buckets(buckets) if buckets is not None else None,
            overwrite=overwrite,
        )
        for line in describe(result):
            console.print(line, highlight=False)


class _Run:
    """One `score` run's bookkeeping: the writer, the summary, rejected records, and what to say if it stops."""

    def __init__(self, source: str, out: str, console: Console, rows: str = "sequences") -> None:
        """Prepare a run of `source` into `out` (a folder, or - for stdout, where it writes `rows`)."""
        self.source, self.out, self.console, self.rows = source, out, console, rows
        self.folder: RunFolder | None = None
        self.writer: RunWriter | JsonlOutput | None = None
        self.summary = Summary()
        from scorecli.bootstrap import CORPUS_COLUMNS, DocSums

        self.streamed = DocSums(len(CORPUS_COLUMNS))  # stdout output: the bootstrap's sums, gathered as scored
        self.records_seen = 0
        self.resumed_from = 0
        self.in_flight_saved = 0
        self.done: dict[int, DocScore] = {}
        self.written: list[Path] = []
        self._early_rejects: list[Rejected] = []

    def claim(self, overwrite: bool, resume: bool) -> RunState | None:
        """Lock the output folder for the whole run, before any model work; return the run to resume in it."""
        if self.out == STDIN:
            return None
        from scorecli.runs import claim_out_dir

        command = shlex.join(["scorecli", *sys.argv[1:]])
        self.folder = claim_out_dir(Path(self.out), overwrite=overwrite, resume=resume, command=command)
        return self.folder.state

    def release(self) -> None:
        """Unlock the output folder (removing it if this run created it and wrote nothing)."""
        if self.folder is not None:
            self.folder.release()

    def peek(self, records: Iterator[Record]) -> Iterator[Record]:
        """Read the first record now, so a bad input fails before the model loads."""
        try:
            first = next(records)
        except StopIteration:
            return iter(())
        return itertools.chain([first], records)

    def reject(self, rejected: Rejected) -> None:
        """Keep a bad record out of the run and note it (in errors.jsonl, or on stderr for stdout output)."""
        self.records_seen = max(self.records_seen, rejected.doc + 1)
        if self.writer is None:
            self._early_rejects.append(rejected)
            return
        self.writer.reject(rejected)
        if self.out == STDIN:
            _report_skipped(rejected)

    def start(
        self,
        metadata: dict[str, str],
        words: bool,
        state: RunState | None,
        options: dict,
        stats: tuple[str, ...],
        kept: KeptTypes | None = None,
    ) -> None:
        """Open the output: a new run (saving its `options` for --resume), or the one `state` describes.

        `stats` are the run's token columns, `kept` the input fields it copies into its sequence rows.
        """
        from scorecli.outputs import JsonlOutput
        from scorecli.runs import RunWriter

        if self.out == STDIN:
            self.writer = JsonlOutput(sys.stdout, self.rows, stats, keep=kept or ())
        else:
            self.writer = RunWriter(self.folder, metadata, words, options, stats, kept)
            if state is not None:
                self.done, self.resumed_from = state.in_flight, state.records_done
                if state.summary is not None:
                    self.summary = Summary.from_state(state.summary)
                    self.summary.next_session()
                if "kl" in stats:
                    # The statistics against the reference need every token's values, not just totals.
                    from scorecli.summary import Comparison

                    self.summary.comparison.add(self.writer.saved_tokens(Comparison.COLUMNS))
        for rejected in self._early_rejects:
            self.reject(rejected)

    def score(
        self,
        scorer: Scorer,
        records: Iterable[Record],
        docs_total: int | None,
        skip_bad: bool,
        nothing: Callable[[], UsageError | None] = lambda: None,
    ) -> None:
        """Score the records, saving each finished buffer; on Ctrl-C or SIGTERM say how to resume.

        Where no token at all was scored, `nothing` says whether the options are to blame (a UsageError).
        """
        from scorecli.bootstrap import add_sequence_batches, corpus_intervals
        from scorecli.tables import sequence_table

        progress, advance = _progress_bar(self.console, docs_total, done=self.resumed_from)
        started, seconds = time.perf_counter(), self.summary.seconds
        fed, shared = self.summary.fed_tokens, self.summary.shared_tokens

        def step(state: ScoreProgress) -> None:
            """Move the bar, and count the tokens fed to the model (and spared it) over all sessions."""
            advance(state)
            self.summary.fed_tokens, self.summary.shared_tokens = fed + state.tokens_fed, shared + state.tokens_shared

        def clock() -> None:
            """Count this session's seconds, and add them to those of the sessions before it."""
            self.summary.session_seconds = time.perf_counter() - started
            self.summary.seconds = seconds + self.summary.session_seconds

        on_chat_error = self._chat_reject if skip_bad else None
        try:
            with interrupts.as_exceptions():
                with progress:
                    for docs in scorer.score_buffers(records, progress=step, on_error=on_chat_error, done=self.done):
                        for doc in docs:
                            self.summary.add(doc)
                            if doc.doc not in self.done:  # documents an interrupted session finished are its tokens
                                self.summary.session_tokens += doc.n_tokens
                        if not self._to_folder:
                            add_sequence_batches(self.streamed, sequence_table(docs).to_batches())
                        self.records_seen = max(self.records_seen, docs[-1].doc + 1)
                        clock()
                        self.writer.save(docs, docs[-1].doc + 1, self.summary.state())
                        # Saved: let the buffer go before the next is read, and before the finish joins the parts.
                        del docs, doc
                interrupts.reraise()  # a signal whose exception was swallowed during the last batch
                if self.summary.n_docs and not self.summary.n_tokens and (error := nothing()):
                    if self._to_folder:
                        self.writer.discard()  # a run the options made empty is not worth resuming
                    raise error
                self.summary.n_rejected = self.writer.rejected
                self.summary.intervals = corpus_intervals(self._doc_sums())
                self.written = self.writer.finish(self.records_seen, self.summary.as_dict(), errors_file=skip_bad)
        except KeyboardInterrupt as e:
            from scorecli.engine import ScoringInterrupted

            finished = []
            if isinstance(e, ScoringInterrupted):  # it carries the finished documents of the buffer in flight
                finished, e = e.finished, e.interrupt
            code = EXIT_TERMINATED if isinstance(e, interrupts.Terminated) else EXIT_INTERRUPTED
            if getattr(self.writer, "finished", False):  # the finish holds signals until it is done
                typer.echo(
                    f"scorecli: interrupted as the run finished; its results are complete in {self.out}", err=True
                )
                raise typer.Exit(code) from None
            if self._to_folder and (finished or self.writer.parts):
                clock()  # the time up to the interrupt counts in the resumed run's wall time
                self.writer.save_in_flight(finished, self.summary.state())
                self.in_flight_saved = len(finished)
            self.writer.abort()
            typer.echo(f"scorecli: {self._stopped('interrupted')}", err=True)
            raise typer.Exit(code) from None
        except ScorecliError as e:
            self.writer.abort()
            if isinstance(e, InputError) and self._saved_docs() and os.path.isfile(self.source):
                # A bad record: the same command with --on-error skip resumes past it.
                command = self._resume_command("--on-error", "skip")
                saved = f" ({self._saved_docs():,} documents before it are saved in {self.out}; resume with: {command})"
                raise e.extended(saved) from None
            raise e.extended(self._saved_note()) from None
        except BaseException:
            self.writer.abort()
            raise

    def _doc_sums(self) -> DocSums:
        """Every scored document's sums for the bootstrap: from the saved parts, so a resumed run sees all."""
        from scorecli.bootstrap import sequence_sums
        from scorecli.runs import SEQUENCES_FILE

        if self._to_folder:
            return sequence_sums(self.writer.part_files(SEQUENCES_FILE))
        return self.streamed

    @property
    def _to_folder(self) -> bool:
        """Whether results go to a run folder (which keeps saved parts), rather than stdout."""
        return self.writer is not None and self.out != STDIN

    def _chat_reject(self, record: Record, reason: str) -> None:
        """Note a conversation the chat template refused."""
        raw = json.dumps([{"role": r, "content": c} for r, c in record.messages or ()], ensure_ascii=False)
        self.reject(Rejected(record.doc, display_name(self.source), record.line, reason, raw))

    def _saved_docs(self) -> int:
        """How many finished documents the output folder holds for a resumed run."""
        if not self._to_folder or not self.writer.parts_dir.is_dir():
            return 0
        return self.writer.docs_saved + self.in_flight_saved

    def _saved_note(self) -> str:
        """Where the documents finished before a failure are, if anywhere."""
        if not self._saved_docs():
            return ""
        return f" ({self._saved_docs():,} documents scored before it are saved in {self.out}; see --resume)"

    def _stopped(self, how: str) -> str:
        """The message for a run stopped by a signal: what is saved and the command that resumes it."""
        if not self._to_folder:
            return how
        if not self._saved_docs():
            return f"{how} before the first documents were saved; nothing to resume"
        saved = f"{how} after {self._saved_docs():,} documents, saved in {self.out}"
        if not os.path.isfile(self.source):
            return f"{saved}; the input is not a regular file, so the run cannot be resumed"
        return f"{saved}; resume with:\n  {self._resume_command()}"

    def _resume_command(self, *extra: str) -> str:
        """The command line that resumes this run (its input and options are saved in its folder)."""
        return shlex.join(["scorecli", "score", "-o", self.out, "--resume", *extra])


def _report_skipped(rejected: Rejected) -> None:
    """Say on stderr that a record was skipped (with results on stdout, there is no errors.jsonl to hold it)."""
    where = f"{shown(rejected.source)}: line {rejected.line}"
    typer.echo(f"scorecli: skipped {where}: {one_line(rejected.reason)}", err=True)


class _Selected:
    """The records as read, noting what the options select in them, to explain a run that scores nothing."""

    def __init__(self, records: Iterator[Record], fields: Fields, roles: list[str]) -> None:
        """Watch `records`, read with `fields`, for turns of `roles` and non-empty responses."""
        self.records, self.fields, self.roles = records, fields, set(roles)
        self.roles_seen: set[str] = set()
        self.selected = False

    def __iter__(self) -> Iterator[Record]:
        """The records, unchanged."""
        for record in self.records:
            if record.messages is not None:
                self.roles_seen.update(role for role, _ in record.messages)
                self.selected |= any(role in self.roles and content for role, content in record.messages)
            elif record.spans is not None:
                self.selected |= any(end > start for start, end in record.spans)
            yield record

    def why_none(self) -> UsageError | None:
        """Where the options, not the data, left nothing to score: why, as a usage error."""
        if self.selected:
            return None
        if self.fields.messages:
            roles = ", ".join(sorted(self.roles))
            seen = ", ".join(sorted(self.roles_seen)) or "none"
            return UsageError(
                f"--roles {roles}: no conversation has a turn with these roles, so nothing was scored "
                f"(roles in the data: {seen})"
            )
        if self.fields.prompt:
            return UsageError(
                f"--response-field {self.fields.response}: the response is empty in every record, so nothing was scored"
            )
        return None


# The options a run saves in its output folder, so that `score --resume -o DIR` needs no other.
_SAVED_OPTIONS = (
    "input",
    "model",
    "text_field",
    "id_field",
    "prompt_field",
    "response_field",
    "messages_field",
    "roles",
    "all_tokens",
    "words",
    "batch_tokens",
    "max_length",
    "stride",
    "truncate",
    "bos",
    "device",
    "dtype",
    "on_error",
    "limit",
    "threads",
    "revision",
    "trust_remote_code",
    "join",
    "top_k",
    "ref_model",
    "ref_dtype",
    "ref_revision",
    "keep_fields",
    "compile",
    "prefix_sharing",
    "min_shared_prefix",
    "head_dtype",
)


def _expected_tokens(sources: list[str], limit: int | None, records: int | None = None) -> int | None:
    """The tokens --compile auto weighs, from the input's size; `records`, where already counted, spares a count."""
    from scorecli.compiled import expected_tokens

    if limit and records is None:
        records = count_corpus(sources)
    return expected_tokens(corpus_bytes(sources), records, limit)


def _checked_options(options: dict) -> tuple[Fields, list[str]]:
    """Check the option values and combinations that need no model (nor torch); return the fields and chat roles."""
    check_limits(options["batch_tokens"], options["max_length"], options["stride"], options["truncate"])
    _check_at_least_one(limit=options["limit"])
    check_counts(options["min_shared_prefix"], options["threads"], options["top_k"])
    check_compile(options["compile"])
    check_device(options["device"])
    check_dtype(options["dtype"])
    check_head_dtype(options["head_dtype"])
    if options["ref_model"] is not None and options["ref_dtype"] is not None:
        check_dtype(options["ref_dtype"], arg="ref_dtype")
    fields = _fields(
        *(options[k] for k in ("text_field", "id_field", "prompt_field", "response_field")), options["messages_field"]
    )
    from scorecli.kept import parse_keep_fields
    from scorecli.scores import SEQUENCE_COLUMNS

    keep = parse_keep_fields(options["keep_fields"], (c.name for c in SEQUENCE_COLUMNS))
    fields = replace(fields, keep=keep)
    role_names = [r.strip() for r in options["roles"].split(",") if r.strip()]
    if not role_names:
        raise UsageError(f"--roles must name at least one chat role, not {options['roles']!r}")
    return fields, role_names


def _resolved(path: str | None) -> str | None:
    """A local path as an absolute one (a hub id or stdin as it is), to compare paths typed from anywhere."""
    if path is None or path == STDIN or not os.path.exists(path):
        return path
    return str(Path(path).resolve())


def _saved_options(options: dict, input: list[str], model: str | None) -> dict:
    """The options to save in a run's folder, as JSON values, with local paths resolved."""
    saved = {k: (v.value if isinstance(v, Enum) else v) for k, v in options.items()}
    return {
        **saved,
        "input": _resolved_inputs(input),
        "model": _resolved(model),
        "ref_model": _resolved(saved["ref_model"]),
    }


def _resolved_inputs(input: list[str] | str) -> list[str]:
    """The INPUT arguments with local paths resolved (a run saved before INPUT became a list names one)."""
    return [_resolved(arg) for arg in ([input] if isinstance(input, str) else input)]


def _resumed_options(ctx: typer.Context, given: dict, saved: dict) -> dict:
    """The options of a resumed run: those given on the command line, else those the run was started with.

    An option a run saved by an older version lacks is as it was before it existed, where there is such a value.
    """
    from scorecli.runs import OPTIONS_BEFORE_THEY_EXISTED

    saved = {**OPTIONS_BEFORE_THEY_EXISTED, **saved}
    options = {}
    for name, value in given.items():
        source = ctx.get_parameter_source(name)
        explicit = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        options[name] = value if explicit or name not in saved else saved[name]
    options["on_error"] = OnError(options["on_error"])
    return options


def _check_resumed_input(
    state: RunState, metadata: dict[str, str], input: list[str], model: str | None, ref_model: str | None = None
) -> None:
    """Compare the input and model paths of a resumed run as absolute paths, however they were typed.

    Where they agree, the metadata names them as the first session did, so the rest of it must match exactly.
    """
    was = state.options.get("input")
    now = _resolved_inputs(input)
    if was is not None and _resolved_inputs(was) != now:
        shown_was, shown_now = (v[0] if len(v) == 1 else v for v in (_resolved_inputs(was), now))
        raise OutputError(f": the run was started with input {shown_was!r}, not {shown_now!r}", arg="resume")
    if "input" in state.metadata and was is not None:
        metadata["input"] = state.metadata["input"]
    for key, path in (("model", model), ("ref_model", ref_model)):
        if key in state.metadata and state.options.get(key, path) == _resolved(path):
            metadata[key] = state.metadata[key]


def _fields(text: str | None, id_: str, prompt: str | None, response: str | None, messages: str | None) -> Fields:
    """The record fields to read, checking that the options name one consistent way to find the text."""
    if text is not None and (messages is not None or prompt is not None):
        other = "--messages-field" if messages is not None else "--prompt-field/--response-field"
        raise UsageError(f"--text-field cannot be combined with {other}, which say where the text is")
    if (prompt is None) != (response is None):
        raise UsageError("--prompt-field and --response-field go together: give both or neither")
    if messages is not None and prompt is not None:
        raise UsageError("--messages-field cannot be combined with --prompt-field/--response-field")
    return Fields(text=text or "text", id=id_, prompt=prompt, response=response, messages=messages)


def _check_run_options(source: str, out: str, resume: bool, overwrite: bool, words: bool, rows: Rows | None) -> None:
    """Reject combinations of input, output and run options that cannot work."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite cannot be used together")
    if out == STDIN and resume:
        raise UsageError("--resume needs an output folder (--out DIR), not stdout")
    if out == STDIN and words:
        raise UsageError("--words needs an output folder (--out DIR); on stdout, --rows words writes word rows")
    if out != STDIN and rows is not None:
        raise UsageError("--rows is for --out - (JSON lines on stdout); an output folder gets every table")
    if resume and source == STDIN:
        raise UsageError("--resume needs an input file: standard input cannot be checked or skipped through")


def _input_metadata(sources: list[str], fields: Fields, join: str | None) -> dict[str, str]:
    """The inputs and the fields read from them, as metadata; files' sizes and times identify them on resume."""
    meta = corpus_metadata(sources)
    if join is not None:
        meta["join"] = json.dumps(join, ensure_ascii=False)
    meta["id_field"] = str(fields.id)
    if fields.messages:
        meta["messages_field"] = fields.messages
    elif fields.prompt:
        meta["prompt_field"], meta["response_field"] = fields.prompt, fields.response
    else:
        meta["text_field"] = fields.text
    return meta


def _scored(fields: Fields, roles: tuple[str, ...], all_tokens: bool) -> str:
    """Which tokens count in the statistics, in words, for the metadata."""
    rows = " (token rows for all tokens)" if all_tokens else ""
    if fields.messages:
        return f"chat turns of roles {','.join(roles)} in field '{fields.messages}'{rows}"
    if fields.prompt:
        return f"field '{fields.response}' after field '{fields.prompt}'{rows}"
    return "all tokens"


def _progress_bar(
    console: Console, docs_total: int | None, done: int = 0
) -> tuple[Progress, Callable[[ScoreProgress], None]]:
    """A progress bar over scored tokens, with documents done and tokens/s, and the callback that moves it."""
    # Tokens, not documents, measure progress: long texts go first, so a count of documents would
    # make the time left look far longer than it is.
    docs = "{task.fields[docs]:,}" + (f"/{docs_total:,}" if docs_total else "") + " docs"
    progress = Progress(
        SpinnerColumn(),
        TextColumn("scoring"),
        BarColumn(),
        TextColumn(docs),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        # Off a terminal the bar cannot be redrawn, and stopping it would leave a stray blank line.
        disable=not console.is_terminal,
    )
    task = progress.add_task("scoring", total=None, docs=0, rate="")
    started = time.perf_counter()

    def advance(state: ScoreProgress) -> None:
        """Move the bar to where scoring stands."""
        elapsed = time.perf_counter() - started
        rate = f"{state.tokens_done / elapsed:,.0f} tok/s" if elapsed > 0 and state.tokens_done else ""
        total = state.tokens_total(docs_total - done if docs_total else None)
        progress.update(task, completed=state.tokens_done, total=total, docs=done + state.docs_done, rate=rate)

    return progress, advance


@contextmanager
def _reported_errors(flags: dict[str, str] = FLAGS) -> Iterator[None]:
    """Turn user errors, Ctrl-C and a closed stdout pipe into a one-line message and an exit code."""
    try:
        yield
    except ScorecliError as e:
        typer.echo(f"scorecli: error: {one_line(e.for_cli(flags))}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("scorecli: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # A closed downstream pipe (`| head`) is a normal way for a pipeline to end.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _join_separator(join: str | None, fields: Fields, on_error: OnError) -> str | None:
    """The decoded --join separator, checking that the other options allow one joined document."""
    if join is None:
        return None
    if fields.prompt or fields.messages:
        raise UsageError("--join joins plain texts: it cannot be combined with --prompt-field or --messages-field")
    if on_error is OnError.skip:
        raise UsageError("--join scores the input as one document: --on-error skip cannot leave records out of it")
    return decode_separator(join)


def _default_out(args: list[str]) -> str:
    """The default output folder: the input's name without its suffixes, plus .scores."""
    if len(args) > 1 or is_pattern(args[0]):
        raise UsageError("--out is needed where INPUT names several files")
    name = Path(args[0].rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return f"{name}.scores"


def _loading(console: Console, status: Status, step: LoadStep) -> None:
    """Show what model loading is doing; a one-off conversion, which takes a while, also as a line."""
    if step.action == "converting":
        console.print(f"scorecli: {step}", markup=False, highlight=False, soft_wrap=True)
    status.update(Text(f"{step}…"))


def _check_at_least_one(**values: int | None) -> None:
    """Reject counts given as zero or less, naming their option."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"must be at least 1, not {value}", arg=name)


@app.command()
def compare(
    run_a: str = typer.Argument(..., metavar="A", help="The first run folder (the baseline)."),
    run_b: str = typer.Argument(..., metavar="B", help="The second run folder, of the same input."),
    out: Optional[str] = typer.Option(
        None, "--out", "-o", help="Also write the per-document table to this Parquet file."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout instead of tables."),
) -> None:
    """Compare two runs of the same input: corpus figures with paired bootstrap intervals, documents that moved."""
    from scorecli.compare import compare_runs, render_comparison, write_comparison

    with _reported_errors():
        comparison = compare_runs(run_a, run_b)
        if out:
            write_comparison(comparison, out)
        if as_json:
            typer.echo(json.dumps(comparison.summary, indent=2, ensure_ascii=False))
        else:
            Console().print(render_comparison(comparison))


@app.command()
def show(
    run: str = typer.Argument(..., metavar="DIR", help="A run folder."),
    doc: Optional[int] = typer.Option(None, "--doc", help="The document's number (its `doc`)."),
    doc_id: Optional[str] = typer.Option(None, "--id", help="The document's id."),
    by: str = typer.Option("surprisal", "--by", help="Colour tokens by surprisal, entropy, kl or rank."),
) -> None:
    """Show one document of a run with each token coloured by its surprisal (or entropy, KL, rank)."""
    from scorecli.show import render_document

    with _reported_errors():
        Console().print(render_document(run, doc=doc, doc_id=doc_id, by=by))


@app.command()
def report(
    run: str = typer.Argument(..., metavar="DIR", help="A run folder."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Another run of the same input to compare with."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="The HTML file to write. Default: DIR/report.html."),
) -> None:
    """Write one self-contained HTML report of a run: figures, charts and token heatmaps, offline."""
    from scorecli.report import build_report

    with _reported_errors():
        path = build_report(run, compare=compare, out=out)
        Console(stderr=True).print(f"wrote {path}")


# The model arguments of `scorecli lm-eval` that error messages name, as they are given there.
LM_EVAL_FLAGS = {
    "model_args": "--model_args",
    "model": "--model_args pretrained",
    **{
        name: f"--model_args {name}"
        for name in (
            "dtype",
            "device",
            "batch_tokens",
            "threads",
            "prefix_sharing",
            "min_shared_prefix",
            "head_dtype",
            "compile",
            "revision",
            "trust_remote_code",
            "add_bos_token",
            "prefix_token_id",
            "max_length",
        )
    },
}


@app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def lm_eval_command(ctx: typer.Context) -> None:
    """Run lm-evaluation-harness with scorecli as its model; every option is lm-eval's (--tasks, --model_args …)."""
    with _reported_errors(LM_EVAL_FLAGS):
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise UsageError("needs lm-evaluation-harness: pip install 'scorecli[lm-eval]'") from None
        from scorecli.harness import run_cli

        run_cli(ctx.args)
