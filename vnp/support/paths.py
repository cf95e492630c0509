"""Paths given by the user are checked with stat before they are opened: a FIFO or a device would
block a read forever, a folder where a file is expected would be read as a whole tree."""

from __future__ import annotations

import hashlib
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


def file_sha256(path: str | os.PathLike, what: str = "file") -> str:
    """The SHA-256 of every byte of a file (hex), read in 4 MiB blocks; one line naming the file
    (and `what` it is) when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from None
    return digest.hexdigest()


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


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """`path` if it is a folder or can become one: not an existing file, not a symbolic link to
    nothing (mkdir would say only "File exists"); one line naming it otherwise."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path}: {what} is a broken symbolic link (to {os.readlink(path)}, which does not exist)")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: {what} is an existing file")
    return path
