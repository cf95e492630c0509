"""Calibrated probabilities and estimated false discovery rates from vnp's scores.

vnp's scores are softmax outputs of a classifier trained on balanced frames, not the probability
that a chunk or sequence of *your* sample is viral. `vnp calibrate` fits, from finished runs and
their true labels, a monotone map from the scores to P(virus):

* **Chunks**: isotonic regression of the true label on the chunk's max virus score (`max_score2`).
  One score, so the only assumption is that a higher score means viral at least as often.
* **Sequences**: a logistic regression combines five features of the sequence's chunk scores
  (`SEQUENCE_FEATURES`: logit of the mean and of the max chunk virus score, the share of viral chunks, the
  log of the chunks with frames, and logit(mean) x log(chunks), since evidence grows with the chunks
  that agree) into one linear score; isotonic regression of the label on that score then gives the
  probability. The logistic model ranks (it uses every feature and is fitted with few parameters);
  the isotonic step calibrates without assuming the logistic model is right. A logistic model alone
  would be miscalibrated wherever its linear form is wrong; isotonic alone has no single score to
  order sequences of different lengths by.

The features use the original's chunk rule (viral when max_virus >= max_other), never the run's
`call.*` settings, so the probabilities do not change when the calls do.

The probabilities hold for a sample with the calibration set's share of viral items
(`virus_share` in the file). For a sample with another share pi, `call.prior=pi` moves each
probability by the odds ratio: odds' = odds x [pi / (1 - pi)] / [share / (1 - share)] (exact when
only the share differs, i.e. the scores of each class are distributed as in the calibration set).

For sequences called virus, the estimated FDR of a sequence is the mean of 1 - p over every called
sequence whose p is at least its own; `call.max_fdr=q` calls virus the largest such set whose
estimated FDR is <= q (the mean of 1 - p over a set taken by decreasing p only grows, so that set is
one cutoff on p).

Everything applied at call time is numpy (np.interp over the isotonic points); scikit-learn is
imported only to fit.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vnp.results import calls as vcalls
from vnp.support.errors import InputError
from vnp.run.plan import ChunkPlan

CALIBRATION_FORMAT = "vnp-calibration/1"
SEQUENCE_FEATURES = ("logit_mean_virus", "logit_max_virus", "fraction_viral", "log_chunks", "logit_mean_x_log_chunks")
MIN_PER_CLASS = 50  # labelled items of each class a level needs, at least
FOLDS = 5  # out-of-fold reliability: each item predicted by a map fitted without its fold
ECE_BINS = 10  # equal-width probability bins of the expected calibration error
MAX_FILE_BYTES = 64 << 20


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), vcalls.EPSILON, 1.0 - vcalls.EPSILON)
    return np.log(p) - np.log1p(-p)


# --- features --------------------------------------------------------------------------------
def chunk_feature(chunks: vcalls.ChunkScores) -> tuple[np.ndarray, np.ndarray]:
    """(max virus score per chunk (float64), chunks with frames)."""
    return chunks.max_virus.astype(np.float64), chunks.has_frames


def sequence_features(plan: ChunkPlan, chunks: vcalls.ChunkScores) -> tuple[np.ndarray, np.ndarray]:
    """(SEQUENCE_FEATURES per record, float64 [R, 5]; records with at least one chunk with frames)."""
    n_records = plan.n_records
    record = np.repeat(np.arange(n_records), np.diff(plan.first_chunk))
    has = chunks.has_frames
    viral = has & (chunks.max_virus >= chunks.max_other)  # the original's rule, in float32
    with_frames = np.bincount(record[has], minlength=n_records)
    usable = with_frames > 0
    n = np.maximum(with_frames, 1)
    virus = chunks.max_virus.astype(np.float64)
    mean = np.bincount(record[has], weights=virus[has], minlength=n_records) / n
    top = np.nan_to_num(vcalls.record_max(virus, has, plan.first_chunk))
    fraction = np.bincount(record[viral], minlength=n_records) / n
    log_chunks = np.log(n)
    features = np.stack([logit(mean), logit(top), fraction, log_chunks, logit(mean) * log_chunks], axis=1)
    return features, usable


# --- the fitted maps -------------------------------------------------------------------------
@dataclass
class LevelMap:
    """score -> P(virus) at one level: linear score (sequences) or the score itself (chunks), then
    linear interpolation between the centred isotonic points (constant beyond the ends)."""

    weights: np.ndarray | None  # [len(SEQUENCE_FEATURES)] for sequences; None for chunks
    bias: float
    steps_x: np.ndarray  # increasing scores: the mean score of each isotonic block
    steps_y: np.ndarray  # increasing probabilities (the blocks' shares of virus), never exactly 0 or 1
    virus_share: float  # of the labelled items the map was fitted on

    def score(self, x: np.ndarray) -> np.ndarray:
        return x if self.weights is None else x @ self.weights + self.bias

    def probability(self, x: np.ndarray) -> np.ndarray:
        return np.interp(self.score(x), self.steps_x, self.steps_y)


def fit_map(x: np.ndarray, y: np.ndarray, linear: bool) -> LevelMap:
    """Fit one level: `x` the score [N] (chunks) or the features [N, F] (sequences); `y` 0/1."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    weights, bias = None, 0.0
    if linear:
        center, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0  # a constant feature (e.g. every sequence one chunk) gets weight 0
        model = LogisticRegression(C=1.0, max_iter=1000).fit((x - center) / scale, y)
        weights = model.coef_[0] / scale  # the same linear score, on the raw features
        bias = float(model.intercept_[0] - (weights * center).sum())
    score = x if weights is None else x @ weights + bias
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(score, y)
    # Centred isotonic regression: one point per block of equal fitted value, at the mean score of
    # its items, joined by straight lines. Plain isotonic steps are flat over each block, so a
    # whole block (often thousands of items at the top) would share one probability and the
    # max_fdr cutoff could only stop at block edges.
    levels, block = np.unique(fitted, return_inverse=True)
    centres = np.bincount(block, weights=score) / np.bincount(block)
    n = len(y)  # no probability of exactly 0 or 1 from a finite set: at most n/(n+1)
    steps_y = np.clip(levels, 1.0 / (n + 1), n / (n + 1.0))
    return LevelMap(weights, bias, centres, steps_y, float(np.mean(y)))


def out_of_fold(x: np.ndarray, y: np.ndarray, linear: bool, seed: int = 0) -> np.ndarray:
    """Each item's probability from a map fitted on the other folds (stratified, shuffled)."""
    from sklearn.model_selection import StratifiedKFold

    p = np.empty(len(y))
    for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        p[test] = fit_map(x[train], y[train], linear).probability(x[test])
    return p


def reliability(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error (bin-weighted |mean p - share virus| over equal-width bins),
    Brier score and the bins themselves (the reliability diagram)."""
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, weights=p, minlength=bins) / np.maximum(count, 1)
    share = np.bincount(which, weights=y, minlength=bins) / np.maximum(count, 1)
    ece = float(np.sum(count * np.abs(mean_p - share)) / len(p))
    rows = [{"low": i / bins, "high": (i + 1) / bins, "items": int(count[i]), "mean_probability": float(mean_p[i]),
             "virus_share": float(share[i])} for i in range(bins) if count[i]]
    return {"ece": ece, "brier": float(np.mean((p - y) ** 2)), "bins": rows}


def check_level(level: str, y: np.ndarray) -> None:
    virus = int(y.sum())
    others = len(y) - virus
    if min(virus, others) < MIN_PER_CLASS:
        missing = " (one class is missing)" if min(virus, others) == 0 else ""
        raise InputError(f"calibration: {len(y)} labelled {level}s with scores ({virus} virus, {others} others)"
                         f"{missing}; at least {MIN_PER_CLASS} of each class are needed")


def fit_level(level: str, x: np.ndarray, y: np.ndarray) -> dict:
    """The JSON entry of one level: its map, its class balance and its out-of-fold reliability."""
    check_level(level, y)
    linear = level == "sequence"
    fitted = fit_map(x, y, linear)
    entry = {"items": int(len(y)), "virus": int(y.sum()), "virus_share": fitted.virus_share}
    if linear:
        entry["features"] = list(SEQUENCE_FEATURES)
        entry["weights"] = fitted.weights.tolist()
        entry["bias"] = fitted.bias
    else:
        entry["score"] = "max_virus_score"
    entry["steps_x"] = fitted.steps_x.tolist()
    entry["steps_y"] = fitted.steps_y.tolist()
    entry["out_of_fold"] = reliability(out_of_fold(x, y, linear), y.astype(np.float64))
    return entry


# --- the file --------------------------------------------------------------------------------
@dataclass
class Calibration:
    path: Path
    sha256: str
    chunk: LevelMap
    sequence: LevelMap
    data: dict  # the whole file, for the report


def file_record(calibration: Calibration) -> dict:
    """What run.json records of the calibration behind the probabilities."""
    return {"path": str(calibration.path.resolve()), "sha256": calibration.sha256}


def _level_map(path: Path, data: dict, level: str) -> LevelMap:
    def bad(what: str) -> InputError:
        return InputError(f"{path}: not a valid vnp calibration ({level}: {what})")

    entry = data.get(level)
    if not isinstance(entry, dict):
        raise bad("missing")
    try:
        x = np.asarray(entry["steps_x"], dtype=np.float64)
        y = np.asarray(entry["steps_y"], dtype=np.float64)
        share = float(entry["virus_share"])
        weights = None if level == "chunk" else np.asarray(entry["weights"], dtype=np.float64)
        bias = 0.0 if level == "chunk" else float(entry["bias"])
    except (KeyError, TypeError, ValueError) as err:
        raise bad(f"{type(err).__name__}: {err}") from None
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise bad("steps_x and steps_y must be lists of the same, non-zero length")
    if not (np.all(np.isfinite(x)) and np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
            and np.all((y > 0) & (y < 1))):
        raise bad("the steps must be finite, increasing, with probabilities strictly between 0 and 1")
    if not 0.0 < share < 1.0:
        raise bad(f"virus_share must be between 0 and 1, got {share}")
    if weights is not None and (weights.shape != (len(SEQUENCE_FEATURES),) or not np.all(np.isfinite(weights))
                                or not math.isfinite(bias) or entry.get("features") != list(SEQUENCE_FEATURES)):
        raise bad(f"expected finite weights for the features {', '.join(SEQUENCE_FEATURES)}")
    return LevelMap(weights, bias, x, y, share)


def load_calibration(path: str | Path) -> Calibration:
    """A calibration.json written by `vnp calibrate`, checked; InputError names the file."""
    from vnp.support.paths import regular_file

    path = regular_file(path, "calibration file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: calibration file is larger than {MAX_FILE_BYTES >> 20} MiB")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a vnp calibration file (not JSON: {err})") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise InputError(f"{path}: not a vnp calibration file (expected \"format\": \"{CALIBRATION_FORMAT}\"; write one with "
                         "vnp calibrate)")
    return Calibration(path, hashlib.sha256(raw).hexdigest(), _level_map(path, data, "chunk"),
                       _level_map(path, data, "sequence"), data)


# --- applying it ------------------------------------------------------------------------------
def with_prior(p: np.ndarray, share: float, prior: float) -> np.ndarray:
    """Probabilities fitted at a viral share `share`, for a sample whose share is `prior` (0: as fitted)."""
    if not prior:
        return p
    shift = math.log(prior / (1 - prior)) - math.log(share / (1 - share))
    return 1.0 / (1.0 + np.exp(-(logit(p) + shift)))


def probabilities(calibration: Calibration, plan: ChunkPlan, chunks: vcalls.ChunkScores,
                  prior: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """P(virus) per chunk and per record (float64, NaN where there is no score)."""
    score, has = chunk_feature(chunks)
    chunk_p = np.full(len(score), np.nan)
    chunk_p[has] = with_prior(calibration.chunk.probability(score[has]), calibration.chunk.virus_share, prior)
    features, usable = sequence_features(plan, chunks)
    record_p = np.full(plan.n_records, np.nan)
    record_p[usable] = with_prior(calibration.sequence.probability(features[usable]),
                                  calibration.sequence.virus_share, prior)
    return chunk_p, record_p


def running_fdr(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For p sorted decreasing: the estimated FDR of calling each item with those before it, the
    mean of 1 - p over the items with a p at least its own (a tie enters whole: its items share
    their value), and the last index of each item's tie group."""
    means = np.cumsum(1.0 - p) / np.arange(1, len(p) + 1)
    ends = np.searchsorted(-p, -p, side="right") - 1  # last index of each item's tie group
    return means[ends], ends


def estimated_fdr(p: np.ndarray, called: np.ndarray) -> np.ndarray:
    """Per record: the estimated FDR of the called set down to its p (NaN where not called)."""
    fdr = np.full(len(p), np.nan)
    rows = np.flatnonzero(called & ~np.isnan(p))
    order = rows[np.argsort(-p[rows], kind="stable")]
    fdr[order] = running_fdr(p[order])[0]
    return fdr


def select_by_fdr(p: np.ndarray, max_fdr: float) -> np.ndarray:
    """The largest set, by decreasing p, whose estimated FDR is <= max_fdr (a cutoff on p)."""
    rows = np.flatnonzero(~np.isnan(p))
    ordered = np.sort(p[rows])[::-1]
    fdr, _ = running_fdr(ordered)
    within = np.flatnonzero(fdr <= max_fdr)  # a prefix: the running mean only grows
    if not len(within):
        return np.zeros(len(p), dtype=bool)
    return np.greater_equal(p, ordered[within[-1]], where=~np.isnan(p), out=np.zeros(len(p), dtype=bool))
