"""Ctrl-C at start-up: held while heavy libraries import, then acted on at a safe point.

A KeyboardInterrupt raised while torch initialises its native code can abort the process
(`terminate called … KeyboardInterrupt`) or print a traceback from deep inside an import. So SIGINT is
only recorded while they import, and raised as a KeyboardInterrupt right after, where the CLI turns it into
one line and exit code 130.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Tests name a start-up stage here to make the process send itself SIGINT there, instead of relying on timing.
SIGNAL_AT_ENV = "SCORECLI_TEST_SIGINT_AT"

_held: list[int] | None = None
_previous: object = None


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
