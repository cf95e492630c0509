"""Calibrated probabilities, the fdr column, call.max_fdr and presets, on synthetic finished runs
whose true P(virus | score) is known.

Every chunk has one frame (F1); its virus score s is drawn from Beta(4, 2) for chunks of viral
sequences and Beta(2, 4) otherwise (score1 = 1 - s). The likelihood ratio is s^2 / (1 - s)^2, so
at a viral share pi the true P(virus | s) = pi s^2 / (pi s^2 + (1 - pi) (1 - s)^2).
The folders are built through vnp's own packer and score store, as `vnp predict` leaves them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TABLES, child_env, tables
from vnp.call import call
from vnp.calibrate import calibrate
from vnp.config import PRESETS, PredictConfig, load_config, to_yaml
from vnp.plan import load_plan, pack_inputs
from vnp.results.calibration import estimated_fdr, load_calibration, select_by_fdr
from vnp.store import write_atomic

ROOT = Path(__file__).resolve().parents[1]
L = 30  # chunk length: short sequences, many chunks
VIRAL_BETA, OTHER_BETA = (4.0, 2.0), (2.0, 4.0)
# Tolerances, stated: the fitted chunk map is within MAX_ERROR of the true probability at every
# score of 0.05..0.95 and within MEAN_ERROR on average, from about 25,000 labelled chunks.
MAX_ERROR, MEAN_ERROR = 0.06, 0.02


def true_probability(s: np.ndarray, share: float) -> np.ndarray:
    viral, other = share * s ** 2, (1 - share) * (1 - s) ** 2
    return viral / (viral + other)


def synthetic_run(out: Path, n: int, share: float, seed: int, max_chunks: int = 4) -> np.ndarray:
    """A finished run of `n` sequences of 1..max_chunks chunks, a `share` of them viral; returns
    the true class per sequence (True = virus) and writes OUT/labels.tsv."""
    rng = np.random.default_rng(seed)
    virus = rng.random(n) < share
    chunks = rng.integers(1, max_chunks + 1, n)
    lengths = chunks * L - rng.integers(0, L // 2, n)  # the last chunk shorter
    out.mkdir(parents=True)
    fasta = out / "input.fa"
    letters = np.frombuffer(b"ACGT", np.uint8)
    with open(fasta, "w") as fh:
        for i, length in enumerate(lengths.tolist()):
            fh.write(f">s{i}\n{letters[rng.integers(0, 4, length)].tobytes().decode()}\n")
    work = out / "work"
    pack_inputs([fasta], work)
    plan = load_plan(work, L)
    assert plan.n_chunks == int(chunks.sum())
    chunk_virus = np.repeat(virus, chunks)
    s = np.where(chunk_virus, rng.beta(*VIRAL_BETA, plan.n_chunks), rng.beta(*OTHER_BETA, plan.n_chunks))
    scores = np.stack([1 - s, s], axis=1).astype(np.float32)
    (work / "parts").mkdir()
    write_atomic(work / "parts", 0, {"units": np.array([0]), "keys": np.arange(plan.n_chunks) * 6, "scores": scores})
    (work / "record.json").write_text(json.dumps({
        "inputs": [{"path": str(fasta)}], "chunk_length": L, "unit_chunks": plan.n_chunks,
        "filters": {"min_length": 0, "max_n_fraction": 1.0}}))
    (out / "config.yaml").write_text(to_yaml(PredictConfig()))
    (out / "run.json").write_text(json.dumps({"counts": {}}))
    (out / "labels.tsv").write_text("id\tlabel\n" + "".join(f"s{i}\t{'virus' if v else 'others'}\n"
                                                             for i, v in enumerate(virus.tolist())))
    return virus


def vnp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vnp.cli", *args], capture_output=True, text=True,
                          env=child_env(), cwd=ROOT, timeout=300)


def contigs(out: Path) -> list[dict[str, str]]:
    header, *rows = (out / "contigs.tsv").read_text().splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A calibration fitted on 10,000 sequences (about 25,000 chunks), 30% viral."""
    tmp = tmp_path_factory.mktemp("calibration")
    train = tmp / "train"
    synthetic_run(train, 10_000, 0.3, seed=1)
    path = tmp / "calibration.json"
    data = calibrate([(train, train / "labels.tsv")], path)
    return path, data, tmp


def test_the_chunk_map_recovers_the_true_probability(fitted):
    path, data, _ = fitted
    calibration = load_calibration(path)
    share = data["chunk"]["virus_share"]
    grid = np.linspace(0.05, 0.95, 91)
    error = np.abs(calibration.chunk.probability(grid) - true_probability(grid, share))
    assert error.max() <= MAX_ERROR and error.mean() <= MEAN_ERROR, (error.max(), error.mean())
