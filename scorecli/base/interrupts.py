"""Ctrl-C and SIGTERM: held while heavy libraries import, raised while a run scores, never lost.

A KeyboardInterrupt raised while torch initialises its native code can abort the process
(`terminate called … KeyboardInterrupt`) or print a traceback from deep inside an import. So SIGINT is
only recorded while they import, and raised as a KeyboardInterrupt right after, where the CLI turns it into
one line and exit code 130.

While a run scores, SIGINT and SIGTERM raise (`as_exceptions`). An exception raised where Python swallows
it (a weakref callback or `__del__` the garbage collector runs: "Exception ignored in …") would let the
run go on to the end, so each signal is also recorded, and `reraise` raises it again at the next safe point;
Python's "Exception ignored" traceback for it is not printed.

Only the first signal raises: the run is stopping from then on, and another exception, raised while it saves
its work or joins its worker threads, could cut that short (a thread join cut short leaves threads running
torch as the interpreter shuts down, which aborts the process: "terminate called without an active
exception"). In the `scorecli` process itself (`own_process`), SIGINT and SIGTERM are then ignored until it
exits (`settle`), as they are once its results are complete and as the process ends: its exit code is
decided, and a signal arriving while Python shuts down would otherwise kill it or print a traceback.

A run stopped while it scores raises `RunInterrupted`, which says what it saved and where (executors/session.py).

Layer: base. It must not import the inputs, the data model, the engine, the run folder, the analysis, the executors
or the front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from scorecli.base import faults

_held: list[int] | None = None
_previous: object = None
_raised: list[KeyboardInterrupt] = []
_owner = False  # this process is the `scorecli` command's own, not an application that imports scorecli
_stopping = False  # a signal raised inside `as_exceptions`: the run is stopping, later signals change nothing
_settled = False  # SIGINT and SIGTERM are ignored until the process ends


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as an interrupt: finished work is kept, the exit code says which signal it was."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM (`terminated`) while it scored, saying what it saved, and where.

    `out` is the output folder as given (None for a stream), `docs_saved` the documents saved there for
    `resume`; `finished` the run was interrupted as it finished, and its results are complete; `sharded` a
    --ray run, whose complete shards and the parts of the others are kept; `resumable` the input can be
    read again (a regular file).
    """

    def __init__(
        self,
        out: str | None,
        docs_saved: int = 0,
        terminated: bool = False,
        finished: bool = False,
        sharded: bool = False,
        resumable: bool = True,
    ) -> None:
        """What an interrupted run saved."""
        self.out, self.docs_saved, self.terminated = out, docs_saved, terminated
        self.finished, self.sharded, self.resumable = finished, sharded, resumable
        super().__init__(self.what() + ("; resume it with `resume`" if self.can_resume else ""))

    def __reduce__(self) -> tuple:
        """Pickled with what it says (as a Ray task's error, say)."""
        return type(self), (self.out, self.docs_saved, self.terminated, self.finished, self.sharded, self.resumable)

    @property
    def can_resume(self) -> bool:
        """Whether `resume` goes on with the run: something is saved, and the input can be read again."""
        unfinished = self.out is not None and not self.finished
        return unfinished and (self.sharded or (self.docs_saved > 0 and self.resumable))

    def what(self) -> str:
        """What was saved, in words (not how to resume it)."""
        if self.out is None:
            return "interrupted"
        if self.finished:
            return f"interrupted as the run finished; its results are complete in {self.out}"
        if self.sharded:
            return f"interrupted; complete shards and the parts of the others are kept in {self.out}"
        if not self.docs_saved:
            return "interrupted before the first documents were saved; nothing to resume"
        saved = f"interrupted after {self.docs_saved:,} documents, saved in {self.out}"
        if not self.resumable:
            return f"{saved}; the input is not a regular file, so the run cannot be resumed"
        return saved


def hold() -> None:
    """From now on only record SIGINT, until `release` (nothing outside the main thread)."""
    global _held, _previous
    if _held is not None or threading.current_thread() is not threading.main_thread():
        return
    _held, _previous = [], signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, _record)


def release(act: bool = True) -> None:
    """Handle SIGINT as before `hold`; raise KeyboardInterrupt if one came meanwhile and `act`."""
    global _held
    if _held is None:
        return
    came, _held = bool(_held), None
    signal.signal(signal.SIGINT, _previous)
    if came and act:
        raise KeyboardInterrupt


def pending() -> bool:
    """Whether a SIGINT came while held."""
    return bool(_held)


@contextmanager
def deferred(stage: str) -> Iterator[None]:
    """Hold SIGINT while the block runs (it may already be held); raise KeyboardInterrupt after it if one came."""
    hold()
    try:
        faults.point(stage)
        yield
    except BaseException:
        release(act=False)
        raise
    release()


def _record(signum: int, frame: object) -> None:
    """The held SIGINT handler: note the signal and carry on."""
    if _held is not None:
        _held.append(signum)


@contextmanager
def as_exceptions() -> Iterator[None]:
    """While the block runs, SIGINT raises KeyboardInterrupt and SIGTERM Terminated, in the main thread."""
    global _stopping

    def handler(signum: int, frame: object) -> None:
        global _stopping
        if _stopping:  # raised again, it would replace the first one wherever the run is stopping
            return
        _stopping = True
        exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        _raised.append(exc)
        raise exc

    def unraisable(what: sys.UnraisableHookArgs) -> None:
        if not any(what.exc_value is exc for exc in _raised):  # ours is raised again: no traceback for it
            hook(what)

    if threading.current_thread() is not threading.main_thread():
        yield  # an embedding application's thread: signals are its business
        return
    sigs = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignored SIGINT (nohup) stays ignored
        sigs.append(signal.SIGINT)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        stopped, _stopping = _stopping, False
        if stopped:
            settle()  # what is left is to save the work, say how to resume it and exit
        if not _settled:
            for sig, before in previous.items():
                signal.signal(sig, before)
        sys.unraisablehook = hook
        _raised.clear()


def reraise() -> None:
    """Raise again the interrupt a signal raised inside `as_exceptions`, if it was swallowed before reaching us."""
    if _raised:
        raise _raised.pop()


def own_process() -> None:
    """Mark this process as the `scorecli` command itself, whose signals `settle` may ignore until it exits."""
    global _owner
    _owner = True


def settle() -> None:
    """In the `scorecli` process itself, ignore SIGINT and SIGTERM from now on: the exit code is decided.

    Called once a run is stopping, once its results are complete, and as the process exits. SIG_IGN, not a
    Python handler: as the interpreter finalises it resets its own handlers to the default one, so a signal
    arriving then would kill the process (exit -2 or -15, not 130 or 143); SIG_IGN it leaves alone. Nothing
    that could hang is left by then (the worker threads are joined), and SIGKILL still ends the process.
    Child processes inherit SIG_IGN: none is started after this. Elsewhere (an application that imports
    scorecli, tests that invoke the CLI in their own process) signals stay the application's business.
    """
    global _settled
    if not _owner or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _settled = True


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then deliver them: the block is never cut short."""
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    try:
        previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread, where signals are not delivered anyway
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)
