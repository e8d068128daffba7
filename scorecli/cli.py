"""The `scorecli` command line: options in, library calls, errors and summaries out."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from scorecli import __version__
from scorecli.batching import check_limits
from scorecli.engine import ScoreProgress, Scorer
from scorecli.errors import ScorecliError
from scorecli.inputs import STDIN, count_records, display_name, read_records
from scorecli.models import load_model, resolve_device, resolve_dtype
from scorecli.outputs import JsonlOutput, ParquetOutput, prepare_out_dir, write_summary
from scorecli.summary import Summary, render


class _OneLineErrors(TyperGroup):
    """Click's own usage errors (a bad option value, a missing INPUT) as one line, like scorecli's errors."""

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
)
EXIT_INTERRUPTED = 130


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


@app.command()
def score(
    input: str = typer.Argument(
        ..., metavar="INPUT", help="A .jsonl (or .jsonl.gz) or .parquet file, or - for JSONL on stdin."
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
    text_field: str = typer.Option("text", "--text-field", help="Field (column) holding the text."),
    id_field: str = typer.Option("id", "--id-field", help="Field holding the document id (optional in the data)."),
    batch_tokens: Optional[int] = typer.Option(
        None, "--batch-tokens", help="Token budget per batch, padding included. Default: 1024 on CPU, 16384 on CUDA."
    ),
    max_length: Optional[int] = typer.Option(
        None,
        "--max-length",
        help="Longest sequence fed to the model, BOS included; longer texts are truncated. "
        "Default: the model's context length.",
    ),
    bos: bool = typer.Option(
        True, "--bos/--no-bos", help="Prepend BOS (EOS where there is none) so the first token is scored."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (float32; bfloat16 on CUDA), float32, bfloat16 or float16."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results in a non-empty output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
) -> None:
    """Score every token of every text in INPUT and write per-token and per-sequence scores."""
    console = Console(stderr=True, quiet=quiet)
    with _reported_errors():
        # Options, input and output folder are all checked before the model is loaded, so mistakes fail fast.
        check_limits(batch_tokens, max_length)
        records = read_records(input, text_field=text_field, id_field=id_field)
        first = next(records)  # reads and validates the first record before any model work
        records = itertools.chain([first], records)
        out = out or (STDIN if input == STDIN else _default_out(input))

        resolve_dtype(dtype, resolve_device(device))
        if out != STDIN:
            prepare_out_dir(Path(out), overwrite)
        _quiet_transformers()
        with console.status("loading model…"):
            loaded = load_model(model, device=device, dtype=dtype)

        scorer = Scorer(loaded.model, loaded.tokenizer, bos=bos, max_length=max_length, batch_tokens=batch_tokens)
        metadata = {
            **loaded.info,
            **scorer.metadata,
            "input": display_name(input),
            "text_field": text_field,
            "scorecli_version": __version__,
        }
        writer = JsonlOutput(sys.stdout) if out == STDIN else ParquetOutput(Path(out), metadata)
        docs_total = count_records(input)
        progress, advance = _progress_bar(console, docs_total)
        summary = Summary()
        started = time.perf_counter()
        try:
            with progress:
                for doc_score in scorer.score_records(records, progress=advance):
                    writer.write(doc_score)
                    summary.add(doc_score)
            written = writer.close()
        except BaseException:
            writer.abort()
            raise
        summary.seconds = time.perf_counter() - started
        if out != STDIN:
            written.append(write_summary(Path(out), summary.as_dict(), metadata))
        console.print(render(summary, metadata))
        for path in written:
            console.print(f"wrote {path}")


def _progress_bar(console: Console, docs_total: int | None) -> tuple[Progress, Callable[[ScoreProgress], None]]:
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
    )
    task = progress.add_task("scoring", total=None, docs=0, rate="")
    started = time.perf_counter()

    def advance(state: ScoreProgress) -> None:
        """Move the bar to where scoring stands."""
        elapsed = time.perf_counter() - started
        rate = f"{state.tokens_done / elapsed:,.0f} tok/s" if elapsed > 0 and state.tokens_done else ""
        total = state.tokens_total(docs_total)
        progress.update(task, completed=state.tokens_done, total=total, docs=state.docs_done, rate=rate)

    return progress, advance


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn user errors, Ctrl-C and a closed stdout pipe into a one-line message and an exit code."""
    try:
        yield
    except ScorecliError as e:
        typer.echo(f"scorecli: error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("scorecli: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # A closed downstream pipe (`| head`) is a normal way for a pipeline to end.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _default_out(source: str) -> str:
    """The default output folder: the input's name without its suffixes, plus .scores."""
    name = Path(source).name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return f"{name}.scores"


def _quiet_transformers() -> None:
    """Silence transformers' own progress bars and warnings: the CLI reports on stderr itself."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # GGUF conversion draws its own tqdm bar; read at tqdm's import
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
