"""Scale-out on Ray: a corpus cut into shards, each scored by the ordinary engine as a Ray task, then joined.

Each shard is scored into its own run folder; the shards' files are then joined into Parquet datasets with
the same rows, columns and metadata as one process's run.

DIR/shards/plan.json        the shards (files, line ranges, row groups), the options and the run's metadata
DIR/shards/NNNNN/           a shard's run folder (runfolder/runs.py's protocol: parts, then summary.json when done)
DIR/tokens/NNNNN.parquet    the results, one file per shard in input order (also sequences/, words/)
DIR/summary.json            last: the run is finished

A shard's documents carry their corpus-wide numbers (the shard's offset plus its own), so every row equals
a single-process run's. A retried task resumes its shard from the parts it saved; a rerun of the whole run
skips the shards that are complete.

Layer: executors. It must not import the front of scorecli, nor torch, rich, typer or plotly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TextIO

from scorecli.base import faults, interrupts
from scorecli.base.errors import OutputError, ScorecliError, UsageError, first_line, reading
from scorecli.data.options import OPTIONS_BEFORE_THEY_EXISTED, RAY_INSTALL, ScoreOptions
from scorecli.executors.session import Progress, RunProgress, Selection, Session, load_models, make_scorer
from scorecli.inputs.corpus import is_text_file, read_corpus
from scorecli.inputs.kept import types_metadata
from scorecli.inputs.records import Fields, Rejected, display_name, is_parquet, read_records
from scorecli.inputs.remote import is_url
from scorecli.runfolder.layout import (
    CHOICES_FILE,
    ERRORS_FILE,
    LOCK_FILE,
    PARTS_DIR,
    PLAN_FILE,
    RESULT_FILES,
    RESULT_KINDS,
    RUN_FILE,
    SEQUENCES_FILE,
    SHARDS_DIR,
    SUMMARY_FILE,
    TOKENS_FILE,
    is_sharded_run,
    result_file,
    result_files,
    write_file,
)

SHARDS_PER_WORKER = 4  # a few per worker: a slow shard does not hold the whole run up at its end
MAX_RETRIES = 3
SHARD_RELEASE_SECONDS = 30.0  # how long a shard task waits for an interrupted run's task to let go of its folder
_FORWARDED_ENV = ("SCORECLI_CACHE_DIR", faults.FAULT_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROGRESS_SECONDS = 0.5
# Ray's own chatter (log deduplication notes, usage statistics) is not the user's business.
_QUIET_ENV = {"RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
LOOPBACK = "127.0.0.1"
DRIVER_LOG = "scorecli-driver-{pid}.log"  # in Ray's log folder: the driver's own lines from Ray


def require_ray() -> None:
    """Check that Ray can be imported; UsageError saying how to install it where it cannot."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"needs Ray, which is not installed: {RAY_INSTALL}", arg="ray") from None


@dataclass(frozen=True)
class Shard:
    """A contiguous run of records of one input file, scored as one task."""

    number: int
    source: str
    first_doc: int  # the corpus-wide number of its first record
    records: int
    at: tuple[int, int] = (0, 0)  # where reading starts in the file (see inputs.read_records)

    @property
    def name(self) -> str:
        """The shard's folder and file name: its number, five digits."""
        return f"{self.number:05d}"


@dataclass
class Job:
    """What every shard's task needs: the run's options, as its folder saves them, and the run's metadata."""

    options: dict  # ScoreOptions.saved: how to read records, the models and scoring; saved in each shard's folder
    metadata: dict[str, str] = field(default_factory=dict)  # the input's, added to the models' and scorer's
    kept: dict = field(default_factory=dict)  # the kept fields' Arrow types (kept.KeptTypes): None for JSON values
    words: bool = False  # words.parquet (the options' words, or word rows on a stream)
    expected_tokens: int | None = None  # the whole input's, which decides compile auto for every shard alike
    threads: int | None = None  # each task's CPU threads (None: the options')

    @property
    def score_options(self) -> ScoreOptions:
        """The run's options."""
        return ScoreOptions.from_saved(self.options)


@dataclass
class ShardedResult:
    """A finished sharded run: its figures and metadata (as summary.json), and what this session did."""

    figures: dict
    metadata: dict[str, str]
    written: list[Path]
    shards: int
    shards_scored: int  # by this session; the others were complete already
    nothing_to_do: bool = False
    ray_seconds: float = 0.0  # starting or joining the cluster


def saved_options(out_dir: str | Path) -> dict | None:
    """The options an unfinished sharded run in `out_dir` was started with, or None where there is none."""
    path = Path(out_dir) / SHARDS_DIR / PLAN_FILE
    if not path.parent.is_dir():
        return None
    return _read_plan(path)["options"]


# Planning ------------------------------------------------------------------------------------------------


def plan_shards(sources: Sequence[str], shards: int, limit: int | None = None) -> list[Shard]:
    """Cut the corpus into about `shards` shards: files, line ranges of plain JSONL, row groups of Parquet.

    Each file gets a share of the shards by its size (at least one); records count as the single-process
    reader counts them (every non-blank line or row, bad ones too), so `first_doc` is the corpus-wide number.
    """
    if shards < 1:
        raise UsageError(f"must be at least 1, not {shards}", arg="shards")
    sizes = [_size(s) for s in sources]
    total = sum(sizes) or 1
    planned: list[Shard] = []
    offset = 0
    for source, size in zip(sources, sizes):
        if limit is not None and offset >= limit:
            break
        pieces = max(1, round(shards * size / total))
        for first, records, at in _cut(source, pieces):
            if limit is not None:
                records = min(records, limit - offset - first)
                if records <= 0:
                    break
            planned.append(Shard(len(planned), source, offset + first, records, at))
        offset += _file_records(source)
    return planned


def _size(source: str) -> int:
    """A file's size in bytes (1 where it cannot be known cheaply: a URL counts as a small file)."""
    if is_url(source):
        return 1
    try:
        return os.stat(source).st_size
    except OSError:
        return 1


def _cut(source: str, pieces: int) -> Iterator[tuple[int, int, tuple[int, int]]]:
    """The pieces of one file: (first record in the file, records, where reading starts)."""
    if pieces > 1 and is_parquet(source) and not is_url(source):
        yield from _cut_parquet(source, pieces)
    elif pieces > 1 and not is_url(source) and not is_text_file(source) and not str(source).endswith(".gz"):
        yield from _cut_jsonl(source, pieces)
    else:
        yield 0, _file_records(source), (0, 0)


def _cut_parquet(source: str, pieces: int) -> Iterator[tuple[int, int, tuple[int, int]]]:
    """A Parquet file cut between row groups into about `pieces` runs of rows of similar size."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(source).metadata
    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    target = sum(rows) / pieces
    start_group, start_row, row = 0, 0, 0
    for g, n in enumerate(rows):
        row += n
        if row - start_row >= target or g == len(rows) - 1:
            if row > start_row:
                yield start_row, row - start_row, (start_group, start_row)
            start_group, start_row = g + 1, row


def _cut_jsonl(source: str, pieces: int) -> Iterator[tuple[int, int, tuple[int, int]]]:
    """A plain JSONL file cut at line starts into about `pieces` byte ranges of similar size."""
    target = max(1, os.stat(source).st_size // pieces)
    start = (0, 0, 0)  # byte, lines before, records before
    byte, lines, records = 0, 0, 0
    with open(source, "rb") as f:
        for line in f:
            byte, lines = byte + len(line), lines + 1
            records += bool(line.strip())
            if byte - start[0] >= target and records > start[2]:
                yield start[2], records - start[2], (start[0], start[1])
                start = (byte, lines, records)
    if records > start[2]:
        yield start[2], records - start[2], (start[0], start[1])


def _file_records(source: str) -> int:
    """The number of records in one input file, as the single-process reader numbers them."""
    from scorecli.inputs.corpus import count_rows

    return count_rows(source)


def shard_records(shard: Shard, fields: Fields, on_error: Callable[[Rejected], None] | None, skip: int = 0):
    """The records of a shard, numbered corpus-wide, from its `skip`-th on (for a resumed shard)."""

    def shifted(r: Rejected) -> None:
        on_error(replace(r, doc=r.doc + base))

    base = shard.first_doc
    if is_text_file(shard.source):
        records = read_corpus([shard.source], fields, on_error=None if on_error is None else shifted, skip=skip)
    else:
        records = read_records(
            shard.source,
            fields=fields,
            on_error=None if on_error is None else shifted,
            skip=skip,
            limit=shard.records,
            at=shard.at,
        )
    for record in records:
        yield replace(record, doc=record.doc + base)


# One shard, in a worker -----------------------------------------------------------------------------------


def score_shard(shard: Shard, job: Job, shard_dir: Path, report: Callable[[int, int], None] | None = None) -> dict:
    """Score one shard into its run folder, resuming its saved parts; return its summary's state.

    A shard whose folder holds a summary.json is complete and not scored again. `report(docs, tokens)` is
    told of the shard's documents done and the tokens this call scored.
    """
    from scorecli.runfolder.runs import check_resume, complete_finish, wait_for_release

    shard_dir = Path(shard_dir)
    if shard_dir.is_dir():
        # The task of an interrupted driver can outlive it for a moment while Ray stops it (the driver does not
        # force-cancel: that races a completing task), still holding the shard's folder: a rerun waits for it.
        wait_for_release(shard_dir, SHARD_RELEASE_SECONDS)
        complete_finish(shard_dir)
    if (shard_dir / SUMMARY_FILE).is_file():
        return _shard_state(shard_dir)
    options = job.score_options
    loaded, ref = load_models(options)
    scorer, model_metadata = make_scorer(
        options, loaded, ref, expected_tokens=job.expected_tokens, threads=job.threads, words=job.words
    )
    metadata = {**model_metadata, **job.metadata}
    session = Session(shard.source, shard_dir, first_doc=shard.first_doc)
    resume = (shard_dir / PARTS_DIR / RUN_FILE).is_file()
    try:
        state = session.claim(overwrite=False, resume=resume, command=f"scorecli shard {shard.name}")
        if state is not None:
            check_resume(state, metadata)
        # Kept JSON fields stay JSON text in the shard's files: the join types them over every shard's values.
        from scorecli.data.choices import choice_layout

        choices = choice_layout(options)
        session.start(
            metadata, job.words, state, job.options, scorer.columns, job.kept, type_kept=False, choices=choices
        )
        fields = options.input_fields()
        reject = session.reject if options.skip_bad else None
        records = shard_records(shard, fields, reject, skip=session.resumed_from)
        selection = Selection(records, fields, options.role_names())
        session.score(
            scorer,
            selection,
            shard.records,
            options.skip_bad,
            selection=selection,
            progress=_every(_PROGRESS_SECONDS, report),
            records_end=shard.first_doc + shard.records,
            joined_later=True,
        )
    finally:
        session.release()
    return _shard_state(shard_dir)


def _every(seconds: float, report: Callable[[int, int], None] | None) -> Progress:
    """A progress callback telling `report(docs, tokens)` where a shard stands.

    It tells it each time the shard saves a part, and at most every `seconds` in between.
    """
    last = [0.0]

    def progress(state: RunProgress) -> None:
        now = time.monotonic()
        if report is None or (state.stage != "saved" and now - last[0] < seconds):
            return
        if state.stage != "saved":
            last[0] = now
        report(state.docs_done, state.tokens_done)

    return progress


def _shard_state(shard_dir: Path) -> dict:
    """A complete shard's summary state and metadata, from its summary.json."""
    from scorecli.runfolder.runs import read_summary

    figures, metadata = read_summary(shard_dir)
    return {"state": figures["state"], "metadata": metadata}


# The driver ---------------------------------------------------------------------------------------------


def score_sharded(
    job: Job,
    sources: Sequence[str],
    out_dir: str | Path,
    *,
    address: str | None = None,
    shards: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
    gpus_per_worker: float | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    command: str | None = None,
    progress: Progress | None = None,
    on_shard: Callable[[Shard, Path], None] | None = None,
) -> ShardedResult:
    """Score a corpus on Ray, one task per shard, into `out_dir`; resume the sharded run it holds.

    Without `address` a local cluster is started with this machine's CPUs (and GPUs); with it (a host:port
    or "auto"), the running cluster is joined. `workers` tasks run at once (default: as many as the
    cluster's CPUs, or GPUs, allow), each on `threads` CPU threads (default 1) and `gpus_per_worker` GPUs
    (default 1 where CUDA is present). `shards` defaults to a few per worker. `on_shard(shard, folder)` is
    told of each complete shard, with the run folder holding its files, before they are joined.
    """
    require_ray()
    from scorecli.runfolder.runs import lock_out_dir, read_summary

    for name, value in (("workers", workers), ("threads", threads), ("shards", shards)):
        if value is not None and value < 1:
            raise UsageError(f"must be at least 1, not {value}", arg=name)
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise UsageError(f"must be at least 0, not {gpus_per_worker}", arg="gpus_per_worker")
    out_dir = Path(out_dir)
    report = progress or (lambda _: None)
    with lock_out_dir(out_dir, command) as _folder:
        if (out_dir / SUMMARY_FILE).is_file() and not overwrite:
            if not is_sharded_run(out_dir):
                raise OutputError(
                    f"{out_dir}: the folder is not empty; pass `overwrite` to replace its results", arg="out_dir"
                )
            figures, metadata = read_summary(out_dir)
            return ShardedResult(figures, metadata, [], 0, 0, nothing_to_do=True)
        plan_path = out_dir / SHARDS_DIR / PLAN_FILE
        if overwrite:
            _remove_results(out_dir)
        elif plan_path.is_file():
            plan = _read_plan(plan_path)
            _check_same(plan["options"], job.options, out_dir)
            _check_complete_shards(out_dir, plan)
        elif any(p.name != LOCK_FILE for p in out_dir.iterdir()):
            raise OutputError(
                f"{out_dir}: the folder is not empty; pass `overwrite` to replace its results", arg="out_dir"
            )
        started = time.perf_counter()
        report(RunProgress("starting"))
        with _ray_session(address) as ray:
            ray_seconds = time.perf_counter() - started
            cpus, gpus = _cluster_resources(ray)
            if gpus_per_worker is None:  # Ray counts the GPUs CUDA shows each node
                gpus_per_worker = 1.0 if gpus else 0.0
            # The device is the workers' to find, not this driver's (a head node often has no GPU).
            if job.options["device"] == "cuda" and not (gpus and gpus_per_worker):
                where = "the Ray cluster has no GPU" if not gpus else "`gpus_per_worker` is 0"
                raise UsageError(f"cuda: no task would get a GPU ({where})", arg="device")
            threads = threads or 1
            if workers is None:
                workers = int(gpus // gpus_per_worker) if gpus_per_worker else int(cpus // threads)
                workers = max(1, workers)
            if not plan_path.is_file():
                planned = plan_shards(sources, shards or SHARDS_PER_WORKER * workers, limit)
                plan_path.parent.mkdir(exist_ok=True)
                _write_json(plan_path, {"options": job.options, "shards": [asdict(s) for s in planned], "seconds": 0})
            plan = _read_plan(plan_path)
            planned = _plan_shards(plan)
            job.threads = threads
            # Shards are length-sorted and batched apart, which can change float rounding (never beyond 1e-4).
            job.metadata = {**job.metadata, "shards": str(len(planned))}
            state = _Driver(ray, job, out_dir, planned, workers, threads, gpus_per_worker, report, on_shard)
            try:
                scored = state.run()
            finally:
                # Scoring time, as a single process counts it: from the first shard's first buffer to the last
                # shard's end, without Ray's start nor the workers' (their imports and model loading).
                if state.first_report is not None:
                    plan["seconds"] += time.perf_counter() - state.first_report
                _write_json(plan_path, plan)
            total = state.docs_total
            report(RunProgress("joining", total, total, shards=len(planned), shards_done=len(planned)))
            figures, metadata, written = _join(out_dir, planned, plan["seconds"], state.session_tokens, job)
            return ShardedResult(figures, metadata, written, len(planned), scored, ray_seconds=ray_seconds)


def stream_sharded(
    job: Job,
    sources: Sequence[str],
    stream: TextIO,
    rows: str = "sequences",
    on_reject: Callable[[Rejected], None] | None = None,
    **options,
) -> ShardedResult:
    """Score a corpus on Ray as `score_sharded` does, writing its `rows` to `stream` as JSON lines in input order.

    The shards are scored into a temporary folder, removed afterwards (on a multi-node cluster, TMPDIR must
    be a folder every node shares). Each complete shard's lines are written once those of all shards before
    it are, after `on_reject` is told of the records it skipped. `options` are `score_sharded`'s keywords.
    """
    import tempfile

    from scorecli.runfolder.outputs import write_result_lines
    from scorecli.runfolder.runs import read_rejects

    def emit(shard_dir: Path) -> None:
        if on_reject is not None:
            for rejected in read_rejects(shard_dir):
                on_reject(rejected)
        choices = shard_dir / CHOICES_FILE
        nested = choices if rows == "sequences" and choices.is_file() else None  # a record's line holds its choices
        write_result_lines(stream, shard_dir / result_file(rows), nested)

    folder = Path(tempfile.mkdtemp(prefix="scorecli-ray-"))
    try:
        return score_sharded(job, sources, folder, on_shard=InOrder(emit), **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator:
    """Ray for the block: a local cluster started on loopback only, or the one at `address` joined; stopped after.

    Ray's own lines in this process (its start-up banner, its notices, what the cluster tells the driver) go to a
    file in its log folder, not to stderr or stdout. A local cluster's start and any stop are never cut halfway
    by SIGINT or SIGTERM: a signal that comes meanwhile is handled right after the start, and dropped during
    the stop that an interrupt began. Joining a cluster (which may wait long for one that does not answer) can be.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray._private import worker as ray_worker

    logger = logging.getLogger("ray")
    saved = logger.handlers[:], logger.propagate, logger.level
    log = _RayLog()
    logger.handlers[:], logger.propagate = [log], False
    # What the cluster sends the driver to show (a worker died, a task is retried, none can be scheduled) Ray
    # prints on stdout, which may be the JSON lines of `--out -`: it goes to the same file.
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is not None:
        ray_worker.print_to_stdstream = log.print_lines
    ended = False  # by an exception: an interrupt, an error
    try:
        with _signals_held(hold=address is None):
            info = _start_ray(ray, address)
            faults.point("ray-start")
        log.keep_in(Path(info["session_dir"]) / "logs" if info.get("session_dir") else None)
        if address is None:
            _check_loopback(ray, info)
        yield ray
    except BaseException:
        ended = True
        raise
    finally:
        with _signals_held(drop=ended):
            with contextlib.suppress(Exception):
                ray.shutdown()
        logger.handlers[:], logger.propagate = saved[:2]
        logger.setLevel(saved[2])
        if printer is not None:  # the thread that calls it ended with ray.shutdown
            ray_worker.print_to_stdstream = printer
        log.close()


def _start_ray(ray, address: str | None) -> dict:
    """Start a local Ray cluster (on loopback, with this machine's CPUs) or join `address`; its address_info."""
    # A local cluster's workers inherit this process's environment: a runtime env would only keep Ray from
    # using the workers it starts ahead of the first task (they have none), so it starts as many more.
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ} if address is not None else {}
    kwargs = {
        "include_dashboard": False,
        "log_to_driver": False,
        # Ray's logger keeps the handler _ray_session gave it (without, its warnings would reach stderr).
        "configure_logging": True,
        "runtime_env": {"env_vars": env} if env else None,
    }
    try:
        if address is not None:
            return getattr(ray.init(address=address, **kwargs), "address_info", {})  # none through Ray Client
        # Ray turns a node address of 127.0.0.1 into this machine's network address, for other nodes to join
        # it, but in its single-node mode (macOS's and Windows's), where every process listens on loopback.
        from ray._private import ray_constants

        multi_node = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            # "local": a new cluster of our own, even where another one runs on this machine.
            return ray.init(address="local", num_cpus=os.cpu_count(), _node_ip_address=LOOPBACK, **kwargs).address_info
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = multi_node
    except Exception as e:  # no cluster there, or one that refuses us: one line, not Ray's traceback
        with contextlib.suppress(Exception):
            ray.shutdown()
        where = f"join the Ray cluster at {address}" if address else "start a local Ray cluster"
        arg = "ray_address" if address else "ray"
        raise UsageError(f"cannot {where} ({type(e).__name__}: {first_line(e)})", arg=arg) from None


def _check_loopback(ray, info: dict) -> None:
    """UsageError where the local cluster's node or GCS is not on a loopback address (as another Ray might put it)."""
    hosts = [info.get("node_ip_address") or "", str(info.get("gcs_address") or "").rpartition(":")[0]]
    hosts += [node.get("NodeManagerAddress", "") for node in ray.nodes()]
    elsewhere = [host for host in hosts if not _is_loopback(host)]
    if elsewhere:
        raise UsageError(
            f"cannot start a local Ray cluster that listens on loopback only: Ray put it on {elsewhere[0]}", arg="ray"
        )


def _is_loopback(host: str) -> bool:
    """Whether a host (an IP address, or localhost) is this machine's loopback."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 too


@contextlib.contextmanager
def _signals_held(hold: bool = True, drop: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM noted while the block runs (if `hold`), handled after it unless `drop` or it raised.

    The handlers in place before the block are put back after it, also where the block replaced them (ray.init
    installs a SIGTERM handler that exits, and a crash handler that aborts on SIGTERM). Only in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def note(signum: int, frame: object) -> None:
        came.append(signum)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before if hold else ():
        signal.signal(sig, note)

    def restore() -> None:
        for sig, handler in before.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    try:
        yield
    except BaseException:
        restore()
        raise
    restore()
    if came and not drop:
        signal.raise_signal(came[0])


class _RayLog(logging.Handler):
    """Ray's lines in the driver (logged or printed): kept until its log folder is known, then written there."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] | None = []
        self.file: TextIO | None = None

    def keep_in(self, folder: Path | None) -> None:
        """Write the lines so far, and those to come, to DRIVER_LOG in `folder` (nowhere where there is none)."""
        with self.lock:
            if folder is not None and folder.is_dir():
                with contextlib.suppress(OSError):
                    self.file = open(folder / DRIVER_LOG.format(pid=os.getpid()), "a", encoding="utf-8")
                    self.file.writelines(self.lines or ())
                    self.file.flush()
            self.lines = None

    def emit(self, record: logging.LogRecord) -> None:
        """Keep or write one record."""
        try:
            self._put(self.format(record))
        except Exception:
            self.handleError(record)

    def print_lines(self, data: dict, ignore_prefix: bool = False) -> None:
        """Keep or write the lines Ray would print for the driver (its print_to_stdstream's arguments)."""
        with contextlib.suppress(Exception):
            for line in data.get("lines", ()):
                self._put(f"({data.get('pid', 'ray')}) {line}")

    def _put(self, line: str) -> None:
        """Keep or write one line."""
        with self.lock:
            if self.lines is not None:
                self.lines.append(line + "\n")
            elif self.file is not None:
                self.file.write(line + "\n")
                self.file.flush()

    def close(self) -> None:
        """Close the file."""
        with self.lock:
            if self.file is not None:
                with contextlib.suppress(OSError):
                    self.file.close()
                self.file = None
        super().close()


def _cluster_resources(ray) -> tuple[float, float]:
    """The cluster's CPUs and GPUs."""
    resources = ray.cluster_resources()
    return float(resources.get("CPU", 1)), float(resources.get("GPU", 0))


class _Driver:
    """Keep `workers` shard tasks running until every shard is complete, reporting progress as they go."""

    def __init__(self, ray, job, out_dir, planned, workers, threads, gpus, report, on_shard=None) -> None:
        """Run `planned` shards of `job` into `out_dir`'s shard folders, telling `on_shard` of each complete one."""
        self.ray, self.job, self.out_dir, self.planned = ray, job, out_dir, planned
        self.workers, self.threads, self.gpus, self.report = workers, threads, gpus, report
        self.on_shard = on_shard or (lambda shard, folder: None)
        self.docs_total = sum(s.records for s in planned)
        self.session_tokens = 0
        self.first_report: float | None = None  # when the first shard began to score

    def run(self) -> int:
        """Score the shards that are not complete; return how many were scored."""
        ray = self.ray
        folders = {s.number: self.out_dir / SHARDS_DIR / s.name for s in self.planned}
        todo = [s for s in self.planned if not (folders[s.number] / SUMMARY_FILE).is_file()]
        for shard in self.planned:
            if shard not in todo:
                self.on_shard(shard, folders[shard.number])
        done_docs = sum(s.records for s in self.planned if s not in todo)
        shards_done = len(self.planned) - len(todo)
        tracker = ray.remote(num_cpus=0)(_Tracker).remote()
        task = ray.remote(_score_shard_task).options(
            num_cpus=self.threads, num_gpus=self.gpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        pending: dict = {}
        queue = list(todo)
        finished: dict[int, int] = {}

        def show() -> None:
            live = ray.get(tracker.snapshot.remote())
            if live and self.first_report is None:
                self.first_report = time.perf_counter()
                faults.point("ray-scoring")
            docs = done_docs + sum(finished.values())
            docs += sum(d for n, (d, _) in live.items() if n not in finished)
            self.session_tokens = sum(t for _, t in live.values())
            self.report(
                RunProgress(
                    "scoring",
                    docs,
                    self.docs_total,
                    self.session_tokens,
                    shards=len(self.planned),
                    shards_done=shards_done + len(finished),
                    workers=self.workers,
                )
            )

        # Tasks still running when this ends (an interrupt, a failed shard) are not cancelled: ray.cancel races
        # with a task that completes meanwhile (Ray's task_manager.cc then fails a check and aborts the process),
        # while ending the job (ray.shutdown) stops its tasks, on a local cluster or a joined one alike.
        while queue or pending:
            while queue and len(pending) < self.workers:
                shard = queue.pop(0)
                pending[task.remote(shard, self.job, str(folders[shard.number]), tracker)] = shard
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_PROGRESS_SECONDS)
            for ref in ready:
                shard = pending.pop(ref)
                self._result(ref, shard)
                finished[shard.number] = shard.records
                self.on_shard(shard, folders[shard.number])
                faults.point("shard-complete")
            show()
            interrupts.reraise()
        return len(todo)

    def _result(self, ref, shard: Shard) -> dict:
        """A finished task's result; its error, as the user error it was, where it failed."""
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ScorecliError):
                raise cause from None
            raise OutputError(
                f"shard {shard.name} ({display_name(shard.source)}) failed: {first_line(cause or e)}"
            ) from None
        except Exception as e:  # the worker died more often than Ray retries, or the cluster went away
            raise OutputError(
                f"shard {shard.name} ({display_name(shard.source)}) could not be scored ({type(e).__name__}: "
                f"{first_line(e)}); its saved parts are kept: run the same command again to resume"
            ) from None


class InOrder:
    """An `on_shard` callback that hands complete shards' folders on in input order, each once all before it are."""

    def __init__(self, emit: Callable[[Path], None]) -> None:
        """Call `emit(folder)` for each shard, in order."""
        self.emit = emit
        self.next = 0
        self.waiting: dict[int, Path] = {}

    def __call__(self, shard: Shard, folder: Path) -> None:
        """Note a complete shard, and emit it and those after it that wait for it."""
        self.waiting[shard.number] = folder
        while self.next in self.waiting:
            self.emit(self.waiting.pop(self.next))
            self.next += 1


class _Tracker:
    """A Ray actor that gathers the shards' progress reports for the driver."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[int, int]] = {}

    def update(self, number: int, docs: int, tokens: int) -> None:
        """Note a shard's documents done and the tokens this attempt scored."""
        self.live[number] = (docs, tokens)

    def snapshot(self) -> dict[int, tuple[int, int]]:
        """Every shard's latest report."""
        return dict(self.live)


def _score_shard_task(shard: Shard, job: Job, folder: str, tracker) -> dict:
    """The Ray task: score one shard in this worker process (which keeps its model loaded between tasks)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def report(docs: int, tokens: int) -> None:
        tracker.update.remote(shard.number, docs, tokens)

    return score_shard(shard, job, Path(folder), report)


# Joining ------------------------------------------------------------------------------------------------


def _join(
    out_dir: Path, planned: list[Shard], seconds: float, session_tokens: int, job: Job
) -> tuple[dict, dict[str, str], list[Path]]:
    """Move the shards' files into the datasets, write summary.json, remove the shard folders.

    The kept JSON fields (`job.kept`, None-typed) are typed over all shards' values, as one process types
    them over its parts, and the sequences files written with those types; `kept_types` joins the metadata.
    Where the options left nothing to score in any shard, the run is removed and the error raised, as one
    process does. Idempotent: a join cut short is completed by the next run.
    """
    from scorecli.analysis.bootstrap import corpus_intervals, sequence_sums
    from scorecli.analysis.summary import ReferenceComparison, Summary
    from scorecli.runfolder.runs import read_summary, response_columns, write_summary

    total = Summary()
    options = job.score_options
    selection = Selection((), options.input_fields(), options.role_names())
    metadata: dict[str, str] = {}
    errors: list[str] = []
    folders = [out_dir / SHARDS_DIR / shard.name for shard in planned]
    for folder in folders:
        figures, meta = read_summary(folder)
        total.merge(Summary.from_state(figures["state"]))
        # A shard scored by an older version says nothing of what it selected: as if it selected something.
        selection.merge(figures.get("selection") or {"selected": True, "roles_seen": []})
        metadata = metadata or meta
        if (folder / ERRORS_FILE).is_file():
            errors.append((folder / ERRORS_FILE).read_text(encoding="utf-8"))
    if total.n_docs and not total.n_tokens and (error := selection.why_none()):
        shutil.rmtree(out_dir / SHARDS_DIR, ignore_errors=True)  # a run the options made empty is not worth resuming
        raise error
    kept = job.kept
    final = _kept_fields(folders, kept) if kept else None
    if final is not None:
        metadata = {**metadata, "kept_types": types_metadata(final)}
    for shard, folder in zip(planned, folders):
        for kind in RESULT_KINDS:
            source, target = folder / result_file(kind), out_dir / kind / result_file(shard.name)
            if not source.is_file():
                continue
            target.parent.mkdir(exist_ok=True)
            if result_file(kind) == SEQUENCES_FILE and final is not None:
                # Written typed, the shard's own file kept until the end: a join cut short types it again alike.
                _write_typed(source, target, [f for f in final if kept[f.name] is None], metadata)
            else:
                os.replace(source, target)
        faults.point("ray-joining")
    written = [out_dir / kind for kind in RESULT_KINDS if (out_dir / kind).is_dir()]
    if errors:
        write_file(out_dir / ERRORS_FILE, "".join(errors).encode())
        written.append(out_dir / ERRORS_FILE)
    total.seconds = total.session_seconds = seconds
    total.session_tokens = session_tokens
    if "ref_head" in metadata:
        total.comparison.add(response_columns(result_files(out_dir, TOKENS_FILE), ReferenceComparison.COLUMNS))
    total.intervals = corpus_intervals(sequence_sums(result_files(out_dir, SEQUENCES_FILE)))
    from scorecli.data.choices import choice_layout

    if (layout := choice_layout(options)) is not None:
        import pyarrow.parquet as pq

        from scorecli.analysis.summary import choice_figures

        files = result_files(out_dir, SEQUENCES_FILE)
        total.intervals |= choice_figures(
            (b for f in files for b in pq.ParquetFile(f).iter_batches()), layout.normalisations
        )
    write_summary(out_dir / SUMMARY_FILE, total.as_dict(), metadata)
    written.append(out_dir / SUMMARY_FILE)
    shutil.rmtree(out_dir / SHARDS_DIR, ignore_errors=True)
    return read_summary(out_dir) + (written,)


def _kept_fields(folders: Sequence[Path], kept: dict) -> list:
    """The kept columns of the joined sequences: each JSON field's type over every shard's values (or JSON text)."""
    import pyarrow.parquet as pq

    from scorecli.inputs.kept import final_fields, json_types

    names = [name for name, kind in kept.items() if kind is None]

    def parts():
        for folder in folders:
            yield pq.read_table(folder / SEQUENCES_FILE, columns=names)

    return final_fields(kept, json_types(parts, names) if names else {})


def _write_typed(source: Path, target: Path, kept: list, metadata: dict[str, str]) -> None:
    """A shard's sequences file with its kept JSON text columns as their final fields `kept`, and `metadata`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scorecli.inputs.kept import typed
    from scorecli.runfolder.runs import ROW_GROUP_ROWS

    table = pq.read_table(source)
    for field_ in kept:
        at = table.schema.get_field_index(field_.name)
        table = table.set_column(at, field_, typed(table[field_.name].combine_chunks(), field_))
    table = table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in metadata.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS)
    write_file(target, sink.getvalue())


def _remove_results(out_dir: Path) -> None:
    """Remove an earlier run's results and shards (for `overwrite`)."""
    for name in (SHARDS_DIR, PARTS_DIR, *RESULT_KINDS):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in RESULT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _check_same(was: dict, now: dict, out_dir: Path) -> None:
    """OutputError where a rerun's options differ from those the sharded run was started with."""
    was = {**OPTIONS_BEFORE_THEY_EXISTED, **was}  # a run started by an older version was scored without them
    for key in dict.fromkeys([*was, *now]):
        if was.get(key) != now.get(key):
            raise OutputError(
                f"{out_dir}: its run was started with {key} {was.get(key)!r}, not {now.get(key)!r}; "
                "pass `overwrite` to start again",
                arg="out_dir",
            )


def _check_complete_shards(out_dir: Path, plan: dict) -> None:
    """OutputError where a complete shard was written by an older version: it would join with other columns.

    (Unfinished shards are checked as they resume, as a single process's run is.)
    """
    from scorecli.runfolder.runs import check_finished_columns

    for shard in _plan_shards(plan):
        folder = out_dir / SHARDS_DIR / shard.name
        if (folder / SUMMARY_FILE).is_file() and (folder / SEQUENCES_FILE).is_file():
            check_finished_columns(folder)


def _read_plan(path: Path) -> dict:
    """A sharded run's plan; OutputError naming it where it is missing, damaged or not a plan."""
    from scorecli.runfolder.outputs import read_json_object

    with reading(path, arg="out_dir"):
        plan = read_json_object(path)
        if not isinstance(plan["options"], dict) or not isinstance(plan["seconds"], (int, float)):
            raise ValueError("its options or seconds are not what a plan holds")
        _plan_shards(plan)
        return plan


def _plan_shards(plan: dict) -> list[Shard]:
    """The shards a plan lists."""
    return [Shard(**{**s, "at": tuple(s["at"])}) for s in plan["shards"]]


def _write_json(path: Path, value: dict) -> None:
    """Write a JSON file whole, or not at all."""
    write_file(path, json.dumps(value, indent=1, ensure_ascii=False).encode())
