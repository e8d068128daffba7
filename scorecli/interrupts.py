"""Ctrl-C and SIGTERM: held while heavy libraries import, raised while a run scores, never lost.

A KeyboardInterrupt raised while torch initialises its native code can abort the process
(`terminate called … KeyboardInterrupt`) or print a traceback from deep inside an import. So SIGINT is
only recorded while they import, and raised as a KeyboardInterrupt right after, where the CLI turns it into
one line and exit code 130.

While a run scores, SIGINT and SIGTERM raise (`as_exceptions`). An exception raised where Python swallows
it (a weakref callback or `__del__` the garbage collector runs: "Exception ignored in …") would let the
run go on to the end, so each signal is also recorded, and `reraise` raises it again at the next safe point;
Python's "Exception ignored" traceback for it is not printed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Tests name a start-up stage here to make the process send itself SIGINT there, instead of relying on timing.
SIGNAL_AT_ENV = "SCORECLI_TEST_SIGINT_AT"

_held: list[int] | None = None
_previous: object = None
_raised: list[KeyboardInterrupt] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as an interrupt: finished work is kept, the exit code says which signal it was."""


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
        checkpoint(stage)
        yield
    except BaseException:
        release(act=False)
        raise
    release()


def checkpoint(stage: str) -> None:
    """Send this process SIGINT if the test hook names this stage."""
    if os.environ.get(SIGNAL_AT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGINT)


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
