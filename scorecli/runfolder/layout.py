"""The run folder's layout: the name of every file and folder a run writes, and how a file appears whole.

Needs neither torch nor pyarrow. A finished run holds its results as files, or (a --ray run) as folders of
one file per shard, in input order; everything else belongs to the protocol of an unfinished run:

DIR/tokens.parquet, sequences.parquet, words.parquet   the results of a single process
DIR/choices.parquet                                    a run of records with choices: a row per choice
DIR/tokens/NNNNN.parquet, sequences/…, words/…          the results of a --ray run, one file per shard
DIR/errors.jsonl                                       the records skipped (`on_error` skip)
DIR/summary.json                                       last: the run is finished
DIR/.scorecli.lock                                     held by the run that owns the folder (runfolder/runs.py)
DIR/parts/                                             an unfinished run's saved parts (runfolder/runs.py)
DIR/shards/                                            an unfinished --ray run's plan and shards (executors/scaleout.py)

Files are written under a temporary name (TEMP_SUFFIX) and renamed once complete, so that readers see
all of a file or nothing. This module must not import the engine, pyarrow or torch.

Layer: run folder. It must not import the engine, the analysis, the executors or the front of scorecli, nor torch,
transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

TOKENS_FILE = "tokens.parquet"
SEQUENCES_FILE = "sequences.parquet"
WORDS_FILE = "words.parquet"
CHOICES_FILE = "choices.parquet"  # a run of records with choices (--choices-field): a row per choice
ERRORS_FILE = "errors.jsonl"
SUMMARY_FILE = "summary.json"
RESULT_FILES = (TOKENS_FILE, SEQUENCES_FILE, WORDS_FILE, CHOICES_FILE, ERRORS_FILE, SUMMARY_FILE)
RESULT_KINDS = ("tokens", "sequences", "words", "choices")  # the Parquet results, by kind (a --ray run's folders)
LOCK_FILE = ".scorecli.lock"
# An unfinished run (runfolder/runs.py): its metadata and options, numbered parts, an interrupted buffer, the finish.
PARTS_DIR = "parts"
RUN_FILE = "run.json"
IN_FLIGHT_FILE = "in-flight.json"
STAGED_DIR = "final"
FINISHED_FILE = "finished.json"
# An unfinished --ray run (executors/scaleout.py): its plan, and a run folder per shard.
SHARDS_DIR = "shards"
PLAN_FILE = "plan.json"
TEMP_SUFFIX = ".partial"


def result_file(kind: str) -> str:
    """The file name of a kind of result (tokens → tokens.parquet)."""
    return f"{kind}.parquet"


def kind_dir(name: str) -> str:
    """The folder of a kind of result, for parts or a --ray dataset (tokens.parquet → tokens)."""
    return name.removesuffix(".parquet")


def result_files(run: str | Path, name: str) -> list[Path]:
    """The Parquet files of one of a run's results (`TOKENS_FILE`…): the file, or a --ray run's dataset folder's files.

    A --ray run writes each result as a folder of one file per shard (tokens/00000.parquet, …), in input order.
    """
    path = Path(run) / name
    if path.is_file():
        return [path]
    folder = Path(run) / kind_dir(name)
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def is_sharded_run(out_dir: str | Path) -> bool:
    """Whether a folder holds a sharded (--ray) run, finished or not."""
    out_dir = Path(out_dir)
    # The shards folder, not its plan: a run whose plan is lost is still a --ray run, damaged.
    return (out_dir / SHARDS_DIR).is_dir() or (out_dir / kind_dir(SEQUENCES_FILE)).is_dir()


def write_file(path: Path, data: bytes | pa.Buffer) -> None:
    """Write a file under a temporary name, then give it its name: readers see all of it or nothing."""
    temp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
