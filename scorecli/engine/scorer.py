"""The batching `Scorer`: tokenise, cut windows, sort by length, pack, score with the output head, reorder.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from scorecli.base import faults, interrupts
from scorecli.base.checks import check_counts, check_limits
from scorecli.base.errors import ModelError, UsageError
from scorecli.data.options import DEFAULT_MIN_SHARED_PREFIX
from scorecli.data.scores import DocScore, TokenStrings, perplexity
from scorecli.data.words import Words, assign_words, ended_logprob, word_corrections, word_spans
from scorecli.engine.batching import Encoded, Encoder, TokenTexts, Window, collate, default_stride, pack, windows
from scorecli.engine.chat import DEFAULT_ROLES, render_chats
from scorecli.engine.compiled import CompiledForward, should_compile
from scorecli.engine.head import get_response_log_probs, head_products, output_head
from scorecli.engine.models import check_same_vocabulary, context_length
from scorecli.engine.prefix import SharedPrefix, plan_prefixes
from scorecli.engine.stats import columns_of, concat
from scorecli.engine.threads import intra_op_threads
from scorecli.engine.wordstart import given_word_starts, word_starts
from scorecli.inputs.records import Record

__all__ = [
    "BufferPlan",
    "DocScore",
    "Pass",
    "ScoreProgress",
    "Scorer",
    "ScoringInterrupted",
    "SharedGroups",
    "get_response_log_probs",
    "perplexity",
]


# Measured on a 2-core AVX-512 CPU, a 1,024-token budget scores fastest (activations stay in cache);
# accelerators want large batches.
DEFAULT_BATCH_TOKENS = {"cpu": 1024, "cuda": 16384, "mps": 8192}
MAX_CPU_WORKERS = 8
BUFFER_CHARS_PER_BATCH_TOKEN = 256
# A streaming run's first buffer is about two batches (at ~4 characters a token): one for each of two workers.
FIRST_BUFFER_CHARS_PER_BATCH_TOKEN = 8
# A shared start's cached position, copied into each continuation row, weighs 1/8 of a fed token in the batch
# budget: at 1,024 tokens, 8 rows after a 300-token start hold about 130 MB of SmolLM2's keys and values.
CACHED_WEIGHT = 8


@dataclass
class ScoreProgress:
    """Where a scoring run stands: documents and tokens read into buffers (planned) and scored (done).

    A record with choices counts as one document, done once all its choices are.

    `tokens_fed` counts the tokens run through the model (pads aside), `tokens_shared` those that shared
    prefixes spared it (fed once for several windows).
    """

    docs_planned: int = 0
    tokens_planned: int = 0
    docs_done: int = 0
    tokens_done: int = 0
    tokens_fed: int = 0
    tokens_shared: int = 0

    def tokens_total(self, docs_total: int | None) -> int | None:
        """Estimated scored tokens of the whole input, given its number of documents where known."""
        if docs_total is None or not self.docs_planned:
            return None
        unread = max(docs_total - self.docs_planned, 0)
        return self.tokens_planned + round(unread * self.tokens_planned / self.docs_planned)


@dataclass(frozen=True)
class SharedGroups:
    """Groups of windows sharing prefixes, scored together: their prefixes in one padded pass, then their continuations.

    Each continuation row attends to its own group's cached prefix (the others' masked): a question of a
    few-shot task costs a share of two passes, not two passes of its own.
    """

    groups: tuple[SharedPrefix, ...]

    @property
    def members(self) -> tuple[int, ...]:
        """The windows of every group, group by group."""
        return tuple(i for g in self.groups for i in g.members)

    def fed(self, lengths: Sequence[int]) -> int:
        """Tokens fed to score the members, given each member window's length."""
        return sum(g.fed(lengths) for g in self.groups)


# What a buffer is scored in: groups of windows sharing prefixes, or a batch of windows (by index).
Task = SharedGroups | list[int]


@dataclass(frozen=True)
class Pass:
    """One forward pass of the base model: `rows` sequences of `width` positions (pads included), `tokens` real.

    A shared prefix's continuations also attend to its `cached` positions.
    """

    rows: int
    width: int
    tokens: int
    cached: int = 0

    @property
    def padded(self) -> int:
        """Positions fed, pads included."""
        return self.rows * self.width


@dataclass(frozen=True)
class BufferPlan:
    """A read-ahead buffer as scoring would meet it: its documents, characters, scored tokens, and tasks.

    `unshared` is the tokens its windows would feed without shared prefixes. Each task (a batch, or groups
    sharing prefixes) is its forward passes; workers take tasks in order. The buffer's documents are given
    out in parts, each once as many tasks as `given` says are scored (one part at the end, unless streaming).
    """

    docs: int
    chars: int
    tokens: int
    unshared: int
    tasks: list[list[Pass]]
    given: list[int]


class ScoringInterrupted(KeyboardInterrupt):
    """An interrupt while a buffer was being scored, carrying the documents of that buffer finished (not given out).

    Given back to `Scorer.score_buffers` as `done`, they are not scored again. `interrupt` is the
    KeyboardInterrupt (or subclass) that stopped the run.
    """

    def __init__(self, finished: list[DocScore], interrupt: KeyboardInterrupt) -> None:
        """Wrap `interrupt`, keeping the `finished` documents."""
        super().__init__()
        self.finished = finished
        self.interrupt = interrupt


class Scorer:
    """Score streams of texts with one model: tokenise, cut windows, sort by length, pack, score, reorder."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        *,
        bos: bool = True,
        max_length: int | None = None,
        stride: int | None = None,
        truncate: bool = False,
        all_tokens: bool = False,
        roles: Sequence[str] = DEFAULT_ROLES,
        batch_tokens: int | None = None,
        workers: int | None = None,
        threads: int | None = None,
        buffer_docs: int = 4096,
        buffer_chars: int | None = None,
        top_k: int = 0,
        ref_model: torch.nn.Module | None = None,
        ref_tokenizer: object | None = None,
        stream: bool = False,
        compile: str = "off",
        expected_tokens: int | None = None,
        prefix_sharing: bool = True,
        min_shared_prefix: int = DEFAULT_MIN_SHARED_PREFIX,
        head_dtype: str = "auto",
        words: bool = False,
        word_start_ids: Sequence[int] | None = None,
    ) -> None:
        """Set the scoring policy; None picks the model's context length, half of it and the device's budget.

        Texts longer than `max_length` are scored in windows advancing by `stride`, or cut if `truncate`;
        `all_tokens` also scores the prompt (context) tokens; `roles` are the chat turns that are scored.
        `threads` is the number of CPU threads scoring uses (default: torch's), shared among `workers`
        batches scored at once (default: one per thread on a CPU, up to 8).
        `top_k` > 0 adds the K most likely tokens at each position (more than the vocabulary is refused);
        `ref_model` (with the same tokenizer) adds its log-probs and entropies and the KL divergences between
        the two, from the same batches (`ref_tokenizer`, where given, is checked to be the same vocabulary as
        `tokenizer`).
        Records are read ahead in buffers of `buffer_docs` documents or `buffer_chars` characters;
        `stream` (for output that streams) gives each document out as soon as it and every one before it
        are finished, and splits the first buffer: about two batches, then the rest of it, so that the first
        documents come out within a few batches and the rest meet the batches of fixed buffers. A run that
        saves and resumes must not stream: only fixed buffers meet the same batches when resumed.
        `compile` (auto, on, off) compiles the base model's decoder layers with inductor on the CPU before
        scoring; auto does where compiling pays (nowhere on the CPU for now, engine/compiled.py) and
        `expected_tokens` (an estimate of the tokens to score) repay it.
        With `prefix_sharing`, windows of a buffer that begin with at least `min_shared_prefix` of the same
        tokens have that start fed once, its key/value cache serving each of them.
        `head_dtype` (auto, float32, bfloat16, float16) is the dtype of the output layer's products: float32 is
        exact; auto takes a 16-bit model's own dtype where such products are fast (head.head_products).
        `words` computes what the beginning-of-word correction of word surprisal needs (Words.correction): the
        log-probability of a word-start token at each position (the tokenizer's, engine/wordstart.py, or the token
        ids `word_start_ids` where given) and the rows after each stretch of scored tokens.
        """
        check_counts(min_shared_prefix, threads, top_k)
        self.device = next(model.parameters()).device
        if batch_tokens is None:
            batch_tokens = DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        context = context_length(model, tokenizer)
        if max_length is None:
            max_length = context
        elif context is not None and max_length > context:
            raise UsageError(f"{max_length} exceeds the model's context length of {context} tokens", arg="max_length")
        if stride is not None and max_length is None:
            raise UsageError("needs `max_length`: the model does not state its context length", arg="stride")
        if stride is None and max_length is not None and not truncate:
            stride = default_stride(max_length)
        check_limits(batch_tokens, max_length, stride, truncate)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.roles = tuple(roles)
        self.batch_tokens = batch_tokens
        self.threads = threads or torch.get_num_threads()
        self.workers = workers or (min(self.threads, MAX_CPU_WORKERS) if self.device.type == "cpu" else 1)
        self.buffer_docs = buffer_docs
        # About 64 full batches (at ~4 characters a token) per buffer: enough to sort by length, little
        # enough that a run saves its work every minute or two.
        self.buffer_chars = buffer_chars or BUFFER_CHARS_PER_BATCH_TOKEN * batch_tokens
        self.first_buffer_chars = (
            min(FIRST_BUFFER_CHARS_PER_BATCH_TOKEN * batch_tokens, self.buffer_chars) if stream else self.buffer_chars
        )
        self.stream = stream
        self.head = output_head(model).with_products(head_products(head_dtype, model))
        if top_k > (vocab := self.head.vocab_size):
            # Refused, not capped: a run whose metadata says top_k K lists K tokens at each position.
            message = f"{top_k} exceeds the model's vocabulary of {vocab:,} tokens (the most there are to list)"
            raise UsageError(message, arg="top_k")
        self.words = words
        self.word_starts = None
        if words and word_start_ids is not None:
            self.word_starts = given_word_starts(tokenizer, word_start_ids, self.head.vocab_size)
        elif words:
            self.word_starts = word_starts(tokenizer, self.head.vocab_size)
        correcting = self.word_starts is not None and self.word_starts.ids is not None
        # The word-start tokens as a 0/1 mask over the vocabulary (stats.WordStart), and as booleans for data/words.py.
        self.starts_word = self.word_starts.mask(self.head.vocab_size) if correcting else None
        self.subset = torch.from_numpy(self.starts_word).float().to(self.device) if correcting else None
        self.encoder = Encoder(
            tokenizer,
            bos=bos,
            max_length=max_length,
            truncate=truncate,
            all_tokens=all_tokens,
            end_id=self.word_starts.end_id if correcting else None,
        )
        compiling, self.compile_mode = should_compile(compile, self.device, self.head.chunked, expected_tokens)
        if compiling:
            # Compiled here, on the intra-op thread count of one worker: inductor builds that count in.
            forward = CompiledForward(self.head.base, max(1, self.threads // self.workers), auto=compile == "auto")
            self.compile_mode = forward.mode
            self.head = self.head.with_base(forward)
        self.top_k = top_k
        self.ref_model = ref_model
        self.ref_head = (
            None if ref_model is None else output_head(ref_model).with_products(head_products(head_dtype, ref_model))
        )
        if ref_tokenizer is not None:
            check_same_vocabulary(tokenizer, ref_tokenizer)
        if self.ref_head is not None and self.ref_head.vocab_size != self.head.vocab_size:
            raise ModelError(
                f"has {self.ref_head.vocab_size:,} output logits, the model {self.head.vocab_size:,}", arg="ref_model"
            )
        self.statistics = (
            "logprob",
            "entropy",
            "rank",
            *(("top_k",) if top_k else ()),
            *(("reference",) if ref_model is not None else ()),
            *(("word_start",) if correcting else ()),
        )
        self.columns = (*columns_of(self.statistics), *(("top_tokens",) if top_k else ()))
        self.token_texts = TokenTexts(tokenizer)
        self.prefix_sharing = prefix_sharing
        self.min_shared_prefix = min_shared_prefix

    @property
    def metadata(self) -> dict[str, str]:
        """The scoring choices that change numbers, for the output's metadata."""
        bos_id = self.encoder.bos_id
        bos = (
            "none (the first token of each text is context only)"
            if bos_id is None
            else (f"prepended {self.tokenizer.convert_ids_to_tokens(bos_id)!s} (id {bos_id})")
        )
        if self.max_length is None:
            long_texts = "scored whole (the model states no context length)"
        elif self.stride is None:
            long_texts = f"truncated to {self.max_length} tokens"
        else:
            long_texts = f"windows of {self.max_length} tokens, stride {self.stride}"
        return {
            "bos": bos,
            "max_length": str(self.max_length),
            "stride": str(self.stride),
            "long_texts": long_texts,
            "all_tokens": str(self.encoder.all_tokens).lower(),
            "roles": ",".join(self.roles),
            "batch_tokens": str(self.batch_tokens),
            "head": self.head.mode,
            "head_dtype": self.head.products_name,
            "compile": self.compile_mode,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            # How a product is split across threads can change float rounding (never beyond 1e-4 nats).
            "threads": f"{self.threads} ({self.workers} batch{'es' if self.workers > 1 else ''} at a time)",
            "top_k": str(self.top_k),
            **({"word_correction": self.word_starts.correction} if self.word_starts is not None else {}),
            # Shared prefixes change how products are batched: rounding only (never beyond 1e-4 nats).
            "prefix_sharing": (
                f"on (starts of at least {self.min_shared_prefix} tokens shared by windows of a buffer fed once)"
                if self.prefix_sharing
                else "off"
            ),
            **(
                {}
                if self.ref_model is None
                else {
                    "ref_head": self.ref_head.mode,
                    "ref_dtype": str(next(self.ref_model.parameters()).dtype).removeprefix("torch."),
                }
            ),
        }

    def score_texts(self, texts: Iterable[str]) -> list[DocScore]:
        """Score a list of texts, returning one DocScore per text in order."""
        return list(self.score_records(Record(i, t) for i, t in enumerate(texts)))

    def score_records(
        self,
        records: Iterable[Record],
        progress: Callable[[ScoreProgress], None] | None = None,
        on_error: Callable[[Record, str], None] | None = None,
    ) -> Iterator[DocScore]:
        """Score records as a stream, yielding DocScores in input order; `progress` is told of each step.

        Conversations are rendered with the chat template first; one it refuses raises InputError, or goes
        to `on_error` and is skipped.
        """
        for docs in self.score_buffers(records, progress, on_error):
            yield from docs

    def score_buffers(
        self,
        records: Iterable[Record],
        progress: Callable[[ScoreProgress], None] | None = None,
        on_error: Callable[[Record, str], None] | None = None,
        done: dict[object, DocScore] | None = None,
    ) -> Iterator[list[DocScore]]:
        """As score_records, one read-ahead buffer of documents at a time: the points to save a run at.

        Streaming, a buffer comes in parts instead: each run of its documents as soon as they and every
        document before them are finished.

        Buffers are cut by counts of records and characters only (fixed, unless streaming), so a run
        resumed after a buffer's last record meets the very same buffers, batches and numbers as an
        uninterrupted one. An interrupt (KeyboardInterrupt) is raised as ScoringInterrupted, carrying the
        finished documents of the buffer in flight; given back as `done` (by Record.key), they are not
        scored again, and the batches that hold anything else are the same as before, so the numbers are too.
        """
        state = ScoreProgress()
        report = progress or (lambda _: None)
        for buffer in self._buffers(records, on_error):
            yield from self._score_buffer(buffer, state, report, done or {})

    def score_sequences(
        self, sequences: Sequence[Sequence[int]], first: Sequence[int], state: ScoreProgress | None = None
    ) -> list[dict[str, np.ndarray]]:
        """The statistics of the tokens of each token-id sequence from position `first[i]` on, in input order.

        For callers that tokenise themselves (lm-evaluation-harness, executors/harness.py): each sequence is fed whole,
        as given (no BOS added, no windows: one longer than the model's context is the caller's to cut),
        batched, sorted and prefix-shared as the windows of one buffer of `score_records` are. `state`, where
        given, counts the tokens scored, fed and spared by shared prefixes.
        """
        if len(first) != len(sequences):
            raise UsageError(f"has {len(first)} positions for {len(sequences)} sequences", arg="first")
        encoded, work = [], []
        for i, (ids, start) in enumerate(zip(sequences, first)):
            ids = np.asarray(ids, dtype=np.int32)
            if not 1 <= start <= len(ids):
                raise UsageError(f"{start} is not a position from 1 to sequence {i}'s length, {len(ids)}", arg="first")
            targets = np.zeros(len(ids), dtype=bool)
            targets[start:] = True
            no_text = np.zeros((0, 2), dtype=np.int32)
            encoded.append(Encoded(ids, no_text, 0, False, np.ones(len(ids), dtype=bool), targets))
            if start < len(ids):
                work.append(Window(i, 0, len(ids), start))
        out = [self._empty() for _ in sequences]
        state = state if state is not None else ScoreProgress()
        state.docs_planned += len(sequences)
        state.tokens_planned += sum(e.n_scored for e in encoded)
        tasks = self._tasks(work, encoded)
        with self._batch_runner() as run:
            for task, (scores, fed) in zip(tasks, run(lambda task: self._score_task(task, work, encoded), tasks)):
                for i, score in zip(_rows(task), scores):
                    out[work[i].doc] = score
                    state.tokens_done += len(score["logprob"])
                state.tokens_fed += fed
                state.tokens_shared += sum(work[i].end - work[i].begin - 1 for i in _rows(task)) - fed
        state.docs_done += len(sequences)
        return out

    def plan_buffers(
        self, records: Iterable[Record], on_error: Callable[[Record, str], None] | None = None
    ) -> Iterator[BufferPlan]:
        """How score_buffers would cut the records into buffers and forward passes, without running the model.

        For counting a run's work (benchmarks/bench_stream.py). A model whose cache cannot be copied to rows
        scores shared-prefix groups as ordinary batches instead of the passes planned here.
        """
        for buffer in self._buffers(records, on_error):
            encoded, work, _, tasks = self._plan(buffer)
            lengths = [w.end - w.begin for w in work]
            left = np.bincount([w.doc for w in work], minlength=len(buffer))
            given, ready = [], 0
            for k, task in enumerate(tasks, 1):
                np.subtract.at(left, [work[i].doc for i in _rows(task)], 1)
                if self.stream and (end := _ready(left, ready)) > ready:
                    given, ready = [*given, k], end
            yield BufferPlan(
                docs=len(buffer),
                chars=sum(len(r.text) for r in buffer),
                tokens=sum(e.n_scored for e in encoded),
                unshared=sum(n - 1 for n in lengths),
                tasks=[self._passes(task, lengths) for task in tasks],
                given=given + [len(tasks)] if ready < len(buffer) else given,
            )

    def _buffers(
        self, records: Iterable[Record], on_error: Callable[[Record, str], None] | None
    ) -> Iterator[list[Record]]:
        """The read-ahead buffers of records (chats rendered), cut by counts of records and characters only.

        Streaming splits only the first full buffer, in two: its first `first_buffer_chars` characters,
        then the rest of it. The buffers after it are those of fixed buffers, and so are their batches. A
        buffer ends only after a record's last choice (inputs.Choice).
        """
        buffer: list[Record] = []
        chars = full_docs = full_chars = 0
        limit = self.first_buffer_chars
        for record in render_chats(records, self.tokenizer, self.roles, on_error):
            buffer.append(record)
            chars, full_docs, full_chars = chars + len(record.text), full_docs + 1, full_chars + len(record.text)
            if record.choice is not None and not record.choice.last:
                continue  # a record's choices stay together, so that their context is fed once
            full = full_docs >= self.buffer_docs or full_chars >= self.buffer_chars
            if full or chars >= limit:
                yield buffer
                buffer, chars, limit = [], 0, self.buffer_chars
            if full:
                full_docs, full_chars = 0, 0
        if buffer:
            yield buffer

    def _encode(self, records: list[Record]) -> list[Encoded]:
        """Encode a buffer, plain texts and rendered chats each in one tokenizer call."""
        encoded: list[Encoded | None] = [None] * len(records)
        for chat in (False, True):
            group = [i for i, r in enumerate(records) if r.chat == chat]
            if group:
                texts, spans = [records[i].text for i in group], [records[i].spans for i in group]
                for i, enc in zip(group, self.encoder.encode(texts, spans, chat=chat)):
                    encoded[i] = enc
        return encoded

    def _windows(self, doc: int, enc: Encoded) -> list[tuple[Window, int]]:
        """The windows of a sequence that have targets, each ending at its last target; with its first row.

        A window's first row is where its targets' statistics go among the document's: after those of the
        windows before it.
        """
        out, rows = [], 0
        for w in windows(doc, len(enc.ids), self.max_length, self.stride or 1):
            targets = np.flatnonzero(enc.targets[w.first : w.end])
            if len(targets):
                # Later positions cannot change earlier ones under causal attention: no need to feed them.
                out.append((Window(doc, w.begin, w.first + int(targets[-1]) + 1, w.first), rows))
                rows += len(targets)
        return out

    def _plan(self, records: list[Record]) -> tuple[list[Encoded], list[Window], list[int], list[Task]]:
        """A buffer's encodings, windows (with their first rows) and tasks: shared prefixes, then batches."""
        encoded = self._encode(records)
        work, first_rows = [], []
        for i, enc in enumerate(encoded):
            for w, row in self._windows(i, enc):
                work.append(w)
                first_rows.append(row)
        return encoded, work, first_rows, self._tasks(work, encoded)

    def _tasks(self, work: list[Window], encoded: list[Encoded]) -> list[Task]:
        """The tasks that score a buffer's windows: packed shared-prefix groups (most tokens first), then batches."""
        lengths = [w.end - w.begin for w in work]
        groups = self._plan_prefixes(work, encoded)
        grouped = {i for g in groups for i in g.members}
        alone = [i for i in range(len(work)) if i not in grouped]
        plain = [lengths[i] - 1 for i in alone]
        return [
            *self._shared_tasks(groups, lengths),
            *([alone[k] for k in rows] for rows in pack(plain, self._budget(plain))),
        ]

    def _shared_tasks(self, groups: list[SharedPrefix], lengths: Sequence[int]) -> list[SharedGroups]:
        """Shared-prefix groups packed into tasks within the budget (most tokens first), longest prefixes together.

        A task's prefixes are one padded pass (groups x longest prefix within the budget, unless alone), and its
        continuations one pass where they fit (_fits); a group too large for one shares its task with no other.
        """
        budget = self._budget([g.fed(lengths) for g in groups])
        packs: list[list[SharedPrefix]] = []
        for group in sorted(groups, key=lambda g: (-g.length, g.members)):
            if packs and _fits([*packs[-1], group], lengths, budget):
                packs[-1].append(group)
            else:
                packs.append([group])
        return sorted((SharedGroups(tuple(p)) for p in packs), key=lambda t: -t.fed(lengths))

    def _budget(self, lengths: Sequence[int]) -> int:
        """The token budget of a buffer's batches of rows of `lengths`: smaller where it would not feed every worker."""
        # A small input (or a run's last buffer) in one batch of `batch_tokens` would leave all workers but one
        # idle: the samples' 20 short texts took 5.0 s with 14 of them in one batch on one core, 2.5 s split.
        if self.workers == 1 or not lengths:
            return self.batch_tokens
        return min(self.batch_tokens, max(max(lengths), -(-sum(lengths) // self.workers)))

    def _passes(self, task: Task, lengths: Sequence[int]) -> list[Pass]:
        """The forward passes of the base model that scoring a task runs (windows of `lengths` tokens)."""
        if not isinstance(task, SharedGroups):
            return [Pass(len(task), max(lengths[i] for i in task) - 1, sum(lengths[i] - 1 for i in task))]
        width = max(g.length for g in task.groups)
        passes = [Pass(len(task.groups), width, sum(g.length for g in task.groups))]
        grown = [lengths[i] - 1 - g.length for g in task.groups for i in g.members if lengths[i] - 1 > g.length]
        for rows in _continuations(grown, width, self.batch_tokens):
            passes.append(Pass(len(rows), max(grown[r] for r in rows), sum(grown[r] for r in rows), cached=width))
        return passes

    def _score_buffer(
        self,
        records: list[Record],
        state: ScoreProgress,
        report: Callable[[ScoreProgress], None],
        done: dict[object, DocScore],
    ) -> Iterator[list[DocScore]]:
        """Score one read-ahead buffer, longest windows first; its documents in input order, all at once.

        Streaming, each run of documents is given out as soon as it and every document before it are finished.
        """
        encoded, work, first_rows, tasks = self._plan(records)
        lengths = [w.end - w.begin for w in work]
        left = np.bincount([w.doc for w in work], minlength=len(records))
        # Progress counts input records: a record with choices is done with its last choice (Record.choice).
        counts = np.array([r.choice is None or r.choice.last for r in records], dtype=np.int64)
        state.docs_planned += int(counts.sum())
        state.tokens_planned += sum(e.n_scored for e in encoded)
        state.docs_done += int(counts[left == 0].sum())
        report(state)
        # Each document's statistics, filled in as its windows are scored: for a huge text, no copy of them all.
        columns: list[dict[str, np.ndarray] | None] = [None] * len(records)
        # Tasks are planned over the whole buffer's content, then those that hold only finished documents
        # skipped: a resumed buffer meets the very same tasks.
        tasks = [t for t in tasks if any(records[work[i].doc].key not in done for i in _rows(t))]
        for i, record in enumerate(records):
            if record.key in done:
                state.docs_done += int(left[i] > 0) * int(counts[i])
                state.tokens_done += encoded[i].n_scored
                left[i] = 0
        given = 0  # the documents before this one are given out (streaming: as soon as they all are finished)
        caller = torch.get_num_threads()
        try:
            with self._batch_runner() as run:
                for task, (scores, fed) in zip(tasks, run(lambda task: self._score_task(task, work, encoded), tasks)):
                    state.tokens_fed += fed
                    state.tokens_shared += sum(lengths[i] - 1 for i in _rows(task)) - fed
                    for i, score in zip(_rows(task), scores):
                        doc = work[i].doc
                        if records[doc].key not in done:
                            columns[doc] = _fill(columns[doc], score, first_rows[i], encoded[doc].n_scored)
                            left[doc] -= 1
                            state.docs_done += int(left[doc] == 0) * int(counts[doc])
                            state.tokens_done += len(score["logprob"])
                    report(state)
                    faults.point("batch")
                    interrupts.reraise()
                    ready = _ready(left, given) if self.stream else given
                    if ready > given:
                        # Given out while the workers go on with the batches already handed to them; with
                        # one worker nothing runs meanwhile, and the caller has its own thread setting back.
                        docs = self._assemble(records, encoded, columns, done, range(given, ready))
                        with intra_op_threads(caller) if self.workers == 1 else nullcontext():
                            yield docs
                        columns[given:ready] = [None] * (ready - given)
                        given = ready
        except KeyboardInterrupt as e:
            finished = [i for i in range(given, len(records)) if left[i] == 0]
            raise ScoringInterrupted(self._assemble(records, encoded, columns, done, finished), e) from e
        if given < len(records):
            yield self._assemble(records, encoded, columns, done, range(given, len(records)))

    def _assemble(
        self,
        records: list[Record],
        encoded: list[Encoded],
        columns: list[dict[str, np.ndarray] | None],
        done: dict[object, DocScore],
        which: Iterable[int],
    ) -> list[DocScore]:
        """The DocScores of the buffer's documents `which` (in order), from their statistics' columns."""
        docs = []
        for i in which:
            record = records[i]
            if record.key in done:
                # An interrupted session's document, saved without its kept fields: they are the record's.
                docs.append(replace(done[record.key], kept=record.kept))
                continue
            stats = columns[i] if columns[i] is not None else self._empty()
            docs.append(self._doc_score(record, encoded[i], stats))
        return docs

    @contextmanager
    def _batch_runner(self) -> Iterator[Callable]:
        """A `map` over batches: in order here, or on `workers` threads of one intra-op thread each.

        On a CPU, small matrix products and element-wise kernels share cores poorly; independent batches
        on separate cores score about 10-15% more tokens per second than both cores on each batch.
        """
        with intra_op_threads(max(1, self.threads // self.workers)):
            if self.workers == 1:
                yield map
                return
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="scorecli")
            try:
                yield pool.map
            finally:
                # On Ctrl-C or an error, drop the batches not yet started rather than finish the buffer. Signals wait
                # for the workers' last batches: a join cut short would leave them running as the process ends.
                with interrupts.held():
                    pool.shutdown(wait=True, cancel_futures=True)

    def _plan_prefixes(self, work: list[Window], encoded: list[Encoded]) -> list[SharedPrefix]:
        """The windows of a buffer that share a start worth feeding once (none without prefix sharing)."""
        if not self.prefix_sharing:
            return []
        return plan_prefixes([encoded[w.doc].ids[w.begin : w.end] for w in work], self.min_shared_prefix)

    def _score_task(
        self, task: Task, work: list[Window], encoded: list[Encoded]
    ) -> tuple[list[dict[str, np.ndarray]], int]:
        """The statistics of each window of a task (a batch of windows, or groups sharing prefixes); tokens fed."""
        if isinstance(task, SharedGroups):
            return self._score_shared([([work[i] for i in g.members], g.length) for g in task.groups], encoded)
        batch = [work[i] for i in task]
        return self._score_batch(batch, encoded), sum(w.end - w.begin - 1 for w in batch)

    def _score_shared(
        self, groups: list[tuple[list[Window], int]], encoded: list[Encoded]
    ) -> tuple[list[dict[str, np.ndarray]], int]:
        """The statistics of groups of windows, each group's first `length` + 1 tokens agreeing: starts fed once.

        Label j of a window predicts its position j + 1 from its tokens 0..j, so labels 0..length-1 are the
        same in every window of a group: they are scored once, from the prefix pass (each group's prefix a
        row, right-padded), for the positions any window scores. Each continuation starts at token `length`
        (fed again, so that its logits predict the window's own next token), after its group's row of the
        prefixes' key/value cache; where prefixes differ in length, a mask hides the pads of the shorter ones
        and positions go on from each row's own prefix. Pads follow the real tokens, which never attend to
        them. Returns the statistics, windows in order (group by group), and the tokens fed.
        """
        window = [w for members, _ in groups for w in members]
        seqs = [encoded[w.doc].ids[w.begin : w.end] for w in window]
        wanted = [_targets(w, encoded[w.doc]) for w in window]
        owner = [g for g, (members, _) in enumerate(groups) for _ in members]
        starts = [groups[g][1] for g in owner]  # each window's shared length
        width = max(length for _, length in groups)
        prefixes = torch.zeros((len(groups), width + 1), dtype=torch.long)
        select = torch.zeros((len(groups), width), dtype=torch.bool)
        scored = []  # each group's labels that any of its windows scores
        for g, (_, length) in enumerate(groups):
            rows = [k for k in range(len(window)) if owner[k] == g]
            prefixes[g, : length + 1] = torch.from_numpy(seqs[rows[0]][: length + 1].astype(np.int64))
            scored.append(np.logical_or.reduce([wanted[k][:length] for k in rows]))
            select[g, :length] = torch.from_numpy(scored[g])
        prefixes, select = prefixes.to(self.device), select.to(self.device)
        heads = [self.head] if self.ref_head is None else [self.head, self.ref_head]
        with torch.inference_mode():
            outs = [head.cached_states(prefixes[:, :width]) for head in heads]
            caches = [cache for _, cache in outs]
            if not all(_plain_cache(cache) for cache in caches):
                return self._score_apart(window, encoded)
            shared = self._stats([states[select] for states, _ in outs], prefixes[:, 1:][select])
            # Row k of a group's part is position k of those its `scored` marks: each window takes its own.
            by_group = _split(shared, np.cumsum([s.sum() for s in scored])[:-1])
            index = [np.cumsum(s) - 1 for s in scored]
            parts = [
                {c: v[index[g][wanted[k][: starts[k]]]] for c, v in by_group[g].items()} for k, g in enumerate(owner)
            ]
            more = [k for k, s in enumerate(seqs) if len(s) - 1 > starts[k]]
            for rows in _continuations([len(seqs[k]) - 1 - starts[k] for k in more], width, self.batch_tokens):
                batch = [more[r] for r in rows]
                input_ids, labels = collate([seqs[k][starts[k] :] for k in batch], pad_id=0)
                select = torch.zeros(labels.shape, dtype=torch.bool)
                for row, k in enumerate(batch):
                    targets = wanted[k][starts[k] :]
                    select[row, : len(targets)] = torch.from_numpy(targets)
                first = torch.tensor([starts[k] for k in batch])[:, None]
                positions = first + torch.arange(input_ids.shape[1])
                mask = None
                if any(starts[k] < width for k in batch):
                    mask = torch.ones((len(batch), width + input_ids.shape[1]), dtype=torch.bool)
                    mask[:, :width] = torch.arange(width) < first
                    mask = mask.to(self.device)
                input_ids, labels, select = input_ids.to(self.device), labels.to(self.device), select.to(self.device)
                positions = positions.to(self.device)
                rows_of = [owner[k] for k in batch]
                states = [
                    head.cached_states(input_ids, _rows_of(cache, rows_of, head.model.config), positions, mask)[0]
                    for head, cache in zip(heads, caches)
                ]
                stats = self._stats([s[select] for s in states], labels[select])
                bounds = np.cumsum(select.sum(dim=1).tolist())[:-1]
                for k, part in zip(batch, _split(stats, bounds)):
                    parts[k] = {c: np.concatenate([parts[k][c], part[c]]) for c in part}
        return parts, sum(length for _, length in groups) + sum(len(seqs[k]) - 1 - starts[k] for k in more)

    def _score_apart(self, group: list[Window], encoded: list[Encoded]) -> tuple[list[dict[str, np.ndarray]], int]:
        """Score a group's windows in ordinary batches, for models whose cache cannot simply be copied to rows.

        Recurrent states and sliding-window caches keep other things than every position's keys and values.
        """
        parts: list[dict[str, np.ndarray]] = [{} for _ in group]
        lengths = [w.end - w.begin - 1 for w in group]
        for rows in pack(lengths, self.batch_tokens):
            for r, part in zip(rows, self._score_batch([group[r] for r in rows], encoded)):
                parts[r] = part
        return parts, sum(lengths)

    def _stats(self, states: list[torch.Tensor], labels: torch.Tensor) -> dict[str, np.ndarray]:
        """The statistics of rows of states of the model (and the reference, second), as numpy columns."""
        ref_states = states[1] if len(states) > 1 else None
        stats = self.head.score_states(
            states[0], labels, self.statistics, self.top_k, self.ref_head, ref_states, self.subset
        )
        return {c: v.cpu().numpy() for c, v in stats.items()}

    def _score_batch(self, batch: list[Window], encoded: list[Encoded]) -> list[dict[str, np.ndarray]]:
        """The statistics of the targets of each window of one padded batch, as columns."""
        # Pads are never attended to nor scored; id 0 is simply an id every embedding table has.
        input_ids, labels = collate([encoded[w.doc].ids[w.begin : w.end] for w in batch], pad_id=0)
        select = torch.zeros(labels.shape, dtype=torch.bool)
        for row, w in enumerate(batch):
            targets = _targets(w, encoded[w.doc])
            select[row, : len(targets)] = torch.from_numpy(targets)
        input_ids, labels, select = input_ids.to(self.device), labels.to(self.device), select.to(self.device)
        # No attention mask: with right padding and causal attention no real token can see a pad, and
        # without a mask attention takes the fused causal kernel instead of materialising [B, heads, T, T].
        with torch.inference_mode():
            stats = self.head.score(
                input_ids,
                labels,
                None,
                select=select,
                statistics=self.statistics,
                top_k=self.top_k,
                ref=self.ref_head,
                subset=self.subset,
            )
        bounds = np.cumsum(select.sum(dim=1).tolist())[:-1]
        return _split({c: v.cpu().numpy() for c, v in stats.items()}, bounds)

    def _empty(self) -> dict[str, np.ndarray]:
        """The statistics of a document without a scored token."""
        return {c: v.numpy() for c, v in concat([], self.statistics, self.top_k).items()}

    def _doc_score(self, record: Record, enc: Encoded, stats: dict[str, np.ndarray]) -> DocScore:
        """Assemble a document's token rows from its encoding and the scores of its targets."""
        # Every array here is int32 or bool, and the token texts are decoded only as rows are written: a
        # document of millions of tokens costs some 30 bytes a token (see benchmarks/bench_memory.py).
        stats, after = _after_rows(enc, stats)
        targets = enc.text_targets
        text_ids = enc.ids[enc.n_prefix : enc.n_prefix + len(enc.offsets)]  # the end token after them aside
        if targets.all():  # every token is a row (a plain text): views, not copies
            positions = np.arange(len(targets), dtype=np.int32)
            token_ids, offsets, is_response = text_ids, enc.offsets, enc.response
        else:
            positions = np.flatnonzero(targets).astype(np.int32)
            token_ids, offsets, is_response = (
                text_ids[positions],
                enc.offsets[positions],
                enc.response[positions],
            )
        token_ids, offsets = token_ids.astype(np.int32, copy=False), offsets.astype(np.int32, copy=False)
        counted = offsets if is_response.all() else offsets[is_response]
        words = assign_words(word_spans(record.text, record.spans, _reach(enc), record.regions), counted)
        if self.words:
            words.correction = self._corrections(words, enc, token_ids, positions, is_response, stats, after)
        return DocScore(
            doc=record.doc,
            id=record.id,
            text=record.text,
            token_ids=token_ids,
            positions=positions,
            starts=offsets[:, 0],
            ends=offsets[:, 1],
            tokens=TokenStrings(token_ids, self.token_texts),
            is_response=is_response,
            n_bytes=_scored_bytes(record, enc),
            truncated=enc.truncated,
            words=words,
            stats=self._with_top_tokens(stats),
            kept=record.kept,
            unscored_chars=enc.unscored,
            choice=record.choice,
        )

    def _corrections(
        self,
        words: Words,
        enc: Encoded,
        token_ids: np.ndarray,
        positions: np.ndarray,
        is_response: np.ndarray,
        stats: dict[str, np.ndarray],
        after: dict[str, np.ndarray],
    ) -> np.ndarray:
        """Each word's beginning-of-word correction (words.word_corrections); zeros where the tokenizer needs none."""
        if self.starts_word is None:
            return np.zeros(len(words))
        every = is_response.all()
        response = lambda values: values if every else values[is_response]  # noqa: E731
        # Each stretch's last token, among the text's tokens (the last one where the text was cut after it).
        ends = np.where(enc.after >= 0, enc.after - enc.n_prefix - 1, len(enc.offsets) - 1)
        ended = ended_logprob(after["token_id"], after["logprob"], after["word_start_logprob"], self.starts_word)
        return word_corrections(
            words,
            response(token_ids),
            response(positions),
            self.starts_word,
            response(stats["word_start_logprob"]),
            ends,
            ended,
        )

    def _with_top_tokens(self, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The statistics, with the texts of the top-k token ids where there are some."""
        if "top_ids" not in stats:
            return stats
        ids = stats["top_ids"]
        texts = np.empty(ids.shape, dtype=object)
        texts.reshape(-1)[:] = self.token_texts(ids.reshape(-1).tolist())
        return {**stats, "top_tokens": texts}


def _ready(left: np.ndarray, given: int) -> int:
    """How many of a buffer's first documents are finished (`left` windows to score), counting on from `given`."""
    while given < len(left) and left[given] == 0:
        given += 1
    return given


def _continuations(grown: Sequence[int], cached: int, batch_tokens: int) -> list[list[int]]:
    """Batches of the continuations (of `grown` tokens each) of shared-prefix windows after `cached` positions."""
    # A row's new tokens cost what any fed token costs; its copy of the cached start costs memory and a little
    # attention, not a token's compute, so it counts at 1/CACHED_WEIGHT of a token: counted whole, a few-shot
    # preamble of 485 tokens left room for 2 questions a pass at 1,024 tokens (100 passes for 200 questions).
    return pack([n + cached // CACHED_WEIGHT for n in grown], batch_tokens)


def _fits(groups: Sequence[SharedPrefix], lengths: Sequence[int], budget: int) -> bool:
    """Whether groups sharing prefixes fit one task: padded prefixes and continuations in one pass each."""
    width = max(g.length for g in groups)
    grown = [lengths[i] - 1 - g.length for g in groups for i in g.members if lengths[i] - 1 > g.length]
    return len(groups) * width <= budget and len(_continuations(grown, width, budget)) <= 1


def _rows(task: Task) -> Sequence[int]:
    """The windows a task scores."""
    return task.members if isinstance(task, SharedGroups) else task


def _targets(w: Window, enc: Encoded) -> np.ndarray:
    """Which labels of a window are scored: label j predicts position begin + j + 1; only the window's own count."""
    targets = enc.targets[w.begin + 1 : w.end].copy()
    targets[: w.first - w.begin - 1] = False
    return targets


def _split(stats: dict[str, np.ndarray], bounds: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Columns over the rows of a batch, split into each row's."""
    split = {c: np.split(v, bounds) for c, v in stats.items()}
    return [{c: parts[row] for c, parts in split.items()} for row in range(len(bounds) + 1)]


def _plain_cache(cache: object) -> bool:
    """Whether a cache holds every position's keys and values and nothing else, so it can be copied to rows."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _rows_of(cache: object, rows: Sequence[int], config: object) -> object:
    """A fresh key/value cache whose row r holds `cache`'s row rows[r] (the new tokens grow it)."""
    from transformers import DynamicCache

    if len(set(rows)) == 1:  # one prefix for every row: views of it, copied only as the new tokens join them
        take = lambda t: t[rows[0] : rows[0] + 1].expand(len(rows), -1, -1, -1)  # noqa: E731
    else:
        index = torch.tensor(rows, device=next(iter(cache))[0].device)
        take = lambda t: t.index_select(0, index)  # noqa: E731
    return DynamicCache(ddp_cache_data=[(take(k), take(v)) for k, v, *_ in cache], config=config)


def _fill(
    columns: dict[str, np.ndarray] | None, score: dict[str, np.ndarray], first: int, rows: int
) -> dict[str, np.ndarray]:
    """Put a window's statistics into its document's columns of `rows` rows, from row `first` on."""
    if columns is None:
        columns = {c: np.empty((rows, *v.shape[1:]), v.dtype) for c, v in score.items()}
    for c, v in score.items():
        columns[c][first : first + len(v)] = v
    return columns


def _after_rows(enc: Encoded, stats: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A document's token rows, and its rows after each stretch (Encoded.after): labels, log-probs, word starts.

    The log-probs and word-start log-probs of the rows after are NaN where unknown (a truncated text's end).
    """
    after = {"token_id": np.zeros(len(enc.after), dtype=np.int64)}
    after |= {c: np.full(len(enc.after), np.nan, dtype=np.float32) for c in ("logprob", "word_start_logprob")}
    if not len(enc.after):
        return stats, after
    known = np.flatnonzero(enc.after >= 0)
    rows = len(stats["logprob"])
    if len(enc.extra) == 1 and enc.extra[0] == len(enc.ids) - 1 and enc.after[known].tolist() == [len(enc.ids) - 1]:
        # A plain text: its one extra row, after the text, is its last: views of the rest, no copies.
        tokens, at = {c: v[: rows - 1] for c, v in stats.items()}, np.array([rows - 1])
    else:
        row_of = np.cumsum(enc.targets) - 1
        keep = np.ones(rows, dtype=bool)
        keep[row_of[enc.extra]] = False
        tokens, at = {c: v[keep] for c, v in stats.items()}, row_of[enc.after[known]]
    after["token_id"][known] = enc.ids[enc.after[known]]
    for c in ("logprob", "word_start_logprob"):
        after[c][known] = stats[c][at]
    return tokens, after


def _reach(enc: Encoded) -> int | None:
    """Where a truncated text's tokens end (None where the text is whole)."""
    return int(enc.offsets[-1, 1]) if enc.truncated and len(enc.offsets) else None


def _scored_bytes(record: Record, enc: Encoded) -> int:
    """UTF-8 bytes of the response text from the first scored token (the text's start, after a BOS) on."""
    targets = enc.text_targets
    if not targets.any():
        return 0
    start = 0 if enc.n_prefix else int(enc.offsets[int(targets.argmax()), 0])
    end = int(enc.offsets[-1, 1]) if enc.truncated else len(record.text)
    spans = [(0, len(record.text))] if record.spans is None else record.spans
    return sum(
        len(record.text[max(a, start) : min(b, end)].encode("utf-8")) for a, b in spans if min(b, end) > max(a, start)
    )
