"""Which models a run used, by content, and the checks made before any model file is opened.

A local model file is named by the SHA-256 of every byte. Hashing a 6 GB ESM2-3B checkpoint takes
tens of seconds, so digests of large files are cached under `$XDG_CACHE_HOME/vnp/digests` (else
`~/.cache/vnp/digests`), keyed on the file's real path, size, modification time (ns), device and
inode: a file rewritten in place or replaced by another gets a new key. A Hugging Face hub model is
named by the commit of its resolved snapshot, not by its id, which can move.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from vnp.support.atomic import write_text
from vnp.support.errors import InputError
from vnp.support.paths import file_sha256, regular_file

log = logging.getLogger("vnp")

# Smaller files are hashed every time (milliseconds); larger ones once per content.
CACHE_MIN_BYTES = 64 << 20
SLOW_HASH_S = 5.0  # hashing that takes longer is said in the log


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vnp" / "digests"


def file_digest(path: str | os.PathLike, what: str = "model file") -> str:
    """SHA-256 of every byte of a regular file, from the cache when the file is unchanged."""
    path = regular_file(path, what)
    info = os.stat(path)
    real = os.path.realpath(path)
    key = json.dumps([real, info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino])
    entry = cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".json")
    cached = info.st_size >= CACHE_MIN_BYTES
    if cached:
        try:
            data = json.loads(entry.read_text())
            if data.get("key") == key:
                return data["sha256"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no entry, or an unreadable one: hash again
    started = time.monotonic()
    digest = file_sha256(path, what)
    took = time.monotonic() - started
    if took > SLOW_HASH_S:
        log.info("hashed %s (%.1f GB) in %.0f s; the digest is cached in %s", real, info.st_size / 1e9, took,
                 cache_dir())
    if cached:
        _cache_entry(entry, json.dumps({"key": key, "sha256": digest}))
    return digest


def _cache_entry(path: Path, text: str) -> None:
    """Best effort: a cache that cannot be written only costs a second hashing later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    except (OSError, InputError):
        pass


def folder_digest(folder: Path, names: list[str], what: str) -> str:
    """One digest over the named files of a model folder (their names and contents)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}:{file_digest(folder / name, what)}\n".encode())
    return digest.hexdigest()


def hub_snapshot_commit(folder: Path) -> str | None:
    """The commit of a Hugging Face hub cache snapshot (`.../snapshots/<commit>`), else None."""
    is_commit = re.fullmatch(r"[0-9a-f]{40}", folder.name) is not None
    return folder.name if is_commit and folder.parent.name == "snapshots" else None
