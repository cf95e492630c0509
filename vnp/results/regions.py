"""Viral regions: each sequence's chunks, in coordinate order, segmented into viral and non-viral
stretches by a two-state model decoded exactly (`regions.*` keys).

Model. Each chunk with frames brings the evidence e = log(max_virus) - log(max(max_other,
call.min_score)) (>= 0 exactly when the chunk is viral); a chunk without frames brings none
(e = 0, missing evidence: it takes the state of its neighbours). A path of states s_1..s_n (1 =
viral) scores sum(e_k for viral k) - `regions.switch_penalty` * (number of state changes); the
first state is free. The Viterbi algorithm finds the best path exactly. Ties: a chunk keeps its
predecessor's state; at the end of a sequence viral wins (as the chunk rule's >=). A region of
one chunk inside non-viral ones thus needs e > 2 * switch_penalty, at an end e > switch_penalty.
Sequences without a chunk with frames have no regions.

Bases. Chunks overlap (the original's rule), so each base is given to one chunk: the overlap of
two consecutive chunks is cut at its midpoint, floor((start_next + end_prev) / 2) in 0-based
half-open coordinates; the first chunk owns from base 1, the last up to the sequence end. A run of
viral chunks spans the bases its chunks own, so regions never overlap and the chunks' territories
tile the sequence.

Then runs whose gap (bases between them) is at most `regions.merge_gap` are merged (the chunks
between them join the region), and regions shorter than `regions.min_length` bp are dropped.

Decoding runs over all sequences at once, one numpy step per chunk position (sequences sorted by
chunk count, so the active ones are a prefix): linear in the chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def viterbi(evidence: np.ndarray, first_chunk: np.ndarray, decided: np.ndarray, penalty: float) -> np.ndarray:
    """Best state (True = viral) of every chunk; records where `decided` is False are all False."""
    states = np.zeros(len(evidence), dtype=bool)
    counts = np.diff(first_chunk)
    order = np.flatnonzero(decided & (counts > 0))
    if not len(order):
        return states
    order = order[np.argsort(-counts[order], kind="stable")]  # longest first: active ones are a prefix
    firsts, lengths = first_chunk[order], counts[order]
    active = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")  # records with > k chunks
    keep_0 = np.zeros(len(evidence), dtype=bool)  # back pointers: state 0 at chunk k came from state 0
    keep_1 = np.zeros(len(evidence), dtype=bool)  # state 1 at chunk k came from state 1
    v0 = np.zeros(len(order))  # best score of a path ending non-viral / viral at the current chunk
    v1 = evidence[firsts].astype(np.float64)
    for k in range(1, len(active)):
        n = int(active[k])
        at = firsts[:n] + k
        stay_0, switch_0 = v0[:n], v1[:n] - penalty
        stay_1, switch_1 = v1[:n], v0[:n] - penalty
        keep_0[at], keep_1[at] = stay_0 >= switch_0, stay_1 >= switch_1
        v0[:n], v1[:n] = np.maximum(stay_0, switch_0), np.maximum(stay_1, switch_1) + evidence[at]
    state = v1 >= v0  # each record's final state (ties: viral)
    for k in range(len(active) - 1, -1, -1):
        n = int(active[k])
        at = firsts[:n] + k
        states[at] = state[:n]
        state[:n] = np.where(state[:n], keep_1[at], ~keep_0[at])
    return states


def territories(starts: np.ndarray, ends: np.ndarray, first_chunk: np.ndarray,
                lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bases each chunk owns, 0-based half-open: overlaps cut at their midpoints."""
    lo = np.zeros(len(starts), dtype=np.int64)
    lo[1:] = (starts[1:] + ends[:-1]) // 2
    counts = np.diff(first_chunk)
    has = counts > 0
    lo[first_chunk[:-1][has]] = 0
    hi = np.empty_like(lo)
    hi[:-1] = lo[1:]
    if len(hi):
        hi[first_chunk[1:][has] - 1] = lengths[has]
    return lo, hi


@dataclass
class Regions:
    """Viral regions, in input order: record, chunks first..last (inclusive, global indices) and
    bases start..end (0-based half-open)."""

    record: np.ndarray
    first: np.ndarray
    last: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.record)

    def take(self, mask: np.ndarray) -> "Regions":
        return Regions(*(getattr(self, f)[mask] for f in ("record", "first", "last", "start", "end")))


def find_regions(states: np.ndarray, first_chunk: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 merge_gap: int, min_length: int) -> Regions:
    """Runs of viral chunks, merged across gaps of <= merge_gap bp, then those >= min_length bp."""
    record = np.repeat(np.arange(len(first_chunk) - 1), np.diff(first_chunk))
    starts_record = np.zeros(len(states), dtype=bool)
    starts_record[first_chunk[:-1][np.diff(first_chunk) > 0]] = True
    previous = np.r_[False, states[:-1]] & ~starts_record
    following = np.r_[states[1:] & ~starts_record[1:], False]  # the next chunk is viral, same record
    first = np.flatnonzero(states & ~previous)
    last = np.flatnonzero(states & ~following)
    rec = record[first]
    if len(first):
        gap = lo[first[1:]] - hi[last[:-1]]
        joins = (rec[1:] == rec[:-1]) & (gap <= merge_gap)
        new = np.r_[True, ~joins]
        first, last, rec = first[new], last[np.r_[~joins, True]], rec[new]
    regions = Regions(rec, first, last, lo[first], hi[last])
    return regions.take(regions.end - regions.start >= min_length)


def region_scores(regions: Regions, virus: np.ndarray, has_frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and max of the chunks' max virus score over each region's chunks with frames."""
    if not len(regions):
        return np.zeros(0), np.zeros(0)
    values = np.where(has_frames, virus.astype(np.float64), 0.0)
    totals = np.r_[0.0, np.cumsum(values)]
    with_frames = np.r_[0, np.cumsum(has_frames)]
    n = with_frames[regions.last + 1] - with_frames[regions.first]
    mean = (totals[regions.last + 1] - totals[regions.first]) / np.maximum(n, 1)
    # max over [first, last]: reduceat over interleaved bounds, every other result
    masked = np.r_[np.where(has_frames, virus.astype(np.float64), -np.inf), -np.inf]
    bounds = np.column_stack([regions.first, regions.last + 1]).ravel()
    top = np.maximum.reduceat(masked, bounds)[::2]
    return mean, top
