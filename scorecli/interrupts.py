"""Ctrl-C and SIGTERM: held while heavy libraries import, raised while a run scores, never lost.

A KeyboardInterrupt raised while torch initialises its native code can abort the process
(`terminate called … KeyboardInterrupt`) or print a traceback from deep inside an import. So SIGINT is
only recorded while they import, and raised as a KeyboardInterrupt right after, where the CLI turns it into
one line and exit code 130.

While a run scores, SIGINT and SIGTERM raise (`as_exceptions`). An exception raised where Python swallows
it (a weakref callback or `__del__` the garbage collector runs: "Exception ignored in …") would let the
run go on to the end, so each signal is also recorded, and `reraise` raises it again at the next safe point;
Python's "Exception ignored" traceback for it is not printed.

A run stopped while it scores raises `RunInterrupted`, which says what it saved and where (session.py).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from scorecli import faults

_held: list[int] | None = None
_previous: object = None
_raised: list[KeyboardInterrupt] = []


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

    def handler(signum: int, frame: object) -> None:
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
        for sig, before in previous.items():
            signal.signal(sig, before)
        sys.unraisablehook = hook
        _raised.clear()


def reraise() -> None:
    """Raise again the interrupt a signal raised inside `as_exceptions`, if it was swallowed before reaching us."""
    if _raised:
        raise _raised.pop()
