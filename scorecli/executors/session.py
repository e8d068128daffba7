"""One scoring session: a Scorer's read-ahead buffers into a writer (a run folder or a stream of JSON lines).

The one place outside the engine that calls `Scorer.score_buffers`: a local run, a run that streams JSON
lines and each shard of a --ray run (executors/scaleout.py) score through `Session.score`, which keeps the summary,
saves each buffer, notes rejected records, saves an interrupted buffer's finished documents and finishes
the run, and loads their models and Scorer through `load_models` and `make_scorer`. It never prints: it
reports progress to a callback and raises `RunInterrupted` (or the user error that stopped it, noting what
was saved). It imports torch only inside `load_models` and `make_scorer`; it must not import the command
line, runner.py or executors/scaleout.py.

Layer: executors. It must not import the front of scorecli, nor torch, rich, typer or plotly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from scorecli.analysis.summary import Summary
from scorecli.base import faults, interrupts
from scorecli.base.errors import InputError, ScorecliError, UsageError
from scorecli.base.interrupts import RunInterrupted
from scorecli.data.options import ScoreOptions
from scorecli.inputs.records import Fields, Record, Rejected, display_name
from scorecli.runfolder.layout import CHOICES_FILE, SEQUENCES_FILE

if TYPE_CHECKING:
    from scorecli.analysis.bootstrap import DocSums
    from scorecli.data.choices import ChoiceLayout
    from scorecli.data.scores import DocScore
    from scorecli.engine.models import LoadedModel, LoadStep
    from scorecli.engine.scorer import ScoreProgress, Scorer
    from scorecli.inputs.kept import KeptTypes
    from scorecli.runfolder.outputs import JsonlOutput
    from scorecli.runfolder.runs import RunFolder, RunState, RunWriter

# How an error's note names the way to resume past a bad record; the command line names its command instead.
RESUME_SKIPPING = "resume=True, on_error='skip'"


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands, for a progress display.

    `stage` is "loading" (a model: `what`, and the loader's `step`, once it says one), "loaded", "starting"
    (a Ray cluster), "scoring", "saved" (a part, just now) or "joining" (a --ray run's shards). Documents count the
    run's records done, resumed sessions' included; tokens are those this session scored, `tokens_total` an
    estimate of the whole run's where the number of documents is known. A --ray run also counts its shards.
    """

    stage: str
    docs_done: int = 0
    docs_total: int | None = None
    tokens_done: int = 0
    tokens_total: int | None = None
    shards: int = 0
    shards_done: int = 0
    workers: int = 0
    what: str = ""
    step: LoadStep | None = None


Progress = Callable[[RunProgress], None]


def _ignore(progress: RunProgress) -> None:
    """A progress callback that shows nothing."""


def load_models(options: ScoreOptions, progress: Progress = _ignore) -> tuple[LoadedModel, LoadedModel | None]:
    """Load the model and the reference model (where there is one) the options name, telling `progress` how it goes.

    torch and transformers import here, with Ctrl-C held until they are done (see base/interrupts.py).
    """
    with interrupts.deferred("imports"):
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (their native parts too)

        from scorecli.engine.models import load_model
    faults.point("model")
    loaded = _load(load_model, "model", options.model, options.model_kwargs(), progress)
    ref = None
    if options.ref_model is not None:
        ref = _load(load_model, "reference model", options.ref_model, options.ref_kwargs(), progress, "ref_model")
    return loaded, ref


def _load(load_model, what: str, spec: str | None, kwargs: dict, progress: Progress, arg: str = "model"):
    """Load one model, reporting its steps as `what` loads, and when it is loaded."""
    progress(RunProgress("loading", what=what))
    # Scored only, so shared: a process that scores several runs (a --ray worker's shards) loads a model once.
    loaded = load_model(
        spec,
        **kwargs,
        progress=lambda step: progress(RunProgress("loading", what=what, step=step)),
        arg=arg,
        shared=True,
    )
    progress(RunProgress("loaded", what=what))
    return loaded


def make_scorer(
    options: ScoreOptions,
    loaded: LoadedModel,
    ref: LoadedModel | None = None,
    *,
    stream: bool = False,
    expected_tokens: int | None = None,
    threads: int | None = None,
    words: bool = False,
) -> tuple[Scorer, dict[str, str]]:
    """The Scorer of the options over loaded models, and the metadata they make: the models' and the scorer's.

    `stream` splits the first buffer (see Scorer); `expected_tokens` weighs compile auto; `threads`, where
    given, replaces the options' (a --ray shard's task has its own); `words` asks for what word rows need
    (the options' words ask too).
    """
    from scorecli.engine.scorer import Scorer

    kwargs = options.scorer_kwargs()
    if threads is not None:
        kwargs["threads"] = threads
    scorer = Scorer(
        loaded.model,
        loaded.tokenizer,
        roles=options.role_names(),
        ref_model=None if ref is None else ref.model,
        ref_tokenizer=None if ref is None else ref.tokenizer,
        stream=stream,
        expected_tokens=expected_tokens,
        words=options.words or words,
        **kwargs,
    )
    metadata = {
        **loaded.info,
        **({} if ref is None else {f"ref_{k}": v for k, v in ref.info.items()}),
        **scorer.metadata,
    }
    return scorer, metadata


class Selection:
    """The records as read, noting what the options select in them, to explain a run that scores nothing."""

    def __init__(self, records: Iterable[Record], fields: Fields, roles: Iterable[str]) -> None:
        """Watch `records`, read with `fields`, for turns of `roles` and non-empty responses."""
        self.records, self.fields, self.roles = records, fields, set(roles)
        self.roles_seen: set[str] = set()
        self.selected = False

    def __iter__(self) -> Iterator[Record]:
        """The records, unchanged."""
        for record in self.records:
            if record.choice is not None:
                self.selected = True  # a choice is never empty, and is scored whatever the roles
            elif record.messages is not None:
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
            why = f"no conversation has a turn with these roles, so nothing was scored (roles in the data: {seen})"
            return UsageError(f"{roles}: {why}", arg="roles")
        if self.fields.prompt:
            return UsageError(
                f"{self.fields.response}: the response is empty in every record, so nothing was scored",
                arg="response_field",
            )
        return None

    def state(self) -> dict:
        """What it saw, as JSON values: for a --ray run's join, which merges its shards'."""
        return {"selected": self.selected, "roles_seen": sorted(self.roles_seen)}

    def merge(self, state: dict) -> None:
        """Add what another part of the corpus (a shard) saw."""
        self.selected |= state["selected"]
        self.roles_seen.update(state["roles_seen"])


class Session:
    """One run's bookkeeping while it scores: the writer, the summary, rejected records, and what was saved."""

    def __init__(
        self,
        source: str,
        out: str | Path | None,
        stream: TextIO | None = None,
        rows: str = "sequences",
        *,
        first_doc: int = 0,
        on_reject: Callable[[Rejected], None] | None = None,
    ) -> None:
        """Prepare a run of `source` (its first input) into the folder `out`, or onto `stream` (JSON lines of `rows`).

        `first_doc` is the number of the run's first record in the corpus (a --ray shard's); `on_reject` is
        told of each record a run onto a stream skips (a folder keeps them in its errors.jsonl).
        """
        self.source, self.out, self.stream, self.rows = source, out, stream, rows
        self.first_doc, self.on_reject = first_doc, on_reject
        self.folder: RunFolder | None = None
        self.writer: RunWriter | JsonlOutput | None = None
        self.summary = Summary()
        from scorecli.analysis.bootstrap import CORPUS_COLUMNS, DocSums

        self.streamed = DocSums(len(CORPUS_COLUMNS))  # stdout output: the bootstrap's sums, gathered as scored
        self.records_seen = 0
        self.resumed_from = 0
        self.in_flight_saved = 0
        self.done: dict = {}
        self.written: list[Path] = []
        self._early_rejects: list[Rejected] = []
        self.choices: ChoiceLayout | None = None
        self._streamed_choices: list = []  # stdout output of a choice run: its sequence rows, for the accuracies
        self._unfinished: list[DocScore] = []  # a streamed record's choices given out before its last one
        self._refused_chat: int | None = None  # the last record whose conversation the chat template refused

    def claim(self, overwrite: bool, resume: bool, command: str | None = None) -> RunState | None:
        """Lock the output folder for the whole run, before any model work; return the run to resume in it.

        `command` is recorded in the lock, to say which run holds the folder.
        """
        if self.out is None:
            return None
        from scorecli.runfolder.runs import claim_out_dir

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
        """Keep a bad record out of the run and note it (in errors.jsonl, or on a stream `on_reject` is told)."""
        self.records_seen = max(self.records_seen, rejected.doc + 1)
        if self.writer is None:
            self._early_rejects.append(rejected)
            return
        self.writer.reject(rejected)
        if self.out is None and self.on_reject is not None:
            self.on_reject(rejected)

    def start(
        self,
        metadata: dict[str, str],
        words: bool,
        state: RunState | None,
        options: dict,
        stats: tuple[str, ...],
        kept: KeptTypes | None = None,
        type_kept: bool = True,
        choices: ChoiceLayout | None = None,
    ) -> None:
        """Open the output: a new run (saving its `options` for resume), or the one `state` describes.

        `stats` are the run's token columns, `kept` the input fields it copies into its sequence rows (JSON
        ones typed over the whole run unless not `type_kept`: see RunWriter); `choices` is the layout of a
        run of records with choices.
        """
        from scorecli.runfolder.outputs import JsonlOutput
        from scorecli.runfolder.runs import RunWriter

        self.choices = choices
        if self.out is None:
            self.writer = JsonlOutput(self.stream, self.rows, stats, keep=kept or (), choices=choices)
        else:
            self.writer = RunWriter(self.folder, metadata, words, options, stats, kept, type_kept, choices)
            if state is not None:
                self.done = state.in_flight
                self.resumed_from = max(state.records_done - self.first_doc, 0) if state.records_done else 0
                if state.summary is not None:
                    self.summary = Summary.from_state(state.summary)
                    self.summary.next_session()
                if "kl" in stats:
                    # The statistics against the reference need every token's values, not just totals.
                    from scorecli.analysis.summary import ReferenceComparison

                    self.summary.comparison.add(self.writer.saved_tokens(ReferenceComparison.COLUMNS))
        for rejected in self._early_rejects:
            self.reject(rejected)

    def score(
        self,
        scorer: Scorer,
        records: Iterable[Record],
        docs_total: int | None,
        skip_bad: bool,
        *,
        selection: Selection | None = None,
        progress: Progress = _ignore,
        signals: bool = False,
        records_end: int = 0,
        joined_later: bool = False,
    ) -> list[Path]:
        """Score the records, saving each finished buffer, then finish the run; return the files written.

        Where no token at all was scored, `selection` says whether the options are to blame (a UsageError).
        With `signals`, SIGTERM stops the run as Ctrl-C does (see interrupts.as_exceptions). The input is
        done up to `records_end` at least. A run `joined_later` (a --ray shard) keeps its summary's state
        (and what its selection saw) in its summary.json, for the join to merge; the join checks for an
        empty run and takes the intervals over all shards.
        """
        from scorecli.analysis.bootstrap import add_sequence_batches, corpus_intervals

        started, seconds = time.perf_counter(), self.summary.seconds
        fed, shared = self.summary.fed_tokens, self.summary.shared_tokens
        resumed = self.resumed_from
        estimate: list[int | None] = [None]
        progress(RunProgress("scoring", resumed, docs_total))

        def step(state: ScoreProgress) -> None:
            """Report where scoring stands, and count the tokens fed to the model (and spared it) over all sessions."""
            self.summary.fed_tokens, self.summary.shared_tokens = fed + state.tokens_fed, shared + state.tokens_shared
            estimate[0] = state.tokens_total(docs_total - resumed if docs_total else None)
            done = resumed + state.docs_done
            progress(RunProgress("scoring", done, docs_total, state.tokens_done, estimate[0]))

        def clock() -> None:
            """Count this session's seconds, and add them to those of the sessions before it."""
            self.summary.session_seconds = time.perf_counter() - started
            self.summary.seconds = seconds + self.summary.session_seconds

        on_chat_error = self._chat_reject if skip_bad else None
        try:
            with interrupts.as_exceptions() if signals else contextlib.nullcontext():
                for docs in scorer.score_buffers(records, progress=step, on_error=on_chat_error, done=self.done):
                    if self.choices is not None and not (docs := self._whole_records(docs)):
                        continue
                    for doc in docs:
                        if doc.choice is not None and doc.choice.unconditional:
                            continue  # a choice alone after BOS is a figure of its choice's row, not a text of the run
                        self.summary.add(doc)
                        if doc.key not in self.done:  # documents an interrupted session finished are its tokens
                            self.summary.session_tokens += doc.n_tokens
                    if not self._to_folder:
                        table = self._sequence_table(docs)
                        add_sequence_batches(self.streamed, table.to_batches())
                        if self.choices is not None:
                            self._streamed_choices += table.to_batches()
                    self.records_seen = max(self.records_seen, docs[-1].doc + 1)
                    clock()
                    self.writer.save(docs, docs[-1].doc + 1, self.summary.state())
                    faults.point("part-saved")
                    done = self.records_seen - self.first_doc
                    progress(RunProgress("saved", done, docs_total, self.summary.session_tokens, estimate[0]))
                    # Saved: let the buffer go before the next is read, and before the finish joins the parts.
                    del docs, doc
                interrupts.reraise()  # a signal whose exception was swallowed during the last batch
                empty = self.summary.n_docs and not self.summary.n_tokens and not joined_later
                if empty and selection is not None and (error := selection.why_none()):
                    if self._to_folder:
                        self.writer.discard()  # a run the options made empty is not worth resuming
                    raise error
                self.summary.n_rejected = self.writer.rejected
                if joined_later:
                    figures = {**self.summary.as_dict(), "state": self.summary.state()}
                    figures["selection"] = selection.state() if selection is not None else None
                else:
                    self.summary.intervals = corpus_intervals(self._doc_sums())
                    if self.choices is not None:
                        self.summary.intervals |= self._choice_figures()
                    figures = self.summary.as_dict()
                records_read = max(self.records_seen, records_end)
                self.written = self.writer.finish(records_read, figures, errors_file=skip_bad)
                interrupts.settle()  # the results are complete: a signal from here on has nothing to stop
        except KeyboardInterrupt as e:
            from scorecli.engine.scorer import ScoringInterrupted

            finished = []
            if isinstance(e, ScoringInterrupted):  # it carries the finished documents of the buffer in flight
                finished, e = e.finished, e.interrupt
            terminated = isinstance(e, interrupts.Terminated)
            if getattr(self.writer, "finished", False):  # the finish holds signals until it is done
                raise RunInterrupted(self._shown_out, self._saved_docs(), terminated, finished=True) from None
            if self._to_folder and (finished or self.writer.parts):
                clock()  # the time up to the interrupt counts in the resumed run's wall time
                self.writer.save_in_flight(finished, self.summary.state())
                self.in_flight_saved = len(finished)
            self.writer.abort()
            resumable = os.path.isfile(self.source)
            raise RunInterrupted(self._shown_out, self._saved_docs(), terminated, resumable=resumable) from None
        except ScorecliError as e:
            self.writer.abort()
            # A run joined later is a part of another, whose folder is the one to tell of.
            raise (e if joined_later else self._noting_saved(e)) from None
        except BaseException:
            self.writer.abort()
            raise
        return self.written

    def _whole_records(self, docs: list[DocScore]) -> list[DocScore]:
        """The documents of the records whose choices are all scored; the rest wait for theirs (a stream's parts)."""
        docs = self._unfinished + docs
        ends = [i for i, d in enumerate(docs) if d.choice is not None and d.choice.last]
        cut = ends[-1] + 1 if ends else 0
        self._unfinished = docs[cut:]
        return docs[:cut]

    def _sequence_table(self, docs: list[DocScore]):
        """The sequence rows of documents: one per document, or per record with choices."""
        from scorecli.data.tables import sequence_table

        if self.choices is None:
            return sequence_table(docs)
        from scorecli.data.choices import choice_sequence_table, group

        return choice_sequence_table(list(group(docs)), self.choices)

    def _choice_figures(self) -> dict:
        """The accuracies of a choice run, from its saved sequence rows (all sessions'), or those streamed."""
        from scorecli.analysis.summary import choice_figures

        if self._to_folder:
            import pyarrow.parquet as pq

            batches = (
                b for path in self.writer.part_files(SEQUENCES_FILE) for b in pq.ParquetFile(path).iter_batches()
            )
        else:
            batches = iter(self._streamed_choices)
        figures = choice_figures(batches, self.choices.normalisations)
        if self.choices.words and self._to_folder:  # the critical word: from choices.parquet's rows (data/critical.py)
            from scorecli.analysis.summary import critical_figures

            columns = ["doc", "choice", "critical_surprisal", "critical_surprisal_corrected"]
            paths = self.writer.part_files(CHOICES_FILE)
            figures |= critical_figures(b for path in paths for b in pq.ParquetFile(path).iter_batches(columns=columns))
        return figures

    def _doc_sums(self) -> DocSums:
        """Every scored document's sums for the bootstrap: from the saved parts, so a resumed run sees all."""
        from scorecli.analysis.bootstrap import sequence_sums

        if self._to_folder:
            return sequence_sums(self.writer.part_files(SEQUENCES_FILE))
        return self.streamed

    @property
    def _to_folder(self) -> bool:
        """Whether results go to a run folder (which keeps saved parts), rather than a stream."""
        return self.writer is not None and self.out is not None

    @property
    def _shown_out(self) -> str | None:
        """The output folder as given, for messages (None for a stream)."""
        return None if self.out is None else str(self.out)

    def _chat_reject(self, record: Record, reason: str) -> None:
        """Note a conversation the chat template refused (once for a record, however many of its choices it refused)."""
        if record.choice is not None and self._refused_chat == record.doc:
            return
        self._refused_chat = record.doc
        raw = json.dumps([{"role": r, "content": c} for r, c in record.messages or ()], ensure_ascii=False)
        self.reject(Rejected(record.doc, record.source or display_name(self.source), record.line, reason, raw))

    def _saved_docs(self) -> int:
        """How many finished documents the output folder holds for a resumed run."""
        if not self._to_folder or not self.writer.parts_dir.is_dir():
            return 0
        return self.writer.docs_saved + self.in_flight_saved

    def _noting_saved(self, e: ScorecliError) -> ScorecliError:
        """The error that stopped the run, noting where the documents finished before it are saved, if anywhere.

        A bad record in a regular file: resuming with `on_error` skip goes on past it. The note's error has
        `saved_in`, the output folder, for the command line to name its own resume command.
        """
        saved = self._saved_docs()
        if not saved:
            return e.extended("")
        if isinstance(e, InputError) and os.path.isfile(self.source):
            note = f" ({saved:,} documents before it are saved in {self.out}; resume with: `{RESUME_SKIPPING}`)"
        else:
            note = f" ({saved:,} documents scored before it are saved in {self.out}; see `resume`)"
        error = e.extended(note)
        error.saved_in = self._shown_out
        return error
