"""The small tab-separated files a user writes by hand: `vnp train`'s manifest (`path<TAB>label`)
and `vnp evaluate`'s labels (`id<TAB>label[<TAB>level]`), read one way.

Blank lines and lines starting with `#` are skipped. The first other line is a header, and skipped,
when its second column reads `label` (`path<TAB>label`, `id<TAB>label`, `sequence_id<TAB>label`...):
`label` is never a class, so a header cannot be mistaken for data. The file must be a regular file
of UTF-8 text; anything else is one line naming the file and, where there is one, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from vnp.support.errors import InputError, where
from vnp.support.paths import regular_file


def labelled_lines(path: Path, what: str, names: tuple[str, ...], optional: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each data line of `path`: `names` are its columns (the second is
    `label`), of which the last `optional` may be left out; `what` names the file in messages."""
    regular_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, line_start = data.count(b"\n", 0, err.start) + 1, data.rfind(b"\n", 0, err.start) + 1
        raise InputError(f"{where(path, line=line)}: {what} is not UTF-8 text (at column {err.start - line_start + 1})"
                         ) from None
    header_seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r").split("\t")
        if not header_seen:
            header_seen = True
            if len(fields) >= 2 and fields[1] == "label":
                continue
        if not len(names) - optional <= len(fields) <= len(names) or not fields[0]:
            raise InputError(f"{where(path, line=number)}: expected {_layout(names, optional)!r}, got {line!r}")
        yield number, fields


def _layout(names: tuple[str, ...], optional: int) -> str:
    """`id<TAB>label[<TAB>level]`"""
    required, rest = names[:len(names) - optional], names[len(names) - optional:]
    return "<TAB>".join(required) + "".join(f"[<TAB>{name}]" for name in rest)
