"""Fault injection for crash tests: named points of a run where a test makes the process signal itself.

A test sets the environment variable SCORECLI_FAULT=STAGE[:SIGNAL[:MARKER]] for the process it starts (or
its own, for an in-process run); the first time the run reaches STAGE, the process sends itself SIGNAL (INT,
the default, TERM, STOP or KILL), deterministically, instead of relying on timing. The fault fires once:
the variable is removed from the environment as it fires; with MARKER, a file that the first process to get
there creates, once across every process that shares it (a Ray cluster's workers, which inherit the
variable, and the retries of their tasks). Without the variable, `point` costs a dictionary lookup.

The stages, in the order a run meets them:
  start, cli          the entry point, before and after the CLI's modules import (SIGINT is held there)
  tables, imports     just before pyarrow, and torch and transformers, import (SIGINT held until they are done)
  model               just before the model loads
  batch               after each batch is scored (engine/scorer.py)
  part-written        a part's files are written, its manifest not yet (runfolder/runs.py)
  part-saved          a part is saved, manifest and all (the scoring loop, executors/session.py)
  finishing, joining, joined, committed, moving, moved, finished
                      the stages of the committed finish (runfolder/runs.py)
  ray-import, ray-start, ray-scoring, ray-joining
                      a --ray run's driver: Ray imports, its cluster is up, the first shard reports, joining
  shard-complete      a --ray run's driver has a shard's result (executors/scaleout.py)
  exiting             the interpreter shuts down, its threads joined (__main__.py; only where asked for)

This is the one place the variable is read; nothing else in scorecli exists for tests.

Layer: base. It must not import the inputs, the data model, the engine, the run folder, the analysis, the executors
or the front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "SCORECLI_FAULT"


def point(stage: str) -> None:
    """Mark a named stage of a run: the process signals itself here if SCORECLI_FAULT names it (once)."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, rest = wanted.partition(":")
    if name != stage:
        return
    signame, _, marker = rest.partition(":")
    os.environ.pop(FAULT_ENV, None)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # another process of the run got here first
            return
    os.kill(os.getpid(), getattr(signal, f"SIG{signame or 'INT'}"))
