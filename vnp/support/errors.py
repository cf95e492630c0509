"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations


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


class Stopped(Exception):
    """A stop signal (SIGTERM, SIGUSR1) arrived: the run ends with exit code 143, resumable."""

    exit_code = 143


class PeerFailure(RuntimeError):
    """Another rank failed or stopped answering (exit code 1). `reported`: that rank, or rank 0,
    says why, so this rank stops quietly; otherwise this rank's message is said (it is complete)."""

    exit_code = 1

    def __init__(self, message: str, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported
