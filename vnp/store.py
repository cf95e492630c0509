"""Committed progress on rank 0: scores of finished work units, a few bytes per frame.

Rank 0 keeps, per frame, its global key (chunk * 6 + frame) and its two scores, and commits them in
parts: each part is written to a temporary file, fsynced, then renamed, and carries a checksum of
its arrays. On resume a part that is truncated, corrupt or fails its checksum is deleted and its
units are computed again; a part is never trusted without its checksum.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

PART_GLOB = "part-*.npz"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz with a checksum, written to a temporary name, fsynced, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, checksum=np.array(_digest(arrays)), **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checked(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a part, or None when it is unreadable or its checksum does not match."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception:  # zip, npy header or CRC errors: all mean "do not trust"
        return None
    checksum = arrays.pop("checksum", None)
    if checksum is None or str(checksum) != _digest(arrays):
        return None
    return arrays


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
        for path in sorted(self.parts_dir.glob(PART_GLOB)):
            self.next_part = max(self.next_part, int(path.stem.split("-")[1]) + 1)
            arrays = read_checked(path)
            if arrays is None or done & set(arrays["units"].tolist()):
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

    def commit(self) -> int | None:
        """Write the pending units as one part; returns its number (None when nothing pending)."""
        units, key_list, score_list = self._pending
        if not units:
            return None
        arrays = {"units": np.asarray(units, dtype=np.int64),
                  "keys": np.concatenate(key_list) if key_list else np.zeros(0, np.int64),
                  "scores": np.concatenate(score_list).reshape(-1, 2) if score_list else np.zeros((0, 2), np.float32)}
        number = self.next_part
        write_atomic(self.parts_dir / f"part-{number:06d}.npz", arrays)
        self.units.append(arrays["units"])
        self.keys.append(arrays["keys"])
        self.scores.append(arrays["scores"])
        self._pending = ([], [], [])
        self.next_part += 1
        return number

    def finished_units(self) -> set[int]:
        return set(np.concatenate(self.units).tolist()) if self.units else set()

    def sorted_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """All frame keys in input order and their scores."""
        if not self.keys:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        keys = np.concatenate(self.keys)
        scores = np.concatenate(self.scores).reshape(-1, 2)
        order = np.argsort(keys, kind="stable")
        return keys[order], scores[order]
