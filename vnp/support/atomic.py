"""The one way vnp writes a file: whole or not at all, never through a link it did not make.

A file is written to a temporary name beside its target, `<name>.vnp-<12 hex>.tmp`, created
exclusively (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0666 less the umask): a symlink or any file
already at that name is never opened, so no write lands outside the folder or in someone else's
file. Once complete it is renamed over the target; with `fsync=True` the file and then its folder
are flushed to the disk first (what a resume trusts after a power cut). On any failure the
temporary is removed and an OS error becomes one line (`InputError`) naming the file.

    write_text(path, text)                       # one file
    with AtomicFiles() as files:                 # several files that change together
        with files.open(out / "a.tsv") as fh: ...
        files.write_text(out / "b.json", text)
    # all replaced here, or none if anything above failed

Only names of the temporary form are ever removed as leftovers (`is_temporary`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from vnp.support.errors import InputError

TEMPORARY = re.compile(r".+\.vnp-[0-9a-f]{12}\.tmp")
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def is_temporary(path: Path) -> bool:
    """Whether `path` has the name form of a temporary this module made."""
    return TEMPORARY.fullmatch(path.name) is not None


class WriteFailed(InputError):
    """An OS error while writing a file (a full disk, a read-only folder ...), as one line;
    `errno` says which."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def write_failed(path: Path, err: OSError) -> WriteFailed:
    """One line for an OS error while writing `path`."""
    where = err.filename if err.filename and os.fspath(err.filename) != os.fspath(path) else path
    what = err.strerror or type(err).__name__
    return WriteFailed(f"{where}: cannot write ({what})", err.errno)


def create_temporary(path: Path) -> Path:
    """A new empty file beside `path` that nothing else can have made (see the module docstring)."""
    path = Path(path)
    while True:
        tmp = path.with_name(f"{path.name}.vnp-{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, _FLAGS, 0o666))
            return tmp
        except FileExistsError:
            continue  # 48 random bits taken: draw again
        except OSError as err:
            raise write_failed(path, err) from None


def remove_matching(folder: Path, matches) -> None:
    """Remove the plain files directly in `folder` whose path `matches` (never a link's target)."""
    try:
        paths = list(folder.iterdir())
    except OSError:
        return
    for path in paths:
        if matches(path) and (path.is_symlink() or path.is_file()):
            path.unlink(missing_ok=True)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFiles:
    """Files that are replaced together: each is written to its temporary, and only when every one
    is complete (leaving the `with` block, or `commit()`) are they renamed over their targets, in
    the order they were opened; an exception removes every temporary instead."""

    def __init__(self, fsync: bool = False):
        self.fsync = fsync
        self.pending: dict[Path, Path] = {}  # target -> its temporary

    def temporary(self, path: str | os.PathLike) -> Path:
        """The (new, empty) temporary of `path`, for writers that want a file name (a memory map)."""
        path = Path(path)
        if path in self.pending:
            return self.pending[path]
        tmp = create_temporary(path)
        self.pending[path] = tmp
        return tmp

    def replace_last(self, path: str | os.PathLike) -> None:
        """Replace pending `path` after every other file (the one whose presence says all are there)."""
        self.pending[Path(path)] = self.pending.pop(Path(path))

    def current(self, path: str | os.PathLike) -> Path:
        """Where `path`'s newest content is: its temporary while it is pending, else `path`."""
        return self.pending.get(Path(path), Path(path))

    @contextmanager
    def open(self, path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
        """The temporary of `path` opened for writing (`mode` "w" or "wb")."""
        tmp = self.temporary(path)
        try:
            with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
                yield fh
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as err:
            raise write_failed(Path(path), err) from None

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> None:
        with self.open(path, "wb") as fh:
            fh.write(data)

    def write_text(self, path: str | os.PathLike, text: str) -> None:
        with self.open(path) as fh:
            fh.write(text)

    def write_json(self, path: str | os.PathLike, data, indent: int | None = 2) -> None:
        self.write_text(path, json.dumps(data, indent=indent) + "\n")

    def commit(self) -> None:
        try:
            for path, tmp in list(self.pending.items()):
                if self.fsync:
                    with open(tmp, "rb") as fh:  # a temporary written by name (a memory map)
                        os.fsync(fh.fileno())
                os.replace(tmp, path)
                del self.pending[path]
                if self.fsync:
                    fsync_folder(path.parent)
        except OSError as err:
            self.discard()
            raise write_failed(path, err) from None

    def discard(self) -> None:
        for tmp in self.pending.values():
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the folder went read-only: nothing more can be done here
        self.pending.clear()

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
            return
        first = next(iter(self.pending), None)
        self.discard()
        if isinstance(value, OSError) and first is not None:  # not raised while writing one file
            raise write_failed(first.parent, value) from None


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", fsync: bool = False) -> Iterator[IO]:
    """One file opened for writing at its temporary; renamed over `path` when the block ends well."""
    with AtomicFiles(fsync) as files, files.open(path, mode) as fh:
        yield fh


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """`data` into `path`, atomically (module docstring)."""
    with AtomicFiles(fsync) as files:
        files.write_bytes(path, data)


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    with AtomicFiles(fsync) as files:
        files.write_text(path, text)


def write_json(path: str | os.PathLike, data, indent: int | None = 2, fsync: bool = False) -> None:
    """`data` as JSON and a newline, atomically."""
    with AtomicFiles(fsync) as files:
        files.write_json(path, data, indent)
