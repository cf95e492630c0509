"""`vnp call` on synthetic finished runs of 250,000 and 1,000,000 sequences: time, memory, output size.

    python -m benchmarks.bench_call

A finished run is faked in OUT/work (packed sequences of 150-650 bp, index, IDs, run record and
committed score parts with three frames per chunk, 5% of chunks without frames; half the sequences
score viral, a tenth are chimeric), then `python -m vnp.call OUT` runs on it in a fresh process.
The 250,000-sequence run is the baseline: time and output per sequence should stay flat (linear).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vnp.support.config import PredictConfig, to_yaml
from vnp.run.store import write_atomic

L = 500
UNIT_CHUNKS = 65536


def fake_run(out: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    work = out / "work"
    (work / "parts").mkdir(parents=True)
    lengths = rng.integers(150, 651, n).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    ids = [f"contig_{i}" for i in range(n)]
    id_offsets = np.concatenate(([0], np.cumsum([len(i) + 1 for i in ids]))).astype(np.int64)
    np.savez(work / "index.npz", lengths=lengths, offsets=offsets, id_offsets=id_offsets,
             records_per_input=np.array([n // 2, n - n // 2]), n_bases=np.zeros(n, np.int64))
    np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, int(lengths.sum()))].tofile(work / "sequences.bin")
    (work / "ids.txt").write_text("".join(i + "\n" for i in ids))
    chunks = -(-lengths // L)
    n_chunks = int(chunks.sum())
    record_of = np.repeat(np.arange(n), chunks)
    kind = rng.integers(0, 20, n)  # 0-9 viral, 10-17 host, 18-19 chimeric (viral first chunk only)
    first = np.concatenate(([0], np.cumsum(chunks)[:-1]))
    viral = (kind[record_of] < 10) | ((kind[record_of] >= 18) & (np.arange(n_chunks) == first[record_of]))
    with_frames = rng.random(n_chunks) > 0.05
    chunk_of = np.repeat(np.flatnonzero(with_frames), 3)
    keys = chunk_of * 6 + np.tile([0, 1, 3], int(with_frames.sum()))
    virus = np.where(viral[chunk_of], rng.uniform(0.6, 1.0, len(keys)), rng.uniform(0.0, 0.4, len(keys)))
    scores = np.stack([1 - virus, virus], axis=1).astype(np.float32)
    units = -(-n_chunks // UNIT_CHUNKS)
    bounds = np.searchsorted(keys, np.arange(units + 1) * UNIT_CHUNKS * 6)
    for unit in range(units):
        lo, hi = bounds[unit], bounds[unit + 1]
        write_atomic(work / "parts", unit, {"units": np.array([unit]), "keys": keys[lo:hi], "scores": scores[lo:hi]})
    inputs = [{"path": "/data/sample_a.fa"}, {"path": "/data/sample_b.fa"}]
    (work / "record.json").write_text(json.dumps({"inputs": inputs, "chunk_length": L, "unit_chunks": UNIT_CHUNKS,
                                                  "filters": {"min_length": 0, "max_n_fraction": 1.0}}))
    (out / "config.yaml").write_text(to_yaml(PredictConfig()))
    (out / "run.json").write_text(json.dumps({"counts": {}}))


# `vnp call` in a fresh process that reports its peak RSS (VmHWM: ru_maxrss would include the
# parent's memory at fork time)
CALL = """
import sys
from vnp.call import main
code = main(sys.argv[1:])
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
sys.exit(code)
"""


def time_call(out: Path) -> tuple[float, float, float, int]:
    """Wall and CPU seconds of `vnp call OUT` (process start and imports included), its peak RSS
    (MiB) and the bytes it wrote. CPU time is the steadier measure on a shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CALL, str(out)], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.suffix in (".tsv", ".csv", ".bed",
                                                                                     ".gff3", ".fna"))
    return seconds, cpu, int(proc.stdout.split()[-1]) / 1024, size


def main(argv: list[str] | None = None) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (250_000, 1_000_000):
            out = Path(tmp) / f"run{n}"
            fake_run(out, n)
            results[n] = time_call(out)
            seconds, cpu, peak, size = results[n]
            counts = json.loads((out / "run.json").read_text())["counts"]
            print(f"vnp call, {n:,} sequences ({counts['chunks']:,} chunks, {counts['frames']:,} frames, "
                  f"{counts['regions']:,} regions): {seconds:.1f} s wall, {cpu:.1f} s CPU "
                  f"({1e6 * cpu / n:.1f} us/sequence), "
                  f"peak RSS {peak:.0f} MiB, {size / 2**20:.0f} MiB written ({size / n:.0f} bytes/sequence)")
            for path in out.iterdir():  # free the disk before the next size
                if path.is_file():
                    path.unlink()
    (_, t_small, m_small, s_small), (_, t_big, m_big, s_big) = results[250_000], results[1_000_000]
    print(f"vnp call: 4x the sequences took {t_big / t_small:.2f}x the CPU time (linear: 4), wrote "
          f"{s_big / s_small:.2f}x the bytes, peak RSS {m_big / m_small:.2f}x (process start and imports "
          "included in the time; the peak holds the committed scores, 16 bytes a frame, and per-chunk arrays)")


if __name__ == "__main__":
    main()
