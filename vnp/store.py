"""Committed progress on rank 0: scores of finished work units, a few bytes per frame.

Rank 0 keeps, per frame, its global key (chunk * 6 + frame) and its two scores, and commits them in
parts: each part is written to a temporary file, fsynced, then renamed, and carries a checksum of
its bytes in its name. On resume a part that is truncated, corrupt or fails its checksum is deleted
and its units are computed again; a part is never trusted without its checksum.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

PART_GLOB = "part-*-*.npz"


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
        for path in sorted(self.parts_dir.glob(PART_GLOB)):
            self.next_part = max(self.next_part, part_number(path) + 1)
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

    def commit(self) -> int | None:
        """Write the pending units as one part; returns its number (None when nothing pending)."""
        units, key_list, score_list = self._pending
        if not units:
            return None
        arrays = {"units": np.asarray(units, dtype=np.int64),
                  "keys": np.concatenate(key_list) if key_list else np.zeros(0, np.int64),
                  "scores": np.concatenate(score_list).reshape(-1, 2) if score_list else np.zeros((0, 2), np.float32)}
        number = self.next_part
        write_atomic(self.parts_dir, number, arrays)
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
        self.keys, self.scores = [keys], [scores]  # one copy in memory, not two
        if len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1])):  # a run without resume arrives in order
            return keys, scores
        order = np.argsort(keys, kind="stable")
        return keys[order], scores[order]
