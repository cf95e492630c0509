"""The checksums of a fetched pack folder: `SHA256SUMS` (as `sha256sum -c` reads it) and
`sources.json` (each file's URL, revision, size, SHA-256, and for the published classifier its git
blob id), written by `vnp models fetch`, checked by `vnp models verify` and by `load_pack`.

Digests go through the digest cache of vnp.models.identity, so a 6 GB checkpoint is hashed once per
content (the cache lives in the user's cache folder: a read-only shared pack folder is fine).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vnp.support.errors import InputError
from vnp.models.identity import file_digest

SUMS = "SHA256SUMS"
SOURCES = "sources.json"


def git_blob_id(path: Path) -> str:
    """Git's id of a file's bytes: sha1(b"blob <size>\\0" + bytes), as a repository tree lists it."""
    digest = hashlib.sha1(b"blob %d\0" % os.stat(path).st_size)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_sums(folder: Path, digests: dict[str, str]) -> None:
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items()))
    (folder / SUMS).write_text(text)


def read_sums(folder: Path) -> dict[str, str]:
    """relative path -> sha256 from SHA256SUMS."""
    path = folder / SUMS
    sums = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the pack's checksums ({err})") from None
    for number, line in enumerate(lines, 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"{path}: line {number}: expected '<sha256>  <relative path>'")
        sums[name.lstrip("*")] = digest.lower()
    return sums


def read_sources(folder: Path) -> dict:
    path = folder / SOURCES
    if not path.exists():
        return {"files": {}}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("expected an object with 'files'")
        return data
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a valid sources file ({err})") from None


@dataclass
class FileCheck:
    name: str
    problem: str | None  # None when the file is as fetched
    size: int = 0


def check_file(folder: Path, name: str, sha256: str, entry: dict, full: bool = True) -> FileCheck:
    """One file of a pack against its recorded size, SHA-256 (`full`) and git blob id."""
    path = folder / name
    if not path.is_file():
        return FileCheck(name, "missing" if not path.exists() else "not a regular file")
    size = path.stat().st_size
    if "size" in entry and size != entry["size"]:
        return FileCheck(name, f"{size} bytes, expected {entry['size']} (truncated or changed)", size)
    if full:
        got = file_digest(path, "model pack file")
        if got != sha256:
            return FileCheck(name, f"sha256 {got[:16]}..., expected {sha256[:16]}... (corrupt or changed)", size)
        if entry.get("git_blob") and git_blob_id(path) != entry["git_blob"]:
            return FileCheck(name, f"git blob id differs from the published {entry['git_blob']}", size)
    return FileCheck(name, None, size)


def verify_folder(folder: Path, full: bool = True) -> list[FileCheck]:
    """Every file SHA256SUMS names, checked (`full=False`: presence and sizes only)."""
    sums, sources = read_sums(folder), read_sources(folder)
    return [check_file(folder, name, digest, sources["files"].get(name, {}), full) for name, digest in sums.items()]


def check_pack_folder(folder: Path, pack_name: str | None) -> None:
    """For `load_pack`: a fetched pack folder must be complete and unchanged (sizes first, then the
    digests through the cache); the first problem is one line naming the file."""
    from vnp.models.sources import fetch_hint

    if not (folder / SUMS).exists():
        return  # a hand-made pack folder: nothing recorded to check against
    for full in (False, True):  # all sizes (instant) before any hashing
        for check in verify_folder(folder, full):
            if check.problem == "missing":
                raise InputError(f"{folder / check.name}: missing from the model pack; {fetch_hint(pack_name)}")
            if check.problem:
                raise InputError(f"{folder / check.name}: {check.problem}; check the pack with `vnp models verify "
                                 f"{folder}` and fetch it again")
