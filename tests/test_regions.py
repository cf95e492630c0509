"""The segmentation into viral regions and the calls' confidence, on crafted score series."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from vnp.results import calls as vcalls
from vnp.seq.chunking import chunk_bounds, chunk_spans
from vnp.run.plan import ChunkPlan
from vnp.results.regions import find_regions, territories, viterbi

MISSING = None  # a chunk without frames


def segment(series: list[list[float | None]], penalty: float = 3.0, merge_gap: int = 0, min_length: int = 0,
            chunk_bp: int = 100) -> list[list[tuple[int, int]]]:
    """Regions (1-based first and last chunk of each) per sequence; chunks own `chunk_bp` bases each."""
    counts = [len(s) for s in series]
    first_chunk = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    flat = [x for s in series for x in s]
    evidence = np.array([0.0 if x is None else x for x in flat])
    decided = np.array([any(x is not None for x in s) for s in series], dtype=bool)
    states = viterbi(evidence, first_chunk, decided, penalty)
    k = np.arange(len(flat)) - np.repeat(first_chunk[:-1], counts)
    regions = find_regions(states, first_chunk, k * chunk_bp, (k + 1) * chunk_bp, merge_gap, min_length)
    out: list[list[tuple[int, int]]] = [[] for _ in series]
    for r, first, last in zip(regions.record, regions.first, regions.last):
        out[r].append((int(first - first_chunk[r]) + 1, int(last - first_chunk[r]) + 1))
    return out


def test_known_region_in_the_middle():
    assert segment([[-5, -5, 5, 5, 5, -5, -5]]) == [[(3, 5)]]


def test_one_weak_chunk_needs_twice_the_penalty_inside_and_once_at_an_end():
    assert segment([[-5, 5.9, -5]]) == [[]]  # 5.9 < 2 * 3
    assert segment([[-5, 6.1, -5]]) == [[(2, 2)]]
    assert segment([[-5, -5, 3.1]]) == [[(3, 3)]]  # at the end one switch suffices
    assert segment([[2.9, -5, -5]]) == [[]]


def test_gaps_split_or_merge():
    series = [[6, 6, -7, 6, 6]]
    assert segment(series) == [[(1, 2), (4, 5)]]
    assert segment(series, merge_gap=99) == [[(1, 2), (4, 5)]]  # the gap is 100 bp
    assert segment(series, merge_gap=100) == [[(1, 5)]]
    assert segment([[6, 6, -1, 6, 6]]) == [[(1, 5)]]  # a weak dip does not pay two switches
    three = [[7, -8, -8, -8, 7, -8, 7]]  # gaps of 300 bp, then 100 bp: each measured from its own run
    assert segment(three) == [[(1, 1), (5, 5), (7, 7)]]
    assert segment(three, merge_gap=100) == [[(1, 1), (5, 7)]]


def test_missing_chunks_take_their_neighbours_state():
    assert segment([[5, MISSING, MISSING, 5]]) == [[(1, 4)]]
    assert segment([[MISSING, 5, 5, MISSING]]) == [[(1, 4)]]
    assert segment([[-5, MISSING, -5]]) == [[]]
    assert segment([[MISSING, MISSING]]) == [[]]  # nothing to decide on


def test_sequence_ends_and_one_chunk_sequences():
    assert segment([[0.01], [-0.01], [0.0], [5, 5], [-5, 5]]) == [[(1, 1)], [], [(1, 1)], [(1, 2)], [(2, 2)]]


def test_a_sequence_without_chunks_has_no_state_even_when_decided():
    """Sequences without chunks (filtered ones) anywhere, the last one included, are left out."""
    states = viterbi(np.asarray([2.0, 2.0]), np.asarray([0, 0, 1, 1, 2, 2]), np.ones(5, bool), 3.0)
    assert states.tolist() == [True, True]


def test_min_length_drops_short_regions():
    assert segment([[-9, 9, -9, 9, 9, 9]], min_length=250) == [[(4, 6)]]


def test_sequences_decoded_together_equal_each_alone():
    rng = random.Random(3)
    series = [[rng.choice([None, rng.uniform(-6, 6)]) for _ in range(rng.randint(1, 12))] for _ in range(60)]
    assert segment(series) == [segment([s])[0] for s in series]


def best_path_score(evidence: list[float], penalty: float) -> float:
    return max(sum(e for e, s in zip(evidence, path) if s) - penalty * sum(a != b for a, b in zip(path, path[1:]))
               for path in itertools.product([0, 1], repeat=len(evidence)))


def test_viterbi_is_exact_against_every_path():
    rng = random.Random(7)
    for _ in range(200):
        evidence = [rng.uniform(-4, 4) for _ in range(rng.randint(1, 9))]
        penalty = rng.choice([0.0, 1.0, 3.0])
        states = viterbi(np.array(evidence), np.array([0, len(evidence)]), np.array([True]), penalty)
        path = states.astype(int).tolist()
        score = sum(e for e, s in zip(evidence, path) if s) - penalty * sum(a != b for a, b in zip(path, path[1:]))
        assert score == pytest.approx(best_path_score(evidence, penalty))


def test_territories_tile_each_sequence_within_its_chunks():
    lengths = np.array([1001, 0, 700, 500, 1, 2345, 999], dtype=np.int64)
    starts, ends = chunk_bounds(lengths, 500)
    counts = -(-lengths // 500)
    first_chunk = np.concatenate(([0], np.cumsum(counts)))
    lo, hi = territories(starts, ends, first_chunk, lengths)
    for r, n in enumerate(lengths.tolist()):
        c0, c1 = first_chunk[r], first_chunk[r + 1]
        assert [(s.start, s.end) for s in chunk_spans(n, 500)] == list(zip(starts[c0:c1], ends[c0:c1]))
        if n:
            assert lo[c0] == 0 and hi[c1 - 1] == n and (lo[c0 + 1:c1] == hi[c0:c1 - 1]).all()
            assert (starts[c0:c1] <= lo[c0:c1]).all() and (hi[c0:c1] <= ends[c0:c1]).all()
    # 1001 bp: chunks 1-500, 334-833, 667-1001; overlaps cut at their midpoints
    assert (lo[:3].tolist(), hi[:3].tolist()) == ([0, 416, 749], [416, 749, 1001])


def tiny_plan(counts: list[int]) -> ChunkPlan:
    counts = np.array(counts, dtype=np.int64)
    return ChunkPlan(counts * 500, np.zeros(len(counts), np.int64), np.concatenate(([0], np.cumsum(counts))), 500,
                     id_offsets=np.zeros(len(counts) + 1, np.int64), records_per_input=np.array([len(counts)]))


def test_calls_and_confidence_rule():
    # per chunk (max other, max virus); NaN = no frames
    chunks = [(0.1, 0.9), (0.2, 0.95),  # a: two strong viral chunks -> virus, high
              (0.1, 0.9),  # b: one strong chunk -> virus, medium (high needs 2 chunks)
              (0.45, 0.55), (0.6, 0.4),  # c: half viral, margins 0.1 -> virus, low
              (0.9, 0.1), (0.8, 0.3), (0.3, 0.7),  # d: others by 2 of 3, margin (0.8 + 0.5) / 2 -> high
              (np.nan, np.nan)]  # e: no frames
    plan = tiny_plan([2, 1, 2, 3, 1])
    scores = vcalls.ChunkScores(np.array([0 if np.isnan(a) else 6 for a, _ in chunks]),
                                np.array([a for a, _ in chunks], np.float32),
                                np.array([b for _, b in chunks], np.float32))
    margins = vcalls.chunk_margins(scores, 0.0)
    viral = vcalls.chunk_viral(margins)
    assert viral.tolist() == [True, True, True, True, False, False, False, True, False]
    calls = vcalls.sequence_calls(plan, scores, viral, margins, 0.5, 0.5, 2, 0.2)
    assert vcalls.LABELS[calls.label].tolist() == ["virus", "virus", "virus", "others", "no_frames"]
    assert vcalls.CONFIDENCE[calls.confidence].tolist() == ["high", "medium", "low", "high", "NA"]
    assert calls.support.tolist() == [2, 1, 1, 2, 0]
    # a stricter chunk cutoff: 0.92 leaves one viral chunk in a, none in b; min_fraction 1 needs all
    margins = vcalls.chunk_margins(scores, 0.92)
    viral = vcalls.chunk_viral(margins)
    assert viral.tolist() == [False, True, False, False, False, False, False, False, False]
    calls = vcalls.sequence_calls(plan, scores, viral, margins, 1.0, 0.5, 2, 0.2)
    assert vcalls.LABELS[calls.label].tolist() == ["others", "others", "others", "others", "no_frames"]
    log_odds = vcalls.chunk_log_odds(scores, 0.92)
    assert ((log_odds >= 0) == viral)[:-1].all() and log_odds[-1] == 0


def test_chunk_maxima_over_frames_and_record_values_over_chunks_with_frames():
    keys = np.asarray([0, 3, 5, 6 * 2 + 1, 6 * 2 + 4, 6 * 3], np.int64)  # chunk 1 has no frame
    frame_scores = np.asarray([[0.2, 0.5], [0.1, 0.7], [0.3, 0.6], [0.6, 0.1], [0.5, 0.4], [0.1, 0.9]], np.float32)
    scores = vcalls.chunk_scores(4, keys, frame_scores)
    assert scores.frames.tolist() == [3, 0, 2, 1]
    assert np.allclose(scores.max_other, [0.3, np.nan, 0.6, 0.1], equal_nan=True)
    assert np.allclose(scores.max_virus, [0.7, np.nan, 0.4, 0.9], equal_nan=True)
    plan = tiny_plan([2, 1, 1])  # record 0: a chunk with frames and one without
    margins = vcalls.chunk_margins(scores, 0.0)
    viral = vcalls.chunk_viral(margins)
    calls = vcalls.sequence_calls(plan, scores, viral, margins, 0.5, 10.0, 1, float(margins[0]))
    assert calls.with_frames.tolist() == [1, 1, 1] and calls.viral_chunks.tolist() == [1, 0, 1]
    assert np.allclose(calls.max_virus, scores.max_virus[[0, 2, 3]])
    assert np.allclose(calls.mean_virus, scores.max_virus[[0, 2, 3]])
    # record 0's margin equals medium_margin: medium; record 1 (others) by 0.2, record 2 by 0.8
    assert vcalls.CONFIDENCE[calls.confidence].tolist() == ["medium", "low", "medium"]


def test_a_record_without_chunks_has_no_scores_wherever_it_lies():
    """A record left out of the plan (a filtered one: no chunks) first, between others or last has
    NaN scores, never those of the next record's chunks."""
    scores = vcalls.ChunkScores(np.array([6, 6]), np.array([0.2, 0.3], np.float32), np.array([0.7, 0.9], np.float32))
    margins = vcalls.chunk_margins(scores, 0.0)
    calls = vcalls.sequence_calls(tiny_plan([0, 1, 0, 1, 0]), scores, vcalls.chunk_viral(margins), margins,
                                  0.5, 0.5, 2, 0.2)
    expected = np.array([np.nan, 0.7, np.nan, 0.9, np.nan])
    assert np.allclose(calls.max_virus, expected, equal_nan=True)
    assert np.allclose(calls.mean_virus, expected, equal_nan=True)


def test_region_scores_are_over_the_chunks_with_frames_of_each_region():
    from vnp.results.regions import Regions, region_scores

    virus = np.asarray([0.7, 0.1, 0.9, 0.8, 0.2, 0.6, 0.95], np.float32)  # the first region's highest: its last
    has = np.asarray([True, False, True, True, False, True, True])
    first, last = np.asarray([0, 3, 5, 6]), np.asarray([2, 4, 5, 6])  # regions of 3, 2, 1 and 1 chunks
    regions = Regions(np.zeros(4, np.int64), first, last, first * 10, last * 10 + 10)
    mean, top = region_scores(regions, virus, has)
    for i, (a, b) in enumerate(zip(first, last)):
        chosen = [float(v) for v, h in zip(virus[a:b + 1], has[a:b + 1]) if h]
        assert mean[i] == pytest.approx(sum(chosen) / len(chosen)) and top[i] == pytest.approx(max(chosen))
    empty = region_scores(regions.take(np.zeros(4, bool)), virus, has)
    assert [len(x) for x in empty] == [0, 0]
