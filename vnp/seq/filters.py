"""Input filters (`filter.min_length`, `filter.max_n_fraction`): sequences that fail get no chunks
in the plan, so they are never translated or embedded; contigs.tsv lists them as `filtered`.

The number of N bases of every record is counted once, while the inputs are packed (index.npz);
the filter settings are part of the run record, since they change the work units.
"""

from __future__ import annotations

import numpy as np

KEPT, TOO_SHORT, TOO_MANY_N = 0, 1, 2


def filter_codes(lengths: np.ndarray, n_bases: np.ndarray, filters: dict | None) -> np.ndarray:
    """Per record: KEPT, TOO_SHORT or TOO_MANY_N (length is checked first)."""
    codes = np.zeros(len(lengths), dtype=np.int8)
    if not filters:
        return codes
    min_length, max_n = int(filters.get("min_length", 0)), float(filters.get("max_n_fraction", 1.0))
    if max_n < 1.0:
        too_many = n_bases > max_n * np.maximum(lengths, 1)  # N / length > max_n, without dividing by 0
        codes[too_many] = TOO_MANY_N
    codes[lengths < min_length] = TOO_SHORT
    return codes


def reason(code: int, length: int, n_bases: int, filters: dict) -> str:
    """Why a record was filtered, for contigs.tsv (empty when it was kept)."""
    if code == TOO_SHORT:
        return f"length {length} < filter.min_length {filters['min_length']}"
    if code == TOO_MANY_N:
        return f"N fraction {n_bases / max(length, 1):.3f} > filter.max_n_fraction {filters['max_n_fraction']}"
    return ""
