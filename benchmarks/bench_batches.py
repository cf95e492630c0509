"""ESM2 batch fill on a metagenome-like mix: the batching rule and the unit sizes of vnp.

    python -m benchmarks.bench_batches [--scale 10]

The mix of benchmarks/bench_engine.py (GC-rich, coding-like and non-coding contigs, short reads, a
few long records), chunked at 500 bp and six-frame translated by vnp; each work unit's kept frames
are batched alone (a unit is batched only with itself), as `vnp predict` batches them. Per setting:
mean fill (padded tokens / budget, over batches), the share of batches under half the budget, and
padding (padded / real ESM tokens - 1). Goal: fill >= 90%, < 5% under half, padding < 1%.

  before: the old rule (greedy: fill each batch from the longest left), CPU default 2,048 tokens x
          128-chunk units, and the old GPU default 8,192 tokens x 128-chunk units;
  after:  vnp.models.batches.token_batches at the CPU default and at 65,536 tokens with the GPU
          default unit size (vnp.models.memory.unit_chunks_for).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.bench_engine import write_metagenome
from vnp.models.batches import token_batches
from vnp.models.memory import CPU_TOKENS, CPU_UNIT_CHUNKS, unit_chunks_for
from vnp.seq.seqio import iter_records
from vnp.seq.frames import batched_chunks, translate_chunks

CHUNK_LENGTH = 500
GPU_TOKENS = 65536


def greedy_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """The rule before: length-sorted, each batch filled from the longest left."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, start = [], 0
    while start < len(order):
        size = max(1, max_tokens // lengths[order[start]])
        batches.append(order[start:start + size])
        start += size
    return batches


def frame_tokens(fasta: Path) -> list[list[int]]:
    """ESM tokens (residues + 2) of each chunk's kept frames, chunk by chunk in input order."""
    per_chunk = []
    for chunks in batched_chunks(iter_records(fasta), CHUNK_LENGTH):
        per_chunk += [[len(f.protein) + 2 for f in frames] for frames in translate_chunks(chunks)]
    return per_chunk


def fill(per_chunk: list[list[int]], unit_chunks: int, budget: int, batcher) -> dict:
    fills, real, padded, seconds = [], 0, 0, 0.0
    for start in range(0, len(per_chunk), unit_chunks):
        lengths = [n for chunk in per_chunk[start:start + unit_chunks] for n in chunk]
        t0 = time.perf_counter()
        batches = batcher(lengths, budget)
        seconds += time.perf_counter() - t0
        for batch in batches:
            tokens = len(batch) * max(lengths[i] for i in batch)
            fills.append(tokens / budget)
            padded += tokens
            real += sum(lengths[i] for i in batch)
    return {"batches": len(fills), "fill": sum(fills) / len(fills), "under_half": sum(f < 0.5 for f in fills) / len(fills),
            "padding": padded / real - 1, "ms_per_unit": 1000 * seconds / -(-len(per_chunk) // unit_chunks)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="records x 600")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "metagenome.fa"
        write_metagenome(fasta, scale=args.scale)
        per_chunk = frame_tokens(fasta)
    tokens = sum(map(sum, per_chunk))
    print(f"metagenome-like mix: {len(per_chunk)} chunks of {CHUNK_LENGTH} bp, {sum(map(len, per_chunk))} kept frames, "
          f"{tokens} ESM tokens ({tokens / len(per_chunk):.0f} a chunk)")
    gpu_unit = unit_chunks_for(GPU_TOKENS, CHUNK_LENGTH)
    settings = [("before", "CPU default", CPU_UNIT_CHUNKS, CPU_TOKENS, greedy_batches),
                ("before", "old GPU default", 128, 8192, greedy_batches),
                ("before", "GPU 65,536, 128-chunk units", 128, GPU_TOKENS, greedy_batches),
                ("after", "CPU default", CPU_UNIT_CHUNKS, CPU_TOKENS, token_batches),
                ("after", "GPU 65,536, GPU default unit", gpu_unit, GPU_TOKENS, token_batches)]
    for when, name, unit, budget, batcher in settings:
        s = fill(per_chunk, unit, budget, batcher)
        ok = s["fill"] >= 0.9 and s["under_half"] < 0.05 and s["padding"] < 0.01
        print(f"  {when:6s} {name:30s} {unit:5d} chunks/unit x {budget:6d} tokens: {s['batches']:5d} batches, "
              f"fill {s['fill']:.1%}, under half {s['under_half']:.1%}, padding {s['padding']:.2%} "
              f"({s['ms_per_unit']:.1f} ms a unit to batch) {'goal met' if ok else 'goal missed'}", flush=True)


if __name__ == "__main__":
    main()
