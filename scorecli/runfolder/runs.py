"""The run folder protocol: a lock, parts with chained manifests, verified resume, a committed finish.

A run locks its folder, saves parts as it goes with manifests that chain, verifies them on resume, and
makes the final files appear in one committed step:

DIR/.scorecli.lock          held (flock) by the run that owns the folder; says who that is
DIR/parts/run.json          the run's metadata and options
DIR/parts/NNNNNN.json       the manifest of part NNNNNN: its predecessor, the records it covers, its files
DIR/parts/KIND/NNNNNN.parquet   the part's rows (KIND: tokens, sequences, words)
DIR/parts/final/            the final files while they are written; DIR/parts/finished.json commits them

Layer: run folder. It must not import the engine, the analysis, the executors or the front of scorecli, nor torch,
transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorecli.base import faults, interrupts
from scorecli.base.errors import OutputError, reading, unreadable
from scorecli.data.choices import ChoiceLayout, choice_sequence_table, choice_table, group, scored
from scorecli.data.options import METADATA_BEFORE_IT_EXISTED
from scorecli.data.scores import DEFAULT_STATS, SEQUENCE_COLUMNS, DocScore, numpy_type
from scorecli.data.tables import sequence_schema, sequence_table, token_batches, token_schema, word_batches, word_schema
from scorecli.data.words import Words
from scorecli.inputs.kept import KeptTypes, final_fields, json_types, typed, types_metadata
from scorecli.inputs.records import Choice, Rejected
from scorecli.runfolder.layout import (
    CHOICES_FILE,
    ERRORS_FILE,
    FINISHED_FILE,
    IN_FLIGHT_FILE,
    LOCK_FILE,
    PARTS_DIR,
    RESULT_FILES,
    RESULT_KINDS,
    RUN_FILE,
    SEQUENCES_FILE,
    SHARDS_DIR,
    STAGED_DIR,
    SUMMARY_FILE,
    TEMP_SUFFIX,
    TOKENS_FILE,
    WORDS_FILE,
    kind_dir,
    write_file,
)
from scorecli.runfolder.outputs import finite, read_json_object

ROW_GROUP_ROWS = 1 << 16
# The stages of the finish, in order, where tests inject faults (see base/faults.py); "part-written" is another.
FINISH_STAGES = ("finishing", "joining", "joined", "committed", "moving", "moved", "finished")
_RAW_CHARS = 1000  # of a rejected record kept in errors.jsonl: enough to find it, not a copy of the corpus
_HASH_BLOCK = 1 << 20
_OVERWRITE = "pass `overwrite` to start the run again"


@dataclass
class RunState:
    """What an output folder holds of an unfinished run: its settings and the verified parts already saved."""

    metadata: dict[str, str]
    options: dict = field(default_factory=dict)
    records_done: int = 0
    parts: int = 0
    docs_saved: int = 0
    rejected: int = 0
    summary: dict | None = None
    files: list[dict] = field(default_factory=list)
    in_flight: dict[object, DocScore] = field(default_factory=dict)


class RunFolder:
    """An output folder claimed by this process: locked against other runs until `release`."""

    def __init__(self, out_dir: Path, lock_fd: int, created: list[Path], state: RunState | None) -> None:
        """A claimed folder; `created` are the folders the claim made, `state` the unfinished run to resume."""
        self.out_dir, self.state = out_dir, state
        self._lock_fd: int | None = lock_fd
        self._created = created

    def release(self) -> None:
        """Give the folder up; one this run created and left empty is removed."""
        if self._lock_fd is None:
            return
        # Removed while still locked: a run waiting on this file's lock sees it is gone and takes a new one.
        with contextlib.suppress(OSError):
            (self.out_dir / LOCK_FILE).unlink()
        os.close(self._lock_fd)
        self._lock_fd = None
        _remove_empty(self._created)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_out_dir(
    out_dir: Path, overwrite: bool = False, resume: bool = False, command: str | None = None
) -> RunFolder:
    """Lock the output folder for this run (creating it), then check it holds what the run expects.

    A new run needs an empty folder unless `overwrite`, which removes the old results and parts; a resumed
    run needs an unfinished run, whose saved parts are verified. `command` is recorded in the lock, to say
    which run holds the folder.
    """
    out_dir = Path(out_dir)
    if resume and not out_dir.exists():
        raise OutputError(f"{out_dir}: nothing to resume (there is no such folder)", arg="out_dir")
    folder = lock_out_dir(out_dir, command)
    try:
        folder.state = _run_state(out_dir) if resume else _prepare_new(out_dir, overwrite)
    except BaseException:
        folder.release()
        raise
    return folder


def lock_out_dir(out_dir: Path, command: str | None = None) -> RunFolder:
    """Lock an output folder (creating it) without looking at what it holds: for runs that keep their own state."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder", arg="out_dir")
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise OutputError(f"{out_dir}: cannot create the folder ({e.strerror or e})", arg="out_dir") from None
    try:
        fd = _lock(out_dir, command)
    except BaseException:
        _remove_empty(created)
        raise
    return RunFolder(out_dir, fd, created, None)


def wait_for_release(out_dir: Path, seconds: float) -> bool:
    """Wait up to `seconds` for whatever holds the folder's lock to let go; whether it is free (or unlocked) now."""
    path = Path(out_dir) / LOCK_FILE
    deadline = time.monotonic() + seconds
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return True  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
        finally:
            os.close(fd)  # closing the descriptor lets go of a lock taken just to look
        time.sleep(0.05)


def complete_finish(out_dir: Path) -> None:
    """Complete a finish that was committed but cut short (see RunWriter.finish); nothing where there is none."""
    _complete_finish(Path(out_dir))


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a claim created, innermost first, where nothing was written into them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _lock(out_dir: Path, command: str | None) -> int:
    """Take the folder's lock, or say which run holds it; return the lock file's descriptor."""
    path = out_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if not os.access(out_dir, os.W_OK):
                raise OutputError(f"{out_dir}: the folder is not writable", arg="out_dir") from None
            raise OutputError(f"{out_dir}: cannot lock the folder ({e.strerror or e})", arg="out_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"{out_dir}: the folder is in use by another run ({holder}); wait for it to end, or stop it",
                arg="out_dir",
            ) from None
        except OSError as e:
            os.close(fd)
            raise OutputError(f"{out_dir}: cannot lock the folder ({e.strerror or e})", arg="out_dir") from None
        # The run that held the lock removes the file as it lets go: lock the file that is there now.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": command or shlex.join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    return fd


def _holder(fd: int) -> str:
    """Who holds a lock, from what its holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0).decode())
        command = str(info["command"]).replace("\n", "\\n")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {command}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that is just starting"


def _prepare_new(out_dir: Path, overwrite: bool) -> None:
    """Check that a new run may write into the locked folder, removing old results if `overwrite`."""
    try:
        if any(p.name != LOCK_FILE for p in out_dir.iterdir()):
            if not overwrite:
                _complete_finish(out_dir)  # a finish that was committed but cut short
                unfinished = (out_dir / PARTS_DIR / RUN_FILE).exists()
                hint = " or `resume` to continue it" if unfinished else ""
                raise OutputError(
                    f"{out_dir}: the folder is not empty; pass `overwrite` to replace its results{hint}", arg="out_dir"
                )
            # A --ray run's datasets and shards (executors/scaleout.py) are results and parts too.
            for name in (PARTS_DIR, SHARDS_DIR, *RESULT_KINDS):
                if (out_dir / name).is_dir():
                    shutil.rmtree(out_dir / name)
            for name in RESULT_FILES:
                # An old result must not survive next to a new run that fails.
                (out_dir / name).unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot prepare the folder ({e.strerror or e})", arg="out_dir") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"{out_dir}: the folder is not writable", arg="out_dir")


def _run_state(out_dir: Path) -> RunState:
    """The state of the unfinished run in `out_dir`, its saved parts verified against their manifests."""
    parts = out_dir / PARTS_DIR
    try:
        _complete_finish(out_dir)  # a finish that was committed but cut short
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot complete the finished run ({e.strerror or e})", arg="out_dir") from None
    if (out_dir / SUMMARY_FILE).exists():
        raise OutputError(f"{out_dir}: nothing to resume (its run is finished)", arg="out_dir")
    if not (parts / RUN_FILE).exists():
        if any(parts.glob("*.json")):  # saved parts whose run's settings are gone
            raise _damaged(out_dir, f"{PARTS_DIR}/{RUN_FILE} is missing")
        raise OutputError(f"{out_dir}: nothing to resume (there is no unfinished run in it)", arg="out_dir")
    with _saved_file(out_dir, parts / RUN_FILE):
        run = read_json_object(parts / RUN_FILE)
        state = RunState(dict(run["metadata"]), dict(run.get("options", {})))
        kinds = list(run["kinds"])
    try:
        _verify_parts(out_dir, state, kinds)
    except OSError as e:
        raise OutputError(f"{out_dir}: the saved run cannot be read ({e.strerror or e})", arg="out_dir") from None
    in_flight = parts / IN_FLIGHT_FILE
    if in_flight.exists():
        with _saved_file(out_dir, in_flight):
            saved = read_json_object(in_flight)
            # Documents an older version saved lack their count of unscored characters: they are scored again,
            # in the same batches as before, to the same numbers.
            docs = (_doc_from_json(d) for d in saved["docs"] if "unscored_chars" in d)
            # Documents a part saved after them already hold are left out.
            state.in_flight = {d.key: d for d in docs if d.doc >= state.records_done}
            state.summary = saved["summary"]  # newer than the last part's: it counts the time up to the interrupt
    return state


@contextlib.contextmanager
def _saved_file(out_dir: Path, path: Path, where: str = "") -> Iterator[None]:
    """Turn a failure to read or parse a file the run saved into the error that the saved run is damaged, naming it."""
    try:
        yield
    except Exception as e:
        why = unreadable(path, e)
        if why is None:
            raise
        raise _damaged(out_dir, f"{where}{_rel(out_dir, path)} {why}") from None


def _damaged(out_dir: Path, what: str) -> OutputError:
    """The error for a saved run that does not hold what its manifests say."""
    return OutputError(f"{out_dir}: the saved run is damaged: {what}; {_OVERWRITE}", arg="out_dir")


def _verify_parts(out_dir: Path, state: RunState, kinds: list[str]) -> None:
    """Verify the saved parts (manifests chained over contiguous records, files as described); count them.

    What a cut-short save left is removed.
    """
    parts = out_dir / PARTS_DIR
    numbered: dict[int, Path] = {}
    for path in parts.glob("*.json"):
        if path.name in (RUN_FILE, IN_FLIGHT_FILE, FINISHED_FILE):
            continue
        if not (len(path.stem) == 6 and path.stem.isdigit()):
            raise _damaged(out_dir, f"{_rel(out_dir, path)} is not a manifest of this run")
        numbered[int(path.stem)] = path
    count = max(numbered) + 1 if numbered else 0
    for number in range(count):
        name = f"{number:06d}"
        if number not in numbered:
            raise _damaged(out_dir, f"part {name}: its manifest {PARTS_DIR}/{name}.json is missing")
        path = numbered[number]
        with _saved_file(out_dir, path, f"part {name}: "):
            manifest = read_json_object(path)
            said, previous, (start, end) = manifest["part"], manifest["previous"], manifest["records"]
            files, docs, rejected = manifest["files"], int(manifest["documents"]), len(manifest["rejected"])
        if said != number or previous != (number - 1 if number else None):
            raise _damaged(out_dir, f"part {name}: {_rel(out_dir, path)} is the manifest of another part ({said})")
        if start != state.records_done or end < start:
            before = f"part {number - 1:06d} ends at record {state.records_done}" if number else "the run starts at 0"
            how = "records are missing" if start > state.records_done else "it overlaps what is before it"
            raise _damaged(out_dir, f"part {name} covers records {start}–{end}, but {before}: {how}")
        for kind in kinds:
            part_file = parts / kind_dir(kind) / f"{name}.parquet"
            problem = _file_problem(part_file, files.get(kind_dir(kind)) if isinstance(files, dict) else None)
            if problem:
                raise _damaged(out_dir, f"part {name}: {_rel(out_dir, part_file)} {problem}")
        state.parts, state.records_done = number + 1, end
        state.docs_saved += docs
        state.rejected += rejected
        state.summary = manifest["summary"]
        state.files.append(files)
    # A choice run's sequences have columns of their own; no version that wrote choices lacked a sequence column.
    if count and SEQUENCES_FILE in kinds and CHOICES_FILE not in kinds:
        _check_sequence_columns(out_dir, parts / kind_dir(SEQUENCES_FILE) / f"{0:06d}.parquet")
    _remove_cut_short(out_dir, kinds, count)


def _check_sequence_columns(out_dir: Path, path: Path) -> None:
    """OutputError where a saved sequences file lacks a column every run writes now: an older version wrote it.

    Its rows cannot be completed (what the new column counts was not kept), so the run cannot go on.
    """
    with _saved_file(out_dir, path):
        names = pq.read_schema(path).names
    missing = [c.name for c in SEQUENCE_COLUMNS if c.needs is None and not c.words and c.name not in names]
    if missing:
        raise OutputError(
            f"{out_dir}: the saved run was started by an older version of scorecli, whose {SEQUENCES_FILE} has "
            f"no {', '.join(missing)} column: finish it with that version, or {_OVERWRITE}",
            arg="out_dir",
        )


def check_finished_columns(out_dir: Path) -> None:
    """OutputError where the finished run in `out_dir` was written by an older version (see _check_sequence_columns)."""
    if not (Path(out_dir) / CHOICES_FILE).exists():  # a choice run's sequences have columns of their own
        _check_sequence_columns(Path(out_dir), Path(out_dir) / SEQUENCES_FILE)


def _remove_cut_short(out_dir: Path, kinds: list[str], count: int) -> None:
    """Remove what a save or finish cut short left: temporary files and the files of a part with no manifest.

    Saves are one at a time and the manifest goes last, so only the part after the last manifest can be
    cut short; files of a later part mean that manifests were lost.
    """
    parts = out_dir / PARTS_DIR
    shutil.rmtree(parts / STAGED_DIR, ignore_errors=True)  # a finish cut short before it was committed
    for temp in parts.glob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
    for kind in kinds:
        folder = parts / kind_dir(kind)
        for path in folder.iterdir() if folder.is_dir() else ():
            number = int(path.stem) if len(path.stem) == 6 and path.stem.isdigit() else None
            if path.name.startswith("."):
                path.unlink(missing_ok=True)
            elif number is None or number > count:
                what = "is not a part of this run" if number is None else f"has no manifest ({number:06d}.json)"
                raise _damaged(out_dir, f"{_rel(out_dir, path)} {what}")
            elif number == count:
                path.unlink(missing_ok=True)


def _file_problem(path: Path, info: object) -> str | None:
    """What is wrong with a part file, compared with what its manifest says of it, if anything."""
    if not isinstance(info, dict) or not {"bytes", "sha256", "rows"} <= info.keys():
        return "is not described by its manifest"
    try:
        size = path.stat().st_size
        if size != info["bytes"]:
            return f"has {size:,} bytes, not the {info['bytes']:,} its manifest says (truncated or replaced)"
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if digest.hexdigest() != info["sha256"]:
        return "does not match its manifest's checksum (it was changed or garbled)"
    return None


def _rel(out_dir: Path, path: Path) -> str:
    """A path inside the output folder, as messages show it."""
    return str(path.relative_to(out_dir))


def _complete_finish(out_dir: Path) -> list[Path]:
    """Move a committed finish's final files into place and remove the parts; return the final files.

    Idempotent, so that a finish cut short after it was committed is completed by the next run.
    """
    parts = out_dir / PARTS_DIR
    marker = parts / FINISHED_FILE
    if not marker.exists():
        return []
    with _saved_file(out_dir, marker):
        names = [str(name) for name in read_json_object(marker)["files"]]
    for i, name in enumerate(names):
        staged = parts / STAGED_DIR / name
        if staged.exists():
            os.replace(staged, out_dir / name)
        if i == 0:
            faults.point("moving")
    faults.point("moved")
    shutil.rmtree(parts)
    faults.point("finished")
    return [out_dir / name for name in names]


def check_resume(state: RunState, metadata: dict[str, str]) -> None:
    """Raise OutputError where this run's settings differ from those the folder's run was started with."""
    for key in dict.fromkeys([*metadata, *state.metadata]):
        was, now = state.metadata.get(key, METADATA_BEFORE_IT_EXISTED.get(key)), metadata.get(key)
        if was != now:
            raise OutputError(f": the run was started with {key} {was!r}, not {now!r}", arg="resume")


class RunWriter:
    """Save a run as numbered parts as it goes, then join them into the final files in one committed step.

    Each part holds the documents of whole read-ahead buffers and the records rejected among them, with
    a manifest that names the part before it, the records it covers and its files' rows, size and SHA-256;
    a crash leaves every saved part readable and a resumed run starts after the last one. The final files
    appear, complete, only when the run finishes, and nothing removes or rewrites them after that.
    """

    def __init__(
        self,
        folder: RunFolder,
        metadata: dict[str, str],
        words: bool,
        options: dict | None = None,
        stats: tuple[str, ...] = DEFAULT_STATS,
        kept: KeptTypes | None = None,
        type_kept: bool = True,
        choices: ChoiceLayout | None = None,
    ) -> None:
        """Start a run in a claimed folder, or continue the one it holds; `options` are saved for --resume.

        `stats` are the run's token columns, `kept` the input fields copied into sequences.parquet. Without
        `type_kept`, kept JSON fields stay JSON text in the final file, for a join of several runs to type.
        A run of records with choices (`choices`, its tables' layout) writes choices.parquet too, and a
        sequence row per record.
        """
        self.choices = choices
        state = folder.state
        self.out_dir = folder.out_dir
        self.parts_dir = self.out_dir / PARTS_DIR
        self.metadata = metadata
        self.words = words
        self.stats = stats
        self.kept = kept or {}
        self.type_kept = type_kept
        self.parts = state.parts if state else 0
        self.records_done = state.records_done if state else 0
        self.docs_saved = state.docs_saved if state else 0
        self.rejected = state.rejected if state else 0
        self.finished = False
        self.written: list[Path] = []
        self._files: list[dict] = list(state.files) if state else []
        self._pending_rejects: list[Rejected] = []
        if state is None:
            run = {"metadata": metadata, "options": options or {}, "kinds": [kind for kind, _ in self.kinds]}
            try:
                self.parts_dir.mkdir(exist_ok=True)
                write_file(self.parts_dir / RUN_FILE, json.dumps(run, indent=2).encode())
            except OSError as e:
                raise self._write_error(e) from None

    @property
    def kinds(self) -> list[tuple[str, pa.Schema]]:
        """The Parquet files this run writes, with their schemas."""
        choices = self.choices is not None
        kinds = [(TOKENS_FILE, token_schema(self.stats, choices)), (SEQUENCES_FILE, self._sequence_schema())]
        kinds += [(CHOICES_FILE, self.choices.choice_schema())] if choices else []
        return kinds + ([(WORDS_FILE, word_schema(choices))] if self.words else [])

    def _sequence_schema(self) -> pa.Schema:
        """The schema of the sequences parts: a row per document, or per record with choices."""
        if self.choices is not None:
            return self.choices.sequence_schema(self.kept)
        return sequence_schema(self.stats, self.kept, self.words)

    def _sequence_table(self, docs: list[DocScore]) -> pa.Table:
        """The sequence rows of saved documents: one per document, or per record with choices."""
        if self.choices is not None:
            return choice_sequence_table(list(group(docs)), self.choices, self.kept)
        return sequence_table(docs, self.stats, self.kept, self.words)

    def _part_file(self, kind: str, name: str) -> Path:
        """Where part `name` of a kind of file is: one folder per kind, readable as one dataset."""
        return self.parts_dir / kind_dir(kind) / f"{name}.parquet"

    def _write_error(self, e: OSError, what: str = "") -> OutputError:
        """The error for a failed write, saying so plainly where the folder itself was removed."""
        if not self.out_dir.is_dir():
            return OutputError(
                f"{self.out_dir}: the output folder was removed while the run was writing to it", "out_dir"
            )
        if not self.parts_dir.is_dir():
            return OutputError(
                f"{self.out_dir}: its {PARTS_DIR} folder was removed while the run was writing", "out_dir"
            )
        return OutputError(f"{self.out_dir}: cannot write{what} ({e.strerror or e})", arg="out_dir")

    def reject(self, rejected: Rejected) -> None:
        """Note a record that could not be scored; it is saved with the part that reaches past it."""
        self._pending_rejects.append(rejected)

    def save(self, docs: list[DocScore], records_done: int, summary: dict) -> None:
        """Save the documents of finished buffers as a part; the input is done up to `records_done`."""
        name = f"{self.parts:06d}"
        manifest_path = self.parts_dir / f"{name}.json"
        rejects = [r for r in self._pending_rejects if r.doc < records_done]
        batches = {
            TOKENS_FILE: lambda docs, schema: token_batches(scored(docs), schema),
            SEQUENCES_FILE: lambda docs, schema: self._sequence_table(docs).to_batches(),
            CHOICES_FILE: lambda docs, schema: choice_table(group(docs), self.choices).to_batches(),
            WORDS_FILE: lambda docs, schema: word_batches(scored(docs), schema=schema),
        }
        written: list[Path] = []
        with interrupts.held():  # a part is saved whole, or not at all
            try:
                if manifest_path.exists():
                    raise OutputError(f"{self.out_dir}: part {name} exists already; {_OVERWRITE}", arg="out_dir")
                files = {}
                for kind, schema in self.kinds:
                    path = self._part_file(kind, name)
                    path.parent.mkdir(exist_ok=True)
                    written.append(path)
                    files[kind_dir(kind)] = _write_parquet(path, schema, batches[kind](docs, schema))
                faults.point("part-written")
                # The manifest goes last: a part without one was cut short and does not count.
                manifest = {
                    "part": self.parts,
                    "previous": self.parts - 1 if self.parts else None,
                    "records": [self.records_done, records_done],
                    "documents": len(docs),
                    "files": files,
                    "rejected": [_reject_row(r) for r in rejects],
                    "summary": summary,
                }
                write_file(manifest_path, json.dumps(manifest, ensure_ascii=False).encode())
            except OSError as e:
                for path in written:
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                raise self._write_error(e) from None
            self._pending_rejects = [r for r in self._pending_rejects if r.doc >= records_done]
            self._files.append(files)
            self.parts += 1
            self.records_done = records_done
            self.docs_saved += len(docs)
            self.rejected += len(rejects)
            with contextlib.suppress(OSError):
                (self.parts_dir / IN_FLIGHT_FILE).unlink(missing_ok=True)  # a saved part holds its documents now

    def saved_tokens(self, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Columns of the response token rows of the parts saved so far."""
        return response_columns(self.part_files(TOKENS_FILE), columns)

    def save_in_flight(self, docs: list[DocScore], summary: dict) -> None:
        """Keep an interrupted buffer's finished documents (not scored again on resume) and the summary so far."""
        saved = {"docs": [_doc_to_json(d) for d in docs], "summary": summary}
        try:
            write_file(self.parts_dir / IN_FLIGHT_FILE, json.dumps(saved).encode())
        except OSError as e:
            raise self._write_error(e) from None

    def finish(self, records_read: int, summary: dict, errors_file: bool) -> list[Path]:
        """Save what is left, join the parts into the final files and commit them; return the final files.

        SIGINT and SIGTERM wait until the finish is done. The final files are written under parts/final,
        then parts/finished.json commits them, then they are moved into place and the parts removed; a
        finish cut short after the commit is completed by the next run in the folder, never redone.
        """
        with interrupts.held():
            faults.point("finishing")
            if self._pending_rejects or self.parts == 0:
                self.save([], max(records_read, self.records_done), summary)
            faults.point("joining")
            staged = self.parts_dir / STAGED_DIR
            try:
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir()
                finals = {SEQUENCES_FILE: self._final_sequence_schema()} if self.kept and self.type_kept else {}
                names = [self._join(kind, schema, staged, finals.get(kind)) for kind, schema in self.kinds]
                # Rejects saved by an earlier session that skipped them are written even if this one stops on them.
                if errors_file or self.rejected:
                    names.append(self._join_errors(staged))
                write_summary(staged / SUMMARY_FILE, summary, self.metadata)
                names.append(SUMMARY_FILE)  # last: a summary.json in the folder means the run is finished
                faults.point("joined")
                write_file(self.parts_dir / FINISHED_FILE, json.dumps({"files": names}).encode())
            except OSError as e:
                shutil.rmtree(staged, ignore_errors=True)
                raise self._write_error(e, " the final files") from None
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            faults.point("committed")
            self.finished = True
            try:
                self.written = _complete_finish(self.out_dir)
            except OSError as e:
                raise self._write_error(e, " the final files") from None
        return self.written

    def abort(self) -> None:
        """After a failure: keep the saved parts for --resume, or leave no trace where there are none."""
        if self.finished or not self.parts_dir.is_dir():
            return
        if not self.parts and not (self.parts_dir / IN_FLIGHT_FILE).exists():
            shutil.rmtree(self.parts_dir, ignore_errors=True)

    def part_files(self, kind: str) -> list[Path]:
        """The saved part files of one kind (`SEQUENCES_FILE`…), in order."""
        return [self._part_file(kind, f"{n:06d}") for n in range(self.parts)]

    def discard(self) -> None:
        """Remove everything the run saved: for a run that turned out to be pointless, not interrupted."""
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _final_sequence_schema(self) -> pa.Schema:
        """The schema of the final sequences.parquet: the kept JSON fields typed over all parts.

        Their types go into the metadata (`kept_types`) of every final file.
        """
        schema = self._sequence_schema()
        json_names = [name for name, kind in self.kept.items() if kind is None]

        def parts() -> Iterator[pa.Table]:
            for number, files in enumerate(self._files):
                part = self._read_part(SEQUENCES_FILE, f"{number:06d}", files.get(kind_dir(SEQUENCES_FILE)), schema)
                yield pa.Table.from_batches(list(part), schema).select(json_names)

        resolved = json_types(parts, json_names) if json_names else {}
        kept = final_fields(self.kept, resolved)
        self.metadata["kept_types"] = types_metadata(kept)
        return pa.schema([*(f for f in schema if f.name not in self.kept), *kept])

    def _join(self, kind: str, schema: pa.Schema, staged: Path, final: pa.Schema | None = None) -> str:
        """Join one kind of part file (of schema `schema`) into its final file (of schema `final`) in `staged`.

        Row groups have a fixed size.
        """
        final = final or schema
        meta = {k.encode(): str(v).encode() for k, v in self.metadata.items()}
        # Fixed-size row groups make a resumed run's files the same as an uninterrupted run's.
        with pq.ParquetWriter(staged / kind, final.with_metadata(meta)) as writer:
            pending, rows = [], 0
            for number, files in enumerate(self._files):
                batches = self._read_part(kind, f"{number:06d}", files.get(kind_dir(kind)), schema)
                if final is not schema:  # a sequences part (a row a document: small) is typed whole
                    part = pa.Table.from_batches(list(batches), schema)
                    batches = pa.Table.from_arrays([self._final_column(part, f) for f in final], schema=final)
                    batches = batches.to_batches()
                for batch in batches:
                    pending.append(batch)
                    rows += batch.num_rows
                    while rows >= ROW_GROUP_ROWS:
                        joined = pa.Table.from_batches(pending, final)
                        writer.write_table(joined.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                        pending, rows = joined.slice(ROW_GROUP_ROWS).to_batches(), rows - ROW_GROUP_ROWS
            if rows:
                writer.write_table(pa.Table.from_batches(pending, final))
        _fsync(staged / kind)
        return kind

    def _final_column(self, part: pa.Table, field: pa.Field) -> pa.ChunkedArray | pa.Array:
        """A column of a sequences part as the final file has it: a kept JSON field typed, others as they are."""
        if field.name in self.kept and self.kept[field.name] is None:
            return typed(part[field.name].combine_chunks(), field)
        return part[field.name]

    def _read_part(self, kind: str, name: str, info: dict | None, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """A part file's rows a row group at a time, checked against its manifest: a damaged part is an error naming it.

        Its size and checksum are checked before any row is read, its number of rows once all are.
        """
        path = self._part_file(kind, name)
        where = f"part {name}: {_rel(self.out_dir, path)}"
        if _file_problem(path, info):
            raise _damaged(self.out_dir, f"{where} does not match its manifest (it was changed or garbled)")
        rows = 0
        with _saved_file(self.out_dir, path, f"part {name}: "), pq.ParquetFile(path) as part:
            if not part.schema_arrow.remove_metadata().equals(schema):
                raise ValueError("its columns are not those of the run")
            for group in range(part.num_row_groups):
                for batch in part.read_row_group(group).to_batches():
                    rows += batch.num_rows
                    yield batch
        if rows != info["rows"]:
            raise _damaged(self.out_dir, f"{where} has {rows} rows, not {info['rows']}")

    def _join_errors(self, staged: Path) -> str:
        """Gather the rejected records of all parts into errors.jsonl."""
        lines = []
        for number in range(self.parts):
            path = self.parts_dir / f"{number:06d}.json"
            with _saved_file(self.out_dir, path):
                rejected = read_json_object(path)["rejected"]
            lines += [json.dumps(r, ensure_ascii=False) + "\n" for r in rejected]
        write_file(staged / ERRORS_FILE, "".join(lines).encode())
        return ERRORS_FILE


def write_summary(path: Path, figures: dict, metadata: dict[str, str]) -> None:
    """Write a run's summary.json: its figures (non-finite ones as null) and its metadata."""
    text = json.dumps({"summary": finite(figures), "metadata": metadata}, indent=2, ensure_ascii=False)
    write_file(path, (text + "\n").encode())


def response_columns(paths: Iterable[Path], columns: Iterable[str]) -> dict[str, np.ndarray]:
    """Columns of the response token rows of token files (parts, or a finished run's), in order."""
    columns = tuple(columns)
    tables = [pq.read_table(path, columns=[*columns, "is_response"]) for path in paths]
    if not tables:
        return {c: np.zeros(0) for c in columns}
    table = pa.concat_tables(tables)
    table = table.filter(table["is_response"])
    return {c: table[c].to_numpy() for c in columns}


def _write_parquet(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> dict:
    """Write record batches as a Parquet file, under a temporary name until complete; its rows, bytes and SHA-256.

    The batches are written as they come: a part's rows are never all in memory at once, nor its file.
    """
    temp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    rows = 0
    try:
        with pq.ParquetWriter(temp, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        size, digest = _fsync(temp), hashlib.sha256()
        with open(temp, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    return {"rows": rows, "bytes": size, "sha256": digest.hexdigest()}


def _fsync(path: Path) -> int:
    """Make a written file's contents durable before it is committed; return its size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


_DOC_ARRAYS = ("token_ids", "positions", "starts", "ends", "is_response")
_DOC_SCALARS = ("doc", "id", "text", "n_bytes", "truncated", "unscored_chars")


def _doc_to_json(doc: DocScore) -> dict:
    """A DocScore as JSON values; float32 values survive the round trip exactly."""
    arrays = {name: getattr(doc, name).tolist() for name in _DOC_ARRAYS}
    stats = {name: {"shape": list(v.shape), "values": v.tolist()} for name, v in doc.stats.items()}
    words = {name: getattr(doc.words, name).tolist() for name in ("starts", "ends", "token_word")}
    for name in ("index", "correction"):  # None where every word holds a token, and where not computed
        value = getattr(doc.words, name)
        # NaN (an unknown correction) has no JSON form: it is saved as null.
        words[name] = None if value is None else [None if v != v else v for v in value.tolist()]
    scalars = {name: getattr(doc, name) for name in _DOC_SCALARS}
    choice = None if doc.choice is None else asdict(doc.choice)
    return {**scalars, **arrays, "tokens": list(doc.tokens), "words": words, "stats": stats, "choice": choice}


def _doc_from_json(row: dict) -> DocScore:
    """The DocScore _doc_to_json wrote."""
    arrays = {name: np.asarray(row[name], dtype=bool if name == "is_response" else np.int32) for name in _DOC_ARRAYS}
    stats = {
        name: np.asarray(v["values"], dtype=numpy_type(name)).reshape(v["shape"]) for name, v in row["stats"].items()
    }
    saved = row["words"]
    words = Words(*(np.asarray(saved[k], dtype=np.int64) for k in ("starts", "ends", "token_word")))
    if saved.get("index") is not None:
        words.index = np.asarray(saved["index"], dtype=np.int64)
    if saved.get("correction") is not None:
        words.correction = np.asarray([np.nan if v is None else v for v in saved["correction"]], dtype=np.float64)
    scalars = {name: row[name] for name in _DOC_SCALARS}
    choice = None if row.get("choice") is None else Choice(**row["choice"])
    return DocScore(**scalars, **arrays, tokens=row["tokens"], words=words, stats=stats, choice=choice)


def _reject_row(r: Rejected) -> dict:
    """A rejected record as a line of errors.jsonl."""
    return {"doc": r.doc, "input": r.source, "line": r.line, "reason": r.reason, "record": r.raw[:_RAW_CHARS]}


def read_rejects(out_dir: Path) -> list[Rejected]:
    """The records a finished run skipped, in input order, from its errors.jsonl (none where it has none)."""
    path = Path(out_dir) / ERRORS_FILE
    if not path.is_file():
        return []
    with reading(path, arg="out_dir"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return [Rejected(r["doc"], r["input"], r["line"], r["reason"], r["record"]) for r in rows]


def read_summary(out_dir: Path) -> tuple[dict, dict[str, str]]:
    """The figures and metadata of the finished run in `out_dir`, from its summary.json."""
    out_dir = Path(out_dir)
    path = out_dir / SUMMARY_FILE
    if not path.is_file():
        if (out_dir / PARTS_DIR / RUN_FILE).is_file():
            why = "its run is not finished (see `resume`)"
        elif out_dir.is_dir():
            why = f"it holds no {SUMMARY_FILE}, so it is not the output folder of a finished run"
        else:
            why = "no such folder"
        raise OutputError(f"{out_dir}: {why}", arg="out_dir")
    with reading(path, arg="out_dir"):
        saved = read_json_object(path)
        figures, metadata = saved["summary"], saved["metadata"]
        for key, value in (("summary", figures), ("metadata", metadata)):
            if not isinstance(value, dict):
                raise ValueError(f"its {key} is not a JSON object")
        return figures, metadata
