"""Paths given by the user are checked with stat before they are opened: a FIFO or a device would
block a read forever, a folder where a file is expected would be read as a whole tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vnp.support.errors import InputError


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` if it is a regular file (after symlinks); else one line naming it and what it is."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: {what} is {kind_of(mode)}, not a regular file")
    return path


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
