"""The `scorecli` command line: options parsed into ScoreOptions, library calls, errors and summaries shown.

The only module that imports Typer, and the only one that prints: the library (runner.py and below) reports
progress to callbacks and raises its errors, which are rendered here as one line and an exit code.

Layer: front. Nothing imports it but the entry point, __main__.py.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.status import Status
from rich.text import Text
from typer.core import TyperGroup

from scorecli import __version__
from scorecli.analysis.summary_view import render
from scorecli.base import interrupts
from scorecli.base.errors import ScorecliError, UsageError, one_line, shown
from scorecli.data import options
from scorecli.data.options import SPECS, TYPES, ScoreOptions
from scorecli.executors.session import RESUME_SKIPPING
from scorecli.inputs.corpus import expand_inputs
from scorecli.inputs.records import Rejected

# torch, transformers and pyarrow load inside the command, after Ctrl-C is deferred (see base/interrupts.py), so
# that `--help` stays fast and an early Ctrl-C never lands inside their native initialisation.
if TYPE_CHECKING:
    from scorecli.base.interrupts import RunInterrupted
    from scorecli.engine.models import LoadStep
    from scorecli.executors.session import RunProgress


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
# The command-line flag of each library argument (or argument setting) that error messages name: every
# scoring option's (data/options.py), and the other arguments of the commands.
FLAGS = {
    **options.flags(),
    "inputs": "INPUT",
    "bos=False": "--no-bos",
    "messages": "--messages-field",
    "words_field": "--words-field",
    "overwrite": "--overwrite",
    "out_dir": "--out",
    "resume": "--resume",
    "doc": "--doc",
    "doc_id": "--id",
    "by": "--by",
    "out": "--out",
    "rows": "--rows",
    "scores": "--scores",
    "max_perplexity": "--max-perplexity",
    "min_perplexity": "--min-perplexity",
    "buckets": "--buckets",
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


SCORE_EPILOG = """Examples:
  scorecli score samples/mixed.jsonl -o scores/
  scorecli score data.jsonl -m gpt2 --limit 100 -o -
  scorecli score chats.jsonl --messages-field messages
Exit codes:
  0 done, 2 usage (an option), 3 input (file, line, field),
  4 model, 5 output folder (not empty, nothing to resume, a damaged file),
  130 Ctrl-C / 143 SIGTERM (work saved; resume command shown)"""


# The parameters of `score` that are the command line's own, not scoring options, after the option each follows
# in --help: where the results go, and how the command runs.
_OWN_PARAMETERS = {
    "model": {
        "out": (
            Optional[str],
            typer.Option(
                None,
                "--out",
                "-o",
                help="Output folder for tokens.parquet and sequences.parquet, or - for JSON lines on stdout. "
                "Default: INPUT's name + .scores (stdout for stdin input).",
            ),
        ),
    },
    "on_error": {
        "resume": (
            bool,
            typer.Option(
                False, "--resume", help="Continue the interrupted run in --out, with its saved INPUT and options."
            ),
        ),
        "overwrite": (bool, typer.Option(False, "--overwrite", help="Replace results in a non-empty output folder.")),
    },
    "gpus_per_worker": {
        "quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress bar and no summary.")),
    },
    "min_shared_prefix": {
        "rows": (
            Optional[Literal["sequences", "tokens", "words", "choices"]],
            typer.Option(
                None,
                "--rows",
                help="With --out -: one JSON line per document (sequences), per token (tokens), per word (words) "
                "or, with --choices-field, per choice (choices). Default: sequences.",
            ),
        ),
    },
}


def _score_parameters() -> list[inspect.Parameter]:
    """The parameters of `score`: INPUT, every scoring option (data/options.py) and the command line's own."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "input",
            keyword,
            annotation=Optional[list[str]],
            default=typer.Argument(
                None,
                metavar="INPUT",
                help="Files (.jsonl, .jsonl.gz, .parquet, .txt), globs, folders or fsspec URLs, read as one corpus; "
                "or - for JSONL on stdin. Optional with --resume.",
            ),
        ),
    ]
    for name, spec in SPECS.items():
        default = ScoreOptions.__dataclass_fields__[name].default
        option = typer.Option(default, *spec.flags, help=spec.help, show_default=spec.show_default)
        parameters.append(inspect.Parameter(name, keyword, annotation=TYPES[name], default=option))
        for own, (annotation, option) in _OWN_PARAMETERS.get(name, {}).items():
            parameters.append(inspect.Parameter(own, keyword, annotation=annotation, default=option))
    return parameters


def score(ctx: typer.Context, **values: object) -> None:
    """Score every token of every text in INPUT and write per-token and per-sequence scores."""
    console = Console(stderr=True, quiet=values["quiet"])
    with _reported_errors():
        with interrupts.deferred("tables"):  # pyarrow's native parts, held like torch's (session.load_models)
            from scorecli.base.interrupts import RunInterrupted
            from scorecli.runner import run
        # Options, input and output folder are all checked before torch imports and the model loads, so
        # mistakes fail at once.
        chosen = ScoreOptions(**{name: values[name] for name in SPECS})
        given = {name for name in SPECS if _given(ctx, name)}
        out = values["out"]
        try:
            with _display(console) as show:
                result = run(
                    values["input"],
                    out,
                    chosen,
                    resume=values["resume"],
                    overwrite=values["overwrite"],
                    rows=values["rows"],
                    given=given,
                    progress=show,
                    on_reject=_report_skipped,
                    command=shlex.join(["scorecli", *sys.argv[1:]]),
                    signals=True,
                )
        except RunInterrupted as e:
            interrupts.settle()  # stopping: another Ctrl-C must not cut this short
            typer.echo(f"scorecli: {_stopped(e)}", err=True)
            raise typer.Exit(EXIT_TERMINATED if e.terminated else EXIT_INTERRUPTED) from None
        if result.nothing_to_do:
            said = f"scorecli: nothing to do: the run in {out} is finished (see: scorecli summary {out})"
            console.print(said, soft_wrap=True)
            return
        console.print(render(result.figures, result.metadata))
        if result.sharded:
            console.print(
                f"Ray: {result.shards_scored} of {result.shards} shards scored in this session "
                f"(cluster ready in {result.ray_seconds:.1f} s)",
                highlight=False,
                soft_wrap=True,
            )
        for path in result.written:
            console.print(f"wrote {path}", soft_wrap=result.sharded)


score.__signature__ = inspect.Signature(_score_parameters())
app.command(epilog=SCORE_EPILOG)(score)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether an option was given on the command line (or by an environment variable), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _stopped(e: RunInterrupted) -> str:
    """What to say of a run stopped by a signal: what is saved and the command that resumes it."""
    if not e.can_resume:
        return e.what()
    if e.sharded:
        command = f"scorecli score -o {shlex.quote(e.out)} --resume"
        return f"{e.what()}; run the same command again (or: {command}) to go on"
    return f"{e.what()}; resume with:\n  {_resume_command(e.out)}"


def _resume_command(out: str, *extra: str) -> str:
    """The command line that resumes the run in `out` (its input and options are saved in its folder)."""
    return shlex.join(["scorecli", "score", "-o", out, "--resume", *extra])


@contextmanager
def _display(console: Console) -> Iterator[Callable[[RunProgress], None]]:
    """A run's progress on the console, gone once it ends.

    A spinner while each model loads, then a bar over the run's tokens (or a --ray run's documents and shards).
    """
    shown: dict = {}

    def show(state: RunProgress) -> None:
        """Show where the run stands."""
        status: Status | None = shown.get("status")
        if state.stage in ("loading", "loaded"):
            if state.step is None and status is not None:
                status.stop()
                shown.pop("status")
            if state.stage == "loading" and state.step is None:
                shown["status"] = status = console.status(f"loading {state.what}…")
                status.start()
            elif state.step is not None:
                _loading(console, status, state.step)
            return
        if state.stage == "saved":  # the bar follows the scoring itself
            return
        if status is not None:
            status.stop()
            shown.pop("status")
        if "bar" not in shown:
            sharded = state.stage == "starting" or state.shards
            made = _sharded_progress_bar(console) if sharded else _progress_bar(console, state.docs_total)
            shown["bar"], shown["advance"] = made
            made[0].start()
        shown["advance"](state)

    try:
        yield show
    finally:
        for name in ("status", "bar"):
            if name in shown:
                shown[name].stop()


def _progress_bar(console: Console, docs_total: int | None) -> tuple[Progress, Callable[[RunProgress], None]]:
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

    def advance(state: RunProgress) -> None:
        """Move the bar to where scoring stands."""
        elapsed = time.perf_counter() - started
        rate = f"{state.tokens_done / elapsed:,.0f} tok/s" if elapsed > 0 and state.tokens_done else ""
        progress.update(task, completed=state.tokens_done, total=state.tokens_total, docs=state.docs_done, rate=rate)

    return progress, advance


def _sharded_progress_bar(console: Console) -> tuple[Progress, Callable[[RunProgress], None]]:
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

    def advance(state: RunProgress) -> None:
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
        from scorecli.runfolder.runs import read_summary

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
        from scorecli.analysis.filter import describe, filter_corpus, parse_buckets

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


@contextmanager
def _reported_errors(flags: dict[str, str] = FLAGS) -> Iterator[None]:
    """Turn user errors, Ctrl-C and a closed stdout pipe into a one-line message and an exit code."""
    try:
        yield
    except ScorecliError as e:
        saved_in = getattr(e, "saved_in", None)  # a run stopped by a bad record: resuming with skip goes past it
        if saved_in is not None:
            flags = {**flags, RESUME_SKIPPING: _resume_command(saved_in, "--on-error", "skip")}
        typer.echo(f"scorecli: error: {one_line(e.for_cli(flags))}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        interrupts.settle()  # stopping: another Ctrl-C must not cut this short
        typer.echo("scorecli: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # A closed downstream pipe (`| head`) is a normal way for a pipeline to end.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _report_skipped(rejected: Rejected) -> None:
    """Say on stderr that a record was skipped (with results on stdout, there is no errors.jsonl to hold it)."""
    where = f"{shown(rejected.source)}: line {rejected.line}"
    typer.echo(f"scorecli: skipped {where}: {one_line(rejected.reason)}", err=True)


def _loading(console: Console, status: Status, step: LoadStep) -> None:
    """Show what model loading is doing; a one-off conversion, which takes a while, also as a line."""
    if step.action == "converting":
        console.print(f"scorecli: {step}", markup=False, highlight=False, soft_wrap=True)
    status.update(Text(f"{step}…"))


@app.command()
def compare(
    run_a: str = typer.Argument(..., metavar="A", help="The first run folder (the baseline)."),
    run_b: str = typer.Argument(..., metavar="B", help="The second run folder, of the same input."),
    out: Optional[str] = typer.Option(
        None, "--out", "-o", help="Also write the per-document table to this Parquet file."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout instead of tables."),
) -> None:
    """Compare two runs of the same input: corpus figures with paired bootstrap intervals, documents that moved.

    Two choice runs (--choices-field): accuracies with paired intervals, and the records whose verdict changed.
    """
    from scorecli.analysis.compare import compare_runs, render_comparison, write_comparison

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
    from scorecli.analysis.show import render_document

    with _reported_errors():
        Console().print(render_document(run, doc=doc, doc_id=doc_id, by=by))


@app.command()
def report(
    run: str = typer.Argument(..., metavar="DIR", help="A run folder."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Another run of the same input to compare with."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="The HTML file to write. Default: DIR/report.html."),
) -> None:
    """Write one self-contained HTML report of a run: figures, charts and token heatmaps, offline."""
    from scorecli.analysis.report import build_report

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
        from scorecli.executors.harness import run_cli

        run_cli(ctx.args)
