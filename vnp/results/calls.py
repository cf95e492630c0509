"""Chunk and sequence calls from committed frame scores, with a confidence tier (`call.*` keys).

* A chunk's scores are the maxima over its frames: `max_other` (score1) and `max_virus` (score2).
  It is viral when max_virus >= max_other (the original's rule) and max_virus >= `call.min_score`
  (default 0: the original's rule alone).
* Its *margin* is max_virus - max(max_other, call.min_score): >= 0 exactly when the chunk is viral,
  and the further from 0 the clearer the call.
* A sequence is `virus` when at least `call.min_fraction` of its chunks with frames are viral,
  else `others`; `no_frames` when no chunk has a frame; `filtered` when an input filter left it out.
* Confidence of a virus/others call: the *supporting chunks* are those that agree with it (viral
  chunks for `virus`, the other chunks with frames for `others`) and the *margin* is the mean
  absolute margin of the supporting chunks. `high` when margin >= `call.high_margin` and at least
  `call.high_chunks` chunks support the call; `medium` when margin >= `call.medium_margin`;
  `low` otherwise; `NA` for no_frames and filtered.

Everything is computed with numpy over all chunks at once, so the cost is linear in the chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vnp.run.plan import ChunkPlan

LABELS = np.array(["others", "virus", "no_frames", "filtered"])
OTHERS, VIRUS, NO_FRAMES, FILTERED = range(4)
CONFIDENCE = np.array(["NA", "low", "medium", "high"])
NA, LOW, MEDIUM, HIGH = range(4)
# Scores are clipped to this before taking logs (a classifier may say exactly 0 or 1).
EPSILON = 1e-6


@dataclass
class ChunkScores:
    """Per chunk of the plan: frames scored and the maxima of their two scores (NaN without frames)."""

    frames: np.ndarray  # int64 [C]
    max_other: np.ndarray  # float32 [C]
    max_virus: np.ndarray  # float32 [C]

    @property
    def has_frames(self) -> np.ndarray:
        return self.frames > 0


def chunk_scores(n_chunks: int, keys: np.ndarray, scores: np.ndarray) -> ChunkScores:
    """Reduce frame scores (keys ascending, key = chunk * 6 + frame) to chunk maxima."""
    chunk_of = np.asarray(keys, dtype=np.int64) // 6
    frames = np.bincount(chunk_of, minlength=n_chunks).astype(np.int64)
    maxima = np.full((n_chunks, 2), np.nan, dtype=np.float32)
    if len(chunk_of):
        starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
        maxima[chunk_of[starts]] = np.maximum.reduceat(np.asarray(scores, dtype=np.float32), starts, axis=0)
    return ChunkScores(frames, maxima[:, 0], maxima[:, 1])


def chunk_margins(chunks: ChunkScores, min_score: float) -> np.ndarray:
    """max_virus - max(max_other, min_score) per chunk (float64; NaN without frames)."""
    return chunks.max_virus.astype(np.float64) - np.maximum(chunks.max_other.astype(np.float64), min_score)


def chunk_viral(margins: np.ndarray) -> np.ndarray:
    """The chunk call: margin >= 0 (False without frames, whose margin is NaN)."""
    return np.greater_equal(margins, 0.0, where=~np.isnan(margins), out=np.zeros(len(margins), dtype=bool))


def chunk_log_odds(chunks: ChunkScores, min_score: float) -> np.ndarray:
    """The segmentation's evidence: log(max_virus) - log(max(max_other, min_score)), >= 0 exactly
    for viral chunks; 0 (no evidence) for chunks without frames."""
    virus = np.clip(chunks.max_virus.astype(np.float64), EPSILON, 1.0)
    other = np.clip(np.maximum(chunks.max_other.astype(np.float64), min_score), EPSILON, 1.0)
    return np.where(chunks.has_frames, np.log(virus) - np.log(other), 0.0)


@dataclass
class SequenceCalls:
    """Per record of the plan."""

    chunks: np.ndarray  # int64: chunks in the plan
    with_frames: np.ndarray  # int64: chunks with at least one frame
    viral_chunks: np.ndarray  # int64
    fraction: np.ndarray  # float64: viral_chunks / with_frames (NaN without frames)
    max_virus: np.ndarray  # float64: max of the chunks' max_virus (NaN without frames)
    mean_virus: np.ndarray  # float64: mean of the chunks' max_virus (NaN without frames)
    label: np.ndarray  # int8: index into LABELS
    support: np.ndarray  # int64: chunks agreeing with the label
    margin: np.ndarray  # float64: mean |chunk margin| of the supporting chunks (NaN when none)
    confidence: np.ndarray  # int8: index into CONFIDENCE


def sequence_calls(plan: ChunkPlan, chunks: ChunkScores, viral: np.ndarray, margins: np.ndarray,
                   min_fraction: float, high_margin: float, high_chunks: int, medium_margin: float) -> SequenceCalls:
    n_records = plan.n_records
    counts = np.diff(plan.first_chunk)
    record = np.repeat(np.arange(n_records), counts)
    has = chunks.has_frames

    def per_record(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(record[mask], weights=weights[mask], minlength=n_records)

    with_frames = np.bincount(record[has], minlength=n_records).astype(np.int64)
    viral_chunks = np.bincount(record[viral], minlength=n_records).astype(np.int64)
    virus_scores = chunks.max_virus.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(with_frames > 0, viral_chunks / np.maximum(with_frames, 1), np.nan)
        mean_virus = np.where(with_frames > 0, per_record(virus_scores, has) / np.maximum(with_frames, 1), np.nan)
    max_virus = _record_max(virus_scores, has, plan.first_chunk)

    label = np.where(fraction >= min_fraction, VIRUS, OTHERS).astype(np.int8)
    label[with_frames == 0] = NO_FRAMES
    if plan.filtered is not None:
        label[plan.filtered != 0] = FILTERED
    is_virus = label[record] == VIRUS
    supports = has & (viral == is_virus)
    support = np.bincount(record[supports], minlength=n_records).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        margin = np.where(support > 0, per_record(np.abs(margins), supports) / np.maximum(support, 1), np.nan)
    confidence = np.full(n_records, LOW, dtype=np.int8)
    confidence[margin >= medium_margin] = MEDIUM
    confidence[(margin >= high_margin) & (support >= high_chunks)] = HIGH
    confidence[label >= NO_FRAMES] = NA
    return SequenceCalls(counts.astype(np.int64), with_frames, viral_chunks, fraction, max_virus, mean_virus,
                         label, support, margin, confidence)


def _record_max(values: np.ndarray, mask: np.ndarray, first_chunk: np.ndarray) -> np.ndarray:
    """Per record, the max of `values` over its chunks where `mask` (NaN when none)."""
    masked = np.where(mask, values, -np.inf)
    out = np.full(len(first_chunk) - 1, -np.inf)
    nonempty = np.flatnonzero(np.diff(first_chunk) > 0)
    if len(nonempty):
        out[nonempty] = np.maximum.reduceat(masked, first_chunk[nonempty])
    return np.where(np.isfinite(out), out, np.nan)
