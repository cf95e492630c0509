"""The original's chunking rule: fixed-length chunks whose overlap is spread over the sequence.

A sequence of n bp becomes ceil(n / L) chunks. The original (VirNucPro `split_fasta_chunk`) spreads
the surplus `ceil(n/L)*L - n` as backward shifts between consecutive chunks, computing the shift
size as `int(surplus / n_chunks)` and handing out one extra base to the first few gaps. Because it
divides by the number of chunks rather than the number of gaps, the shifts often add up to less
than the surplus; the last chunk then runs past the end and keeps only what there is (shorter than
L). Example: n = 700, L = 500 gives chunks 1-500 and 350-700 (351 bp). We reproduce this exactly:
the published classifiers were trained and evaluated on these chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class ChunkSpan:
    """A chunk of one sequence: 0-based half-open [start, end) and its 1-based number."""

    number: int
    start: int
    end: int


def chunk_shifts(length: int, chunk_length: int) -> list[int]:
    """Backward shift applied after each chunk (the original's `final_low_up_numbers`)."""
    n_chunks = -(-length // chunk_length)
    surplus = n_chunks * chunk_length - length
    lower = int(surplus / n_chunks)
    n_upper = surplus - lower * (n_chunks - 1)
    shifts = [lower + 1] * n_upper + [lower] * (n_chunks - 1 - n_upper) + [0]
    return shifts[:n_chunks]


def chunk_starts(length: int, chunk_length: int) -> np.ndarray:
    """0-based start of every chunk of a sequence of `length` bp (empty for length 0)."""
    if chunk_length <= 0:
        raise ValueError(f"chunk length must be positive, got {chunk_length}")
    if length <= 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.asarray(chunk_shifts(length, chunk_length), dtype=np.int64)
    nominal = np.arange(len(shifts), dtype=np.int64) * chunk_length
    moved = np.concatenate(([0], np.cumsum(shifts)[:-1]))
    # The original shifts only when the nominal start is > 1, i.e. never the first chunk.
    return np.where(nominal > 1, nominal - moved, nominal)


def chunk_spans(length: int, chunk_length: int) -> list[ChunkSpan]:
    """All chunks of one sequence, in order."""
    starts = chunk_starts(length, chunk_length)
    return [ChunkSpan(k + 1, int(s), min(int(s) + chunk_length, length)) for k, s in enumerate(starts)]


def chunk_id(record_id: str, number: int) -> str:
    """The original's chunk ID: `{record_id}_chunk_{k}`, k from 1."""
    return f"{record_id}_chunk_{number}"
