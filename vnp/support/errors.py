"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class InputError(Exception):
    """Bad input or settings supplied by the user (exit code 2).

    The message names the file, the record (or line) and the problem, e.g.
    ``reads.fa: record 'seq7' (line 12): invalid character 'E'``.
    """

    exit_code = 2

    def __init__(self, message: str, reported: bool = False) -> None:
        super().__init__(message)
        # True where another rank prints this error (one line per job, not one per rank)
        self.reported = reported


def where(path, record: str | None = None, line: int | None = None) -> str:
    """Format the location part of an error message."""
    text = str(path)
    if record is not None:
        text += f": record '{record}'"
    if line is not None:
        text += f" (line {line})" if record is not None else f": line {line}"
    return text


def exit_on_input_error(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point: an InputError becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return fn(*args, **kwargs) or 0
        except InputError as err:
            print(f"vnp: error: {err}", file=sys.stderr)
            return InputError.exit_code

    return wrapper


class Stopped(Exception):
    """A stop signal (SIGTERM, SIGUSR1) arrived: the run ends with exit code 143, resumable."""

    exit_code = 143
