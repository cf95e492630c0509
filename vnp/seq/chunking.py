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


def chunk_starts(length: int, chunk_length: int) -> np.ndarray:
    """0-based start of every chunk of a sequence of `length` bp (empty for length 0)."""
    return chunk_bounds(np.asarray([length], dtype=np.int64), chunk_length)[0]


def chunk_bounds(lengths: np.ndarray, chunk_length: int,
                 counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """0-based starts and (exclusive) ends of the chunks of many sequences, back to back.

    `counts` gives each sequence's number of chunks: ceil(n / L) (the default) or 0 (a sequence
    left out of the plan). Closed form of the original's backward shifts (`final_low_up_numbers`:
    `lower + 1` n_upper times, then `lower`): the first k shifts add up to
    k * lower + min(k, n_upper), so chunk k starts at k * (L - lower) - min(k, n_upper) (the
    original does not shift the first chunk, whose nominal start is 0).
    """
    if chunk_length <= 0:
        raise ValueError(f"chunk length must be positive, got {chunk_length}")
    lengths = np.asarray(lengths, dtype=np.int64)
    natural = -(-lengths // chunk_length)
    counts = natural if counts is None else np.asarray(counts, dtype=np.int64)
    record = np.repeat(np.arange(len(lengths)), counts)
    k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    n = natural[record]
    surplus = n * chunk_length - lengths[record]
    lower = surplus // n
    n_upper = surplus - lower * (n - 1)
    starts = k * (chunk_length - lower) - np.minimum(k, n_upper)
    return starts, np.minimum(starts + chunk_length, lengths[record])


def chunk_spans(length: int, chunk_length: int) -> list[ChunkSpan]:
    """All chunks of one sequence, in order."""
    starts = chunk_starts(length, chunk_length)
    return [ChunkSpan(k + 1, int(s), min(int(s) + chunk_length, length)) for k, s in enumerate(starts)]


CHUNK_SEP = "_chunk_"  # between the record ID and the chunk's number in a chunk ID


def chunk_id(record_id: str, number: int) -> str:
    """The original's chunk ID: `{record_id}_chunk_{k}`, k from 1."""
    return f"{record_id}{CHUNK_SEP}{number}"


def parse_chunk_id(name: str) -> tuple[str, int] | None:
    """(record ID, k) of a name of `chunk_id`'s form, else None. A record ID may itself end like a
    chunk ID, so the caller decides which reading holds for its run."""
    record_id, sep, number = name.rpartition(CHUNK_SEP)
    return (record_id, int(number)) if sep and number.isdigit() else None
