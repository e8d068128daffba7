"""Errors a user can cause: each carries a one-line message and the exit code the CLI uses.

A message about one argument names that argument (`arg`), as a library caller knows it, and writes other
arguments it mentions in backticks; the CLI names their command-line flags instead (`for_cli`).
"""

from collections.abc import Mapping


class ScorecliError(Exception):
    """An error displayed to the user as one line, ending the run with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, arg: str | None = None) -> None:
        """An error whose `message` follows the name of `arg`, the argument it is about, where there is one."""
        super().__init__(_named(arg, message))
        self.arg, self.message = arg, message

    def for_cli(self, flags: Mapping[str, str]) -> str:
        """The message with its argument, and others it names in `backticks`, named by their flags."""
        message = self.message
        for name, flag in flags.items():
            message = message.replace(f"`{name}`", flag)
        return _named(flags.get(self.arg, self.arg), message)

    def extended(self, note: str) -> "ScorecliError":
        """The same error with `note` appended to its message."""
        return type(self)(self.message + note, arg=self.arg)


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


def shown(name: object) -> str:
    """A file name as messages show it: as it is where plain, quoted with escapes where it holds anything odd."""
    text = str(name)
    if text and text.isprintable() and text == text.strip() and not text.startswith(("'", '"')):
        return text
    # repr escapes newlines, control characters and unprintable ones but keeps readable non-ASCII letters.
    return repr(text)


def one_line(message: str) -> str:
    """A message made safe to print as one line: any line break or control character escaped."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _named(name: str | None, message: str) -> str:
    """A message that begins with the name of what it is about ("stride must…", "out_dir: …")."""
    if not name:
        return message
    return f"{name}{'' if message.startswith(':') else ' '}{message}"
