"""The `scorecli` command (also `python -m scorecli`): Ctrl-C is held from the very start (see interrupts.py)."""

import sys

from scorecli import faults, interrupts

EXIT_INTERRUPTED = 130


def main() -> None:
    """Run the CLI; a Ctrl-C while its modules import ends it at once, in one line, with exit code 130."""
    interrupts.hold()
    faults.point("start")
    from scorecli.cli import app

    faults.point("cli")
    if interrupts.pending():
        sys.stderr.write("scorecli: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    app(prog_name="scorecli")


if __name__ == "__main__":
    main()
