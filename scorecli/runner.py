"""`scorecli.run`: the resumable run as a library call, in one process or on a Ray cluster.

A run reads its inputs as one corpus, locks its output folder, saves parts as it scores, resumes from
them, finishes in one committed step and returns its summary (runfolder/runs.py keeps the folder's protocol,
executors/session.py scores, executors/scaleout.py shards the corpus on Ray). It never prints and never
exits: it reports progress to a callback, raises the user errors of base/errors.py, and `RunInterrupted` (a
KeyboardInterrupt) carrying what it saved when Ctrl-C (or, with `signals`, SIGTERM) stops it while it scores.

Layer: front. It must not import the command line (cli.py) nor typer.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from scorecli import __version__
from scorecli.base import interrupts
from scorecli.base.errors import OutputError, UsageError
from scorecli.base.interrupts import RunInterrupted
from scorecli.data.choices import choice_layout
from scorecli.data.options import SPECS, ScoreOptions, resolved_inputs, resolved_path
from scorecli.executors import scaleout
from scorecli.executors.session import Progress, Selection, Session, load_models, make_scorer
from scorecli.inputs.corpus import (
    corpus_bytes,
    corpus_metadata,
    count_corpus,
    decode_separator,
    expand_inputs,
    is_pattern,
    read_corpus,
)
from scorecli.inputs.kept import kept_types
from scorecli.inputs.records import STDIN, Fields, Rejected
from scorecli.runfolder.layout import is_sharded_run
from scorecli.runfolder.runs import RunState, check_resume


@dataclass(frozen=True)
class RunResult:
    """A finished run: its figures and metadata (summary.json's), the files it wrote, and what this session did.

    `out` is its folder (None for a stream). A --ray run also says how many shards it has and how many this
    session scored, and how long the cluster took to start; `nothing_to_do` where it was finished already.
    """

    out: Path | None
    figures: dict
    metadata: dict[str, str]
    written: list[Path] = field(default_factory=list)
    nothing_to_do: bool = False
    sharded: bool = False
    shards: int = 0
    shards_scored: int = 0
    ray_seconds: float = 0.0


def run(
    inputs: str | Sequence[str] | None = None,
    out: str | Path | TextIO | None = None,
    options: ScoreOptions | Mapping | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    rows: str | None = None,
    given: Collection[str] | None = None,
    progress: Progress | None = None,
    on_reject: Callable[[Rejected], None] | None = None,
    command: str | None = None,
    signals: bool = False,
) -> RunResult:
    """Score `inputs` into the folder `out` (resumably), or onto a stream as JSON lines; return the run's summary.

    `inputs` are files, globs, folders or URLs read as one corpus, or "-" for JSONL on stdin. `out` is a
    folder (default: the input's name + .scores), "-" for stdout, or a text stream, which gets a JSON line
    per document, token or word (`rows`). `options` (a ScoreOptions, or a mapping of its fields) say how to
    score. A folder holding results needs `overwrite`; `resume` continues the unfinished run in `out` with
    its saved inputs and options, where `options` change those `given` (default: those set to other than
    their defaults). `progress` is told where the run stands (RunProgress), `on_reject` of each record a
    run onto a stream skips (a folder keeps them in its errors.jsonl); `command` is recorded in the lock.
    With `signals`, SIGTERM stops the run as Ctrl-C does, in the main thread (the command line's choice; by
    default a library call leaves SIGTERM alone). Ctrl-C while scoring raises RunInterrupted; before it
    scores (while imports or models load), KeyboardInterrupt.
    """
    options = _options(options)
    given = options.given() if given is None else set(given)
    report = progress or (lambda _: None)
    inputs = [inputs] if isinstance(inputs, str) else (list(inputs) if inputs else None)
    stream = sys.stdout if out == STDIN else out if out is not None and hasattr(out, "write") else None
    folder = None if stream is not None or out is None else str(out)
    if options.ray or (resume and folder is not None and is_sharded_run(folder)):
        how = (resume, overwrite, rows, report, on_reject, command, signals)
        return _run_sharded(inputs, folder, stream, options, given, *how)
    for name, spec in SPECS.items():
        if spec.ray_only and getattr(options, name) is not None:
            raise UsageError("goes with `ray` (scoring on a Ray cluster)", arg=name)
    if inputs is None and not resume:
        raise UsageError("Missing argument '`inputs`'.")
    if inputs is None and folder is None and stream is None:
        raise UsageError("without `inputs` needs `out` DIR, the folder of the run to resume", arg="resume")
    sources = expand_inputs(inputs) if inputs is not None else []
    source = sources[0] if len(sources) == 1 else ""  # "": a corpus of several files
    if folder is None and stream is None:
        if source == STDIN:
            stream = sys.stdout
        else:
            folder = _default_out(inputs)
    _check_run_options(source, stream is not None, resume, overwrite, options.words, rows)
    session = Session(sources[0] if sources else "", folder, stream, rows or "sequences", on_reject=on_reject)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(session.release)
        state = session.claim(overwrite=overwrite, resume=resume, command=command)
        if state is not None:
            # Options not given are those the run was started with; those given must agree (check_resume).
            given_inputs = inputs is not None
            options = options.resumed(state.options, given)
            inputs = inputs if given_inputs else state.options.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs  # a run saved before INPUT became a list
            sources = _resumed_sources(state.options, inputs, given_inputs)
            source = sources[0] if len(sources) == 1 else ""
            _check_run_options(source, stream is not None, resume, overwrite, options.words, rows)
            session.source = sources[0]
        fields, role_names = options.input_fields(), options.role_names()
        separator = _join_separator(options, fields)
        if fields.keep and separator is not None:
            raise UsageError("cannot be combined with `join`, whose one document has no fields", arg="keep_fields")
        kept = kept_types(sources, fields.keep)
        records = read_corpus(
            sources,
            fields,
            on_error=session.reject if options.skip_bad else None,
            skip=state.records_done if state else 0,
            limit=options.limit,
            join=separator,
        )
        selection = Selection(records, fields, role_names)
        records = session.peek(iter(selection))  # reads and validates the first record before any model work
        loaded, ref = load_models(options, report)
        records_total = count_corpus(sources) if separator is None or options.limit else None
        expected = _expected_tokens(sources, options.limit, records_total)
        # On a stream, lines are wanted as soon as they exist; a folder run keeps fixed buffers for resume.
        scorer, model_metadata = make_scorer(
            options, loaded, ref, stream=stream is not None, expected_tokens=expected, words=rows == "words"
        )
        metadata = {**model_metadata, **run_metadata(sources, options, fields, separator)}
        if state is not None:
            _check_resumed_input(state, metadata, inputs, sources, options.model, options.ref_model)
            check_resume(state, metadata)
        # The files read, as absolute paths: a resumed run reads these, from whatever folder it is started in.
        saved = {**options.saved(inputs), "files": resolved_inputs(sources)}
        session.start(metadata, options.words, state, saved, scorer.columns, kept, choices=choice_layout(options))
        total = 1 if separator is not None else records_total
        docs_total = min(total, options.limit) if total and options.limit else total
        written = session.score(
            scorer, records, docs_total, options.skip_bad, selection=selection, progress=report, signals=signals
        )
        out_dir = None if folder is None else Path(folder)
        return RunResult(out_dir, session.summary.as_dict(), metadata, written)


def _run_sharded(
    inputs: list[str] | None,
    out: str | None,
    stream: TextIO | None,
    options: ScoreOptions,
    given: set[str],
    resume: bool,
    overwrite: bool,
    rows: str | None,
    report: Progress,
    on_reject: Callable[[Rejected], None] | None,
    command: str | None,
    signals: bool,
) -> RunResult:
    """The same scoring as Ray tasks, one per shard of the input, joined into Parquet datasets in `out`.

    On a stream, the shards' rows go as JSON lines, in input order, as the shards complete.
    """
    with interrupts.deferred("ray-import"):  # Ray's native parts, held like torch's
        scaleout.require_ray()
    if out is None and stream is None:
        raise UsageError("writes Parquet datasets into a folder: give `out` DIR (or `out` - for JSON lines)", arg="ray")
    if stream is not None:
        _check_run_options("", True, resume, overwrite, options.words, rows)
    if resume and overwrite:
        raise UsageError("`resume` and `overwrite` cannot be used together")
    # `overwrite` starts again, whatever is saved (a damaged plan included).
    saved = None if out is None or overwrite else scaleout.saved_options(out)
    if resume and saved is None:
        if out is not None and is_sharded_run(out):
            return RunResult(Path(out), {}, {}, nothing_to_do=True, sharded=True)
        raise OutputError(f"{out}: nothing to resume (there is no unfinished `ray` run in it)", arg="out_dir")
    if saved is not None and not overwrite:
        options = options.resumed(saved, given)
        inputs = inputs if inputs is not None else saved.get("input")
    if inputs is None:
        raise UsageError("Missing argument '`inputs`'.")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if options.join is not None:
        why = "scores the input as one document, which cannot be cut into shards: leave out `ray`"
        raise UsageError(why, arg="join")
    sources = expand_inputs(inputs)
    if STDIN in sources:
        raise UsageError("needs input files: standard input cannot be cut into shards", arg="ray")
    fields = options.input_fields()
    kept = kept_types(sources, fields.keep)
    _check_run_options("", stream is not None, False, overwrite, options.words, rows)
    job = scaleout.Job(
        options=options.saved(inputs),
        metadata=run_metadata(sources, options, fields, None),
        kept=kept,
        words=options.words or rows == "words",
        # The whole input's size decides compile auto, for every shard alike (and as a single process).
        expected_tokens=_expected_tokens(sources, options.limit),
    )
    sharding = {
        "address": options.ray_address,
        "shards": options.shards,
        "workers": options.workers,
        "threads": options.threads,
        "gpus_per_worker": options.gpus_per_worker,
        "limit": options.limit,
        "command": command,
        "progress": report,
    }
    resolved = [resolved_path(s) for s in sources]  # workers may run in another folder
    try:
        with interrupts.as_exceptions() if signals else contextlib.nullcontext():
            if stream is not None:
                typed = dict(zip(resolved, sources))

                def skipped(rejected: Rejected) -> None:
                    """Report a skipped record under its file's name as typed, as a single process does."""
                    on_reject(replace(rejected, source=typed.get(rejected.source, rejected.source)))

                told = skipped if on_reject is not None else None
                result = scaleout.stream_sharded(job, resolved, stream, rows or "sequences", on_reject=told, **sharding)
            else:
                result = scaleout.score_sharded(job, resolved, Path(out).resolve(), overwrite=overwrite, **sharding)
    except KeyboardInterrupt as e:
        raise RunInterrupted(out, terminated=isinstance(e, interrupts.Terminated), sharded=True) from None
    written = result.written if stream is None else []
    shards = {"shards": result.shards, "shards_scored": result.shards_scored, "ray_seconds": result.ray_seconds}
    out_dir = None if out is None else Path(out)
    return RunResult(out_dir, result.figures, result.metadata, written, result.nothing_to_do, True, **shards)


def _options(options: ScoreOptions | Mapping | None) -> ScoreOptions:
    """The options as ScoreOptions."""
    if options is None:
        return ScoreOptions()
    return options if isinstance(options, ScoreOptions) else ScoreOptions(**options)


def run_metadata(sources: list[str], options: ScoreOptions, fields: Fields, separator: str | None) -> dict[str, str]:
    """A run's metadata besides its models' and scorer's: the input, what is scored, the version."""
    return {
        **_input_metadata(sources, fields, separator),
        "scored": _scored(fields, options.role_names(), options.all_tokens),
        **({"limit": str(options.limit)} if options.limit else {}),
        **({"keep_fields": json.dumps(fields.keep, ensure_ascii=False)} if fields.keep else {}),
        "words": str(options.words).lower(),
        "scorecli_version": __version__,
    }


def _expected_tokens(sources: list[str], limit: int | None, records: int | None = None) -> int | None:
    """The tokens compile auto weighs, from the input's size; `records`, where already counted, spares a count."""
    from scorecli.engine.compiled import expected_tokens

    if limit and records is None:
        records = count_corpus(sources)
    return expected_tokens(corpus_bytes(sources), records, limit)


def _resumed_sources(saved: dict, inputs: list[str], given: bool) -> list[str]:
    """The files a resumed run reads: those its first session read, unless `inputs` are given again.

    A run saved before the files were saved expands its inputs again.
    """
    files = saved.get("files")
    return list(files) if files is not None and not given else expand_inputs(inputs)


def _check_resumed_input(
    state: RunState,
    metadata: dict[str, str],
    inputs: list[str],
    sources: list[str],
    model: str | None,
    ref_model: str | None = None,
) -> None:
    """Compare the input files and model paths of a resumed run as absolute paths, however they were typed.

    The files `sources` read now must be those the first session read (its inputs, for a run saved before
    those were). Where they agree, the metadata names them as the first session did, so the rest of it
    must match exactly.
    """
    was, now = state.options.get("files"), resolved_inputs(sources)
    if was is None:  # saved before the files were: its inputs, resolved from here
        was = state.options.get("input")
        was, now = (None if was is None else resolved_inputs(was)), resolved_inputs(inputs)
    if was is not None and was != now:
        shown_was, shown_now = (v[0] if len(v) == 1 else v for v in (was, now))
        raise OutputError(f": the run was started with input {shown_was!r}, not {shown_now!r}", arg="resume")
    if "input" in state.metadata and was is not None:
        metadata["input"] = state.metadata["input"]
    for key, path in (("model", model), ("ref_model", ref_model)):
        if key in state.metadata and state.options.get(key, path) == resolved_path(path):
            metadata[key] = state.metadata[key]


def _check_run_options(source: str, stream: bool, resume: bool, overwrite: bool, words: bool, rows: str | None) -> None:
    """Reject combinations of input, output and run options that cannot work."""
    if resume and overwrite:
        raise UsageError("`resume` and `overwrite` cannot be used together")
    if stream and resume:
        raise UsageError("needs an output folder (`out` DIR), not stdout", arg="resume")
    if stream and words:
        raise UsageError("needs an output folder (`out` DIR); on stdout, `rows` words writes word rows", arg="words")
    if not stream and rows is not None:
        raise UsageError("is for `out` - (JSON lines on stdout); an output folder gets every table", arg="rows")
    if resume and source == STDIN:
        raise UsageError("needs an input file: standard input cannot be checked or skipped through", arg="resume")


def _input_metadata(sources: list[str], fields: Fields, join: str | None) -> dict[str, str]:
    """The inputs and the fields read from them, as metadata; files' sizes and times identify them on resume."""
    meta = corpus_metadata(sources)
    if join is not None:
        meta["join"] = json.dumps(join, ensure_ascii=False)
    meta["id_field"] = str(fields.id)
    if fields.choices:
        meta["choices_field"] = ",".join(fields.choices)
        meta["label_field"] = str(fields.label)
        meta["unconditional"] = str(fields.unconditional).lower()
        if fields.messages:
            meta["messages_field"] = fields.messages
        elif fields.prompt:
            meta["prompt_field"] = fields.prompt
    elif fields.messages:
        meta["messages_field"] = fields.messages
    elif fields.words:
        meta["words_field"] = fields.words
    elif fields.prompt:
        meta["prompt_field"], meta["response_field"] = fields.prompt, fields.response
    else:
        meta["text_field"] = fields.text
    return meta


def _scored(fields: Fields, roles: tuple[str, ...], all_tokens: bool) -> str:
    """Which tokens count in the statistics, in words, for the metadata."""
    rows = " (token rows for all tokens)" if all_tokens else ""
    if fields.choices:
        context = (
            f"as the assistant's next turn after the chat in field '{fields.messages}'"
            if fields.messages
            else f"after field '{fields.prompt}'"
            if fields.prompt
            else "after BOS alone"
        )
        alone = "; and each after BOS alone" if fields.unconditional else ""
        return f"each choice of field(s) '{','.join(fields.choices)}' {context}{alone}{rows}"
    if fields.messages:
        return f"chat turns of roles {','.join(roles)} in field '{fields.messages}'{rows}"
    if fields.prompt:
        return f"field '{fields.response}' after field '{fields.prompt}'{rows}"
    return "all tokens"


def _join_separator(options: ScoreOptions, fields: Fields) -> str | None:
    """The decoded `join` separator, checking that the other options allow one joined document."""
    if options.join is None:
        return None
    if fields.prompt or fields.messages or fields.words:
        why = "joins plain texts: it cannot be combined with `prompt_field`, `messages_field` or `words_field`"
        raise UsageError(why, arg="join")
    if options.skip_bad:
        raise UsageError("scores the input as one document: `on_error` skip cannot leave records out of it", arg="join")
    return decode_separator(options.join)


def _default_out(args: list[str]) -> str:
    """The default output folder: the input's name without its suffixes, plus .scores."""
    if len(args) > 1 or is_pattern(args[0]):
        raise UsageError("is needed where `inputs` names several files", arg="out")
    name = Path(args[0].rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return f"{name}.scores"
