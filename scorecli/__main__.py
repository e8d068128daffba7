"""The `scorecli` command (also `python -m scorecli`): Ctrl-C is held from the very start (see base/interrupts.py).

Layer: front. Nothing imports it: it is the entry point.
"""

import atexit
import os
import sys

from scorecli.base import faults, interrupts

EXIT_INTERRUPTED = 130


def main() -> None:
    """Run the CLI; a Ctrl-C while its modules import ends it at once, in one line, with exit code 130.

    Signals that come once the exit code is decided (the command is ending) are ignored (interrupts.settle).
    """
    interrupts.own_process()
    interrupts.hold()
    faults.point("start")
    if os.environ.get(faults.FAULT_ENV, "").partition(":")[0] == "exiting":
        atexit.register(faults.point, "exiting")  # called as Python shuts down, after it joined the threads
    from scorecli.cli import app

    faults.point("cli")
    if interrupts.pending():
        interrupts.settle()
        sys.stderr.write("scorecli: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    try:
        app(prog_name="scorecli")
    finally:
        # The exit code is decided (app ends in SystemExit): a signal from here on would only spoil it.
        interrupts.settle()


if __name__ == "__main__":
    main()
