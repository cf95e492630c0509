"""Rank 0's serial phases of `vnp predict`, in us of CPU a chunk: packing, the cost estimate, the tables.

    python -m benchmarks.bench_serial [N_CHUNKS]     (default 2,000,000)

While rank 0 packs the inputs and writes the tables, every GPU waits; the cost estimate ran on
every rank before any GPU work. A synthetic metagenome (contigs of 150-1,500 bp, 500-bp chunks,
1% N, some lowercase) is packed (`pack_inputs`),
the engine's cost estimate is taken for every unit the new way (`FrameWork.costs`'s stop scan of
the letters, `ChunkPlan.tokens`) and the old way (reading and translating the units' chunks, the
baseline, timed on a sample of units in the same run; both give the same numbers), then a finished run's tables are written (three scored frames a chunk,
5% of chunks without frames, `write_tables` as at the end of predict, the per-frame table included).

`serial_phase_costs(n_chunks)` returns the numbers for other benchmarks (benchmarks/bench_scale.py).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vnp.models.esm import MAX_RESIDUES
from vnp.results.tables import write_tables
from vnp.run.plan import load_plan, pack_inputs, read_chunks
from vnp.seq.frames import translate_chunks
from vnp.support.config import PredictConfig

L = 500
UNIT_CHUNKS = 4096
BASELINE_UNITS = 24  # units translated for the baseline (~100,000 chunks)


def write_random_contigs(path: Path, n_chunks: int, seed: int = 0) -> None:
    """Contigs of 150-1,500 bp of random letters adding up to about `n_chunks` chunks of L bp,
    generated in numpy (millions of chunks in seconds); not bench_engine's `write_metagenome`,
    whose coding-like mix sets the frames and tokens the scale model uses."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(150, 1501, int(n_chunks / 2.0) + 16)
    lengths = lengths[:np.searchsorted(np.cumsum(-(-lengths // L)), n_chunks) + 1]
    letters = np.frombuffer(b"ACGTacgtN", np.uint8)[rng.choice(9, int(lengths.sum()), p=[.2475] * 4 + [.0] * 4 + [.01])]
    lower = rng.random(len(lengths)) < 0.1  # a tenth of the contigs soft-masked
    ends = np.cumsum(lengths)
    with open(path, "wb") as fh:
        for i, (start, end) in enumerate(zip((ends - lengths).tolist(), ends.tolist())):
            seq = letters[start:end].tobytes()
            fh.write(b">contig_%d\n%s\n" % (i, seq.lower() if lower[i] else seq))


def translated_costs(plan, sequences: Path, units: list[int]) -> np.ndarray:
    """The cost estimate before: every unit's chunks read and translated, kept frames' tokens counted."""
    return np.asarray([sum(min(len(f.protein), MAX_RESIDUES) + 2 for kept in translate_chunks(
        read_chunks(plan, sequences, *plan.unit_range(u, UNIT_CHUNKS))) for f in kept) for u in units], np.float64)


def scanned_costs(plan, sequences: Path, units: list[int]) -> np.ndarray:
    """The cost estimate now (FrameWork.costs for predict)."""
    return np.asarray([plan.tokens(sequences, *plan.unit_range(u, UNIT_CHUNKS)).sum(dtype=np.int64) for u in units],
                      np.float64)


def fake_scores(n_chunks: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Three scored frames a chunk (F1, F2, R1), 5% of chunks without frames, half the chunks viral."""
    rng = np.random.default_rng(seed)
    with_frames = np.flatnonzero(rng.random(n_chunks) > 0.05)
    keys = np.repeat(with_frames, 3) * 6 + np.tile([0, 1, 3], len(with_frames))
    viral = np.repeat(rng.random(len(with_frames)) < 0.5, 3)
    virus = np.where(viral, rng.uniform(0.6, 1.0, len(keys)), rng.uniform(0.0, 0.4, len(keys)))
    return keys.astype(np.int64), np.stack([1 - virus, virus], axis=1).astype(np.float32)


def cpu() -> float:
    return time.process_time()


def serial_phase_costs(n_chunks: int) -> dict[str, float]:
    """us of CPU a chunk: "pack_us" (rank 0's packing), "costs_us" (the cost estimate now, shared
    out over the ranks), "costs_translate_us" (before: the baseline), "tables_us" (rank 0's tables
    at the end of predict); "chunks", the chunks measured."""
    with tempfile.TemporaryDirectory() as tmp:
        fasta, work, out = Path(tmp) / "meta.fa", Path(tmp) / "out" / "work", Path(tmp) / "out"
        write_random_contigs(fasta, n_chunks)
        t0 = cpu()
        pack_inputs([fasta], work)
        pack_s = cpu() - t0
        fasta.unlink()
        plan = load_plan(work, L)
        chunks, sequences = plan.n_chunks, work / "sequences.bin"
        units = list(range(plan.n_units(UNIT_CHUNKS)))
        t0 = cpu()
        new = scanned_costs(plan, sequences, units)
        costs_s = cpu() - t0
        sample = units[::max(1, len(units) // BASELINE_UNITS)][:BASELINE_UNITS]
        t0 = cpu()
        old = translated_costs(plan, sequences, sample)
        translate_s = cpu() - t0
        assert old.tolist() == new[sample].tolist(), "the scanned costs differ from the translated ones"
        sampled = sum(np.diff(plan.unit_range(u, UNIT_CHUNKS))[0] for u in sample)
        keys, scores = fake_scores(chunks)
        t0 = cpu()
        write_tables(out, plan, keys, scores, PredictConfig(), ["meta.fa"])
        tables_s = cpu() - t0
    per = 1e6 / chunks
    return {"chunks": chunks, "pack_us": pack_s * per, "costs_us": costs_s * per,
            "costs_translate_us": translate_s * 1e6 / sampled, "tables_us": tables_s * per}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 2_000_000
    r = serial_phase_costs(n)
    print(f"serial phases, {r['chunks']:,} chunks of {L} bp (us of CPU a chunk): packing {r['pack_us']:.2f}, "
          f"cost estimate {r['costs_us']:.2f} (translating, the baseline: {r['costs_translate_us']:.2f}, "
          f"{r['costs_translate_us'] / r['costs_us']:.1f}x; both shared out over the ranks), "
          f"tables {r['tables_us']:.2f} (10M chunks: {r['tables_us'] * 10:.0f} s)")


if __name__ == "__main__":
    main()
