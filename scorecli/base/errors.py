"""Errors a user can cause: each carries a one-line message and the exit code the CLI uses.

A message about one argument names that argument (`arg`), as a library caller knows it, and writes other
arguments it mentions in backticks; the CLI names their command-line flags instead (`for_cli`).

Layer: base. It must not import the inputs, the data model, the engine, the run folder, the analysis, the executors
or the front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


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


def unreadable(path: str | os.PathLike, error: BaseException) -> str | None:
    """What is wrong with a file whose reading or parsing raised `error`, as a message ends; None for other errors.

    Covers the file's system errors, JSON and UTF-8 errors, pyarrow's errors, and the errors of content that
    does not have the shape it should have (a field missing, a value of the wrong type).
    """
    if isinstance(error, FileNotFoundError):
        return "is missing"
    if not isinstance(error, _READING_ERRORS) and not type(error).__module__.startswith("pyarrow"):
        return None
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "is empty"
    except OSError:
        pass
    if isinstance(error, json.JSONDecodeError):
        return f"cannot be read (not valid JSON: {error.msg} at line {error.lineno} column {error.colno})"
    if isinstance(error, UnicodeDecodeError):
        return f"cannot be read (not valid UTF-8: byte 0x{error.object[error.start]:02x} at offset {error.start})"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot be read ({error.strerror})"
    if type(error) is KeyError:  # a field that JSON content lacks (pyarrow's own KeyErrors are subclasses)
        return f"cannot be read (it has no {error.args[0]!r})"
    # pyarrow names the file again ("Could not open Parquet input source '…': …"): the message names it once.
    return f"cannot be read ({_ARROW_SOURCE.sub('', first_line(error))})"


@contextmanager
def reading(path: str | os.PathLike, arg: str | None = None) -> Iterator[None]:
    """Turn a failure to read or parse the file `path` (missing, empty, truncated, garbled) into an OutputError."""
    try:
        yield
    except Exception as e:
        why = unreadable(path, e)
        if why is None:
            raise
        raise OutputError(f"{shown(path)}: {why}", arg=arg) from None


# What reading or parsing a file raises, pyarrow's errors aside (some of them subclass none of these).
_READING_ERRORS = (OSError, ValueError, LookupError, TypeError, AttributeError, EOFError, NotImplementedError)
_ARROW_SOURCE = re.compile(r"^Could not open Parquet input source '.*?': ")


def _named(name: str | None, message: str) -> str:
    """A message that begins with the name of what it is about ("stride must…", "out_dir: …")."""
    if not name:
        return message
    return f"{name}{'' if message.startswith(':') else ' '}{message}"
