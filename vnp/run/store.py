"""Committed progress on rank 0: scores of finished work units, a few bytes per frame.

Rank 0 keeps, per frame, its global key (chunk * 6 + frame) and its two scores, and commits them in
parts: each part is written to a temporary file, fsynced, then renamed, and carries a checksum of
its bytes in its name. On resume a part that is truncated, corrupt or fails its checksum is deleted
and its units are computed again; a part is never trusted without its checksum.

Parts are written by one background thread (`PartWriter`), in the order they were committed, so
that rank 0 does not wait on fsyncs between steps; a resume compacts many parts into one.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

PART_GLOB = "part-*-*.npz"
COMPACT_ABOVE = 16  # a resume finding more parts than this rewrites them as one


class PartWriter:
    """Runs writes on one background thread, in submission order; a failed write is raised by the
    next `submit` or by `flush`."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vnp-commit")
        self.futures: list[Future] = []

    def submit(self, write: Callable, *args) -> None:
        self._raise_failures()
        self.futures.append(self.pool.submit(write, *args))

    def _raise_failures(self) -> None:
        done = [f for f in self.futures if f.done()]
        self.futures = [f for f in self.futures if not f.done()]
        for future in done:
            future.result()

    def flush(self) -> None:
        futures, self.futures = self.futures, []
        for future in futures:
            future.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.pool.shutdown(wait=True)


def part_number(path: Path) -> int:
    """`part-000012-<digest>.npz` -> 12."""
    return int(path.name.split("-")[1])


def write_atomic(folder: Path, number: int, arrays: dict[str, np.ndarray]) -> Path:
    """Write an .npz named after its number and the SHA-256 of its bytes: to a temporary name,
    fsynced, then renamed (with the folder fsynced), so a part is whole or absent."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    path = folder / f"part-{number:06d}-{hashlib.sha256(data).hexdigest()[:32]}.npz"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_checked(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a part, or None when its bytes do not match the digest in its name (a
    truncated, corrupt or foreign file) or it cannot be read."""
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest()[:32] != path.stem.split("-")[2]:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except Exception:  # unreadable in any way: do not trust
        return None


class ScoreStore:
    """Scores of finished units, in memory and committed to `parts_dir`."""

    def __init__(self, parts_dir: Path):
        self.parts_dir = parts_dir
        parts_dir.mkdir(parents=True, exist_ok=True)
        self.units: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self._pending: tuple[list, list, list] = ([], [], [])
        self.next_part = 0
        self.rejected: list[Path] = []

    def load_committed(self) -> set[int]:
        """Read every committed part; delete untrustworthy ones. Returns the finished units."""
        done: set[int] = set()
        # Newest first: a compacted part wins over the old parts it replaced, should a crash have
        # left some of them behind.
        for path in sorted(self.parts_dir.glob(PART_GLOB), reverse=True):
            self.next_part = max(self.next_part, part_number(path) + 1)
            arrays = read_checked(path)
            units = set() if arrays is None else set(arrays["units"].tolist())
            if arrays is None or done & units:
                if arrays is None or not units <= done:  # not merely superseded by a compacted part
                    self.rejected.append(path)
                path.unlink()
                continue
            done.update(arrays["units"].tolist())
            self.units.append(arrays["units"])
            self.keys.append(arrays["keys"])
            self.scores.append(arrays["scores"])
        for stale in self.parts_dir.glob("*.tmp"):
            stale.unlink()
        return done

    def add(self, unit: int, keys: np.ndarray, scores: np.ndarray) -> None:
        units, key_list, score_list = self._pending
        units.append(unit)
        key_list.append(keys.astype(np.int64))
        score_list.append(scores.astype(np.float32))

    @property
    def pending_units(self) -> int:
        return len(self._pending[0])

    def commit(self, writer: PartWriter | None = None) -> int | None:
        """Write the pending units as one part (through `writer` in the background, else now);
        returns its number (None when nothing pending)."""
        units, key_list, score_list = self._pending
        if not units:
            return None
        arrays = {"units": np.asarray(units, dtype=np.int64),
                  "keys": np.concatenate(key_list) if key_list else np.zeros(0, np.int64),
                  "scores": np.concatenate(score_list).reshape(-1, 2) if score_list else np.zeros((0, 2), np.float32)}
        number = self.next_part
        if writer is None:
            write_atomic(self.parts_dir, number, arrays)
        else:
            writer.submit(write_atomic, self.parts_dir, number, arrays)
        self.units.append(arrays["units"])
        self.keys.append(arrays["keys"])
        self.scores.append(arrays["scores"])
        self._pending = ([], [], [])
        self.next_part += 1
        return number

    def compact(self) -> int:
        """Rewrite the committed parts as one when there are more than COMPACT_ABOVE; returns how
        many were replaced. The new part is written (atomically) before the old ones go: a crash
        in between leaves both, and the next load drops the newer, overlapping one."""
        old = sorted(self.parts_dir.glob(PART_GLOB))
        if len(old) <= COMPACT_ABOVE or not self.units:
            return 0
        arrays = {"units": np.concatenate(self.units), "keys": np.concatenate(self.keys),
                  "scores": np.concatenate(self.scores).reshape(-1, 2)}
        write_atomic(self.parts_dir, self.next_part, arrays)
        self.next_part += 1
        for path in old:
            path.unlink()
        self.units, self.keys, self.scores = [arrays["units"]], [arrays["keys"]], [arrays["scores"]]
        return len(old)

    def finished_units(self) -> set[int]:
        return set(np.concatenate(self.units).tolist()) if self.units else set()

    def sorted_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """All frame keys in input order and their scores."""
        if not self.keys:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        keys = np.concatenate(self.keys)
        scores = np.concatenate(self.scores).reshape(-1, 2)
        self.keys, self.scores = [keys], [scores]  # one copy in memory, not two
        if len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1])):  # a run without resume arrives in order
            return keys, scores
        order = np.argsort(keys, kind="stable")
        return keys[order], scores[order]
