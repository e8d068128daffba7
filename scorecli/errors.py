"""Errors a user can cause: each carries a one-line message and the exit code the CLI uses."""


class ScorecliError(Exception):
    """An error displayed to the user as one line, ending the run with `exit_code`."""

    exit_code = 1


class UsageError(ScorecliError):
    """An option value that cannot work (out of range, contradictory, unsupported here)."""

    exit_code = 2


class InputError(ScorecliError):
    """Input that cannot be read or a record that does not validate."""

    exit_code = 3


class ModelError(ScorecliError):
    """A model or tokenizer that cannot be found, downloaded or loaded."""

    exit_code = 4


class OutputError(ScorecliError):
    """An output location that cannot be written."""

    exit_code = 5


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
