"""The run folder protocol: parts saved as a run goes, their manifests, resume, and the final join."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorecli.errors import OutputError, first_line
from scorecli.inputs import Rejected
from scorecli.outputs import _PARTIAL, _atomic_write, _finite
from scorecli.scores import DocScore
from scorecli.tables import SEQUENCE_SCHEMA, TOKEN_SCHEMA, WORD_SCHEMA, sequence_table, token_table, word_table
from scorecli.words import Words

TOKENS_FILE = "tokens.parquet"
SEQUENCES_FILE = "sequences.parquet"
WORDS_FILE = "words.parquet"
ERRORS_FILE = "errors.jsonl"
SUMMARY_FILE = "summary.json"
PARTS_DIR = "parts"
RUN_FILE = "run.json"
IN_FLIGHT_FILE = "in-flight.json"
RESULT_FILES = (TOKENS_FILE, SEQUENCES_FILE, WORDS_FILE, ERRORS_FILE, SUMMARY_FILE)
ROW_GROUP_ROWS = 1 << 16
_RAW_CHARS = 1000  # of a rejected record kept in errors.jsonl: enough to find it, not a copy of the corpus


@dataclass
class RunState:
    """What an output folder holds of an unfinished run: its settings and the parts already saved."""

    metadata: dict[str, str]
    records_done: int = 0
    parts: int = 0
    rejected: int = 0
    summary: dict | None = None
    in_flight: dict[int, DocScore] = field(default_factory=dict)


def prepare_out_dir(out_dir: Path, overwrite: bool = False, resume: bool = False) -> RunState | None:
    """Create the output folder for a new run, or read the state of the run to resume in it.

    A folder that already holds files is refused for a new run unless `overwrite`, which removes the old
    results and parts.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder", arg="out_dir")
    if resume:
        return _run_state(out_dir)
    try:
        if out_dir.is_dir() and any(out_dir.iterdir()):
            if not overwrite:
                hint = " or `resume` to continue it" if (out_dir / PARTS_DIR / RUN_FILE).exists() else ""
                raise OutputError(
                    f"{out_dir}: the folder is not empty; pass `overwrite` to replace its results{hint}", arg="out_dir"
                )
            for name in RESULT_FILES:
                # An old result must not survive next to a new run that fails.
                (out_dir / name).unlink(missing_ok=True)
            if (out_dir / PARTS_DIR).exists():
                shutil.rmtree(out_dir / PARTS_DIR)
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot prepare the folder ({e.strerror or e})", arg="out_dir") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"{out_dir}: the folder is not writable", arg="out_dir")
    return None


def _run_state(out_dir: Path) -> RunState:
    """The state of the unfinished run in `out_dir`, from its run file and its saved parts."""
    parts = out_dir / PARTS_DIR
    run_file = parts / RUN_FILE
    if not run_file.exists():
        done = (out_dir / SEQUENCES_FILE).exists()
        why = "its run is finished" if done else "there is no unfinished run in it"
        raise OutputError(f"{out_dir}: nothing to resume ({why})", arg="out_dir")
    try:
        state = RunState(json.loads(run_file.read_text(encoding="utf-8"))["metadata"])
        for manifest in _manifests(parts):
            part = json.loads(manifest.read_text(encoding="utf-8"))
            state.parts += 1
            state.records_done = part["records_done"]
            state.rejected += len(part["rejected"])
            state.summary = part["summary"]
        in_flight = parts / IN_FLIGHT_FILE
        if in_flight.exists():
            docs = (_doc_from_json(d) for d in json.loads(in_flight.read_text(encoding="utf-8")))
            # Documents a part saved after them already hold are left out.
            state.in_flight = {d.doc: d for d in docs if d.doc >= state.records_done}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{out_dir}: the saved run cannot be read ({first_line(e)})", arg="out_dir") from None
    return state


def _manifests(parts_dir: Path) -> list[Path]:
    """The manifests of a run's saved parts, in order (a part without one was cut short)."""
    return sorted(parts_dir.glob("[0-9]*.json"))


def check_resume(state: RunState, metadata: dict[str, str]) -> None:
    """Raise OutputError where this run's settings differ from those the folder's run was started with."""
    for key in dict.fromkeys([*metadata, *state.metadata]):
        was, now = state.metadata.get(key), metadata.get(key)
        if was != now:
            raise OutputError(f": the run was started with {key} {was!r}, not {now!r}", arg="resume")


class RunWriter:
    """Save a run as numbered parts as it goes, then join them into the final files in one step.

    Each part holds the documents of whole read-ahead buffers and the records rejected among them, with
    a manifest saying how far into the input it reaches; a crash leaves every saved part readable and a
    resumed run starts after the last one. The final files appear, complete, only when the run finishes.
    """

    def __init__(self, out_dir: Path, metadata: dict[str, str], words: bool, state: RunState | None = None) -> None:
        """Start a run in a prepared folder, or continue the one `state` describes."""
        self.out_dir = Path(out_dir)
        self.parts_dir = self.out_dir / PARTS_DIR
        self.metadata = metadata
        self.words = words
        self.parts = state.parts if state else 0
        self.records_done = state.records_done if state else 0
        self.rejected = state.rejected if state else 0
        self._pending_rejects: list[Rejected] = []
        if state is None:
            try:
                self.parts_dir.mkdir(exist_ok=True)
                _atomic_write(self.parts_dir / RUN_FILE, json.dumps({"metadata": metadata}, indent=2))
            except OSError as e:
                raise OutputError(f"{out_dir}: cannot write ({e.strerror or e})", arg="out_dir") from None

    @property
    def kinds(self) -> list[tuple[str, pa.Schema]]:
        """The Parquet files this run writes, with their schemas."""
        kinds = [(TOKENS_FILE, TOKEN_SCHEMA), (SEQUENCES_FILE, SEQUENCE_SCHEMA)]
        return kinds + ([(WORDS_FILE, WORD_SCHEMA)] if self.words else [])

    def _part_file(self, kind: str, name: str) -> Path:
        """Where part `name` of a kind of file is: one folder per kind, readable as one dataset."""
        return self.parts_dir / kind.removesuffix(".parquet") / f"{name}.parquet"

    def reject(self, rejected: Rejected) -> None:
        """Note a record that could not be scored; it is saved with the part that reaches past it."""
        self._pending_rejects.append(rejected)

    def save(self, docs: list[DocScore], records_done: int, summary: dict) -> None:
        """Save the documents of finished buffers as a part; the input is done up to `records_done`."""
        name = f"{self.parts:06d}"
        rejects = [r for r in self._pending_rejects if r.doc < records_done]
        self._pending_rejects = [r for r in self._pending_rejects if r.doc >= records_done]
        tables = {TOKENS_FILE: token_table, SEQUENCES_FILE: sequence_table, WORDS_FILE: word_table}
        try:
            for kind, _ in self.kinds:
                path = self._part_file(kind, name)
                path.parent.mkdir(exist_ok=True)
                # A leading dot keeps a part being written out of readers of the folder.
                hidden = path.with_name(f".{path.name}")
                pq.write_table(tables[kind](docs), hidden)
                os.replace(hidden, path)
            # The manifest goes last: a part without one was cut short and does not count.
            manifest = {"records_done": records_done, "rejected": [_reject_row(r) for r in rejects], "summary": summary}
            _atomic_write(self.parts_dir / f"{name}.json", json.dumps(manifest, ensure_ascii=False))
        except OSError as e:
            raise OutputError(f"{self.out_dir}: cannot write ({e.strerror or e})", arg="out_dir") from None
        self.parts += 1
        self.records_done = records_done
        self.rejected += len(rejects)
        (self.parts_dir / IN_FLIGHT_FILE).unlink(missing_ok=True)  # a saved part holds its documents now

    def save_in_flight(self, docs: list[DocScore]) -> None:
        """Keep the finished documents of an interrupted buffer, so that a resumed run need not score them."""
        try:
            _atomic_write(self.parts_dir / IN_FLIGHT_FILE, json.dumps([_doc_to_json(d) for d in docs]))
        except OSError as e:
            raise OutputError(f"{self.out_dir}: cannot write ({e.strerror or e})", arg="out_dir") from None

    def finish(self, records_read: int, summary: dict, errors_file: bool) -> list[Path]:
        """Save what is left, join the parts into the final files, write summary.json and remove the parts."""
        if self._pending_rejects or self.parts == 0:
            self.save([], max(records_read, self.records_done), summary)
        try:
            written = [self._join(kind, schema) for kind, schema in self.kinds]
            # Rejects saved by an earlier session that skipped them are written even if this one stops on them.
            if errors_file or self.rejected:
                written.append(self._join_errors())
            written.append(write_summary(self.out_dir, summary, self.metadata))
            shutil.rmtree(self.parts_dir)
        except OSError as e:
            raise OutputError(
                f"{self.out_dir}: cannot write the final files ({e.strerror or e})", arg="out_dir"
            ) from None
        return written

    def abort(self) -> None:
        """After a failure: keep the saved parts for --resume, or leave no trace where there are none."""
        if not self._part_names() and not (self.parts_dir / IN_FLIGHT_FILE).exists():
            shutil.rmtree(self.parts_dir, ignore_errors=True)

    def part_files(self, kind: str) -> list[Path]:
        """The saved part files of one kind (`SEQUENCES_FILE`…), in order."""
        return [self._part_file(kind, name) for name in self._part_names()]

    def discard(self) -> None:
        """Remove everything the run saved: for a run that turned out to be pointless, not interrupted."""
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _part_names(self) -> list[str]:
        """The saved parts' names, in order."""
        return [p.stem for p in _manifests(self.parts_dir)]

    def _join(self, kind: str, schema: pa.Schema) -> Path:
        """Join one kind of part file into its final file, in row groups of a fixed size."""
        meta = {k.encode(): str(v).encode() for k, v in self.metadata.items()}
        target = self.out_dir / kind
        partial = target.with_name(target.name + _PARTIAL)
        # Fixed-size row groups make a resumed run's files the same as an uninterrupted run's.
        with pq.ParquetWriter(partial, schema.with_metadata(meta)) as writer:
            pending, rows = [], 0
            for name in self._part_names():
                table = pq.read_table(self._part_file(kind, name), schema=schema)
                pending.append(table)
                rows += table.num_rows
                while rows >= ROW_GROUP_ROWS:
                    joined = pa.concat_tables(pending)
                    writer.write_table(joined.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                    pending, rows = [joined.slice(ROW_GROUP_ROWS)], rows - ROW_GROUP_ROWS
            if rows:
                writer.write_table(pa.concat_tables(pending))
        os.replace(partial, target)
        return target

    def _join_errors(self) -> Path:
        """Gather the rejected records of all parts into errors.jsonl."""
        lines = []
        for name in self._part_names():
            part = json.loads((self.parts_dir / f"{name}.json").read_text(encoding="utf-8"))
            lines += [json.dumps(r, ensure_ascii=False) + "\n" for r in part["rejected"]]
        path = self.out_dir / ERRORS_FILE
        _atomic_write(path, "".join(lines))
        return path


_DOC_ARRAYS = ("token_ids", "positions", "starts", "ends", "logprobs", "entropies", "is_response")


def _doc_to_json(doc: DocScore) -> dict:
    """A DocScore as JSON values; float32 values survive the round trip exactly."""
    arrays = {name: getattr(doc, name).tolist() for name in _DOC_ARRAYS}
    words = {name: getattr(doc.words, name).tolist() for name in ("starts", "ends", "token_word")}
    scalars = {"doc": doc.doc, "id": doc.id, "text": doc.text, "n_bytes": doc.n_bytes, "truncated": doc.truncated}
    return {**scalars, **arrays, "tokens": doc.tokens, "words": words}


def _doc_from_json(row: dict) -> DocScore:
    """The DocScore _doc_to_json wrote."""
    types = {"logprobs": np.float32, "entropies": np.float32, "is_response": bool}
    arrays = {name: np.asarray(row[name], dtype=types.get(name, np.int32)) for name in _DOC_ARRAYS}
    words = Words(*(np.asarray(row["words"][k], dtype=np.int64) for k in ("starts", "ends", "token_word")))
    scalars = {k: row[k] for k in ("doc", "id", "text", "n_bytes", "truncated")}
    return DocScore(**scalars, **arrays, tokens=row["tokens"], words=words)


def _reject_row(r: Rejected) -> dict:
    """A rejected record as a line of errors.jsonl."""
    return {"doc": r.doc, "input": r.source, "line": r.line, "reason": r.reason, "record": r.raw[:_RAW_CHARS]}


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
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return saved["summary"], saved["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{path}: cannot be read ({first_line(e)})", arg="out_dir") from None


def write_summary(out_dir: Path, figures: dict, metadata: dict[str, str]) -> Path:
    """Write the run's headline figures and metadata as summary.json, for scripts; return its path."""
    path = Path(out_dir) / SUMMARY_FILE
    text = json.dumps({"summary": _finite(figures), "metadata": metadata}, indent=2, ensure_ascii=False)
    try:
        _atomic_write(path, text)
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot write {SUMMARY_FILE} ({e.strerror or e})", arg="out_dir") from None
    return path
