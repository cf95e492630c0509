"""Scale model: projected parallel efficiency of `vnp predict` on 8, 64 and 256 GPUs, 5 Gbp metagenome.

    python -m benchmarks.bench_scale [--quick]

A projection, not a measurement: the rank-0 costs are measured on this machine's CPU, the GPU
speed is an assumption (stated below and printed), and nothing here ran on a GPU or a cluster.

Measured here:
  * the input mix: the metagenome-like mix of bench_engine chunked at 500 bp and translated by vnp:
    chunks per bp, kept frames and ESM tokens per chunk, and the padding of the GPU-size batches
    (benchmarks/bench_batches.py's functions);
  * rank 0's sink: host work a chunk besides the classifier's forward, at full size (3,328-d rows,
    the real MLP), with bench_sink's functions, at world sizes 8 and 32 (the larger is used);
  * the exchange: bytes a kept frame (one 3,328-d float32 row, 13,312 bytes; bench_sink checks on a
    real 2-rank run that exactly one row travels a kept frame) plus one header a unit, at its real
    size (vnp.run.exchange.encode_header);
  * the serial phases on rank 0 (GPUs idle), in us a chunk: packing the inputs, the cost pre-pass
    (shared out over the ranks, so divided by N), the end-of-run tables and report. From
    benchmarks/bench_serial.py's `serial_phase_costs`.

Assumed (printed with the table):
  * ESM2-3B on an H100: 85,000 ESM tokens/s (bf16, 64k-token batches), DNABERT-S 1/25 of that
    time a frame more (as bench_engine). H200: 1.1x (same 989 TFLOPS bf16 peak and power; the
    forward over 64k-token batches is compute-bound, so the 1.43x memory bandwidth helps only the
    memory-bound part: norms, softmax, element-wise; 1.1x is the generous end, and a faster GPU
    only brings rank 0's limit nearer).
  * Rank 0's link: 100 Gb/s InfiniBand at 80% of line rate (10 GB/s) for every row it receives
    (the rows from its own node's GPUs, over NVLink, counted against it too: conservative).
  * Start-up: 30 s on every rank at once (imports, rendezvous, DNABERT-S and the 6 GB ESM2-3B
    checkpoint from node-local disk or page cache to the GPU), the same for any N.
  * Rank 0's sink runs on its own thread beside rank 0's embedding, fully overlapped.

Model: time(N) = start-up + pack + tables + pre-pass / N + max(compute(N), sink, ingest), with
compute(N) the busiest rank's device time when the units (the GPU default size, whose costs are
drawn as windows of the measured mix) are dealt as vnp deals them (largest first, snake over the
ranks); sink = sink us a chunk x chunks; ingest = bytes to rank 0 / link. Efficiency =
time(1) / (N x time(N)). Rank 0 saturates at the N where the sink or the ingest takes as long
as the compute.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GBP = 5e9
CHUNK_LENGTH = 500
GPU_TOKENS = 65536  # the ESM budget an 80 GB card reaches (README: Batches sized to the memory)
ESM_TOKENS_PER_S = {"H100": 85_000.0, "H200": 85_000.0 * 1.1}
LINK_BYTES_PER_S = 100e9 / 8 * 0.8
STARTUP_S = 30.0
GPUS = (8, 64, 256)
GOAL = 0.90  # at 64 GPUs
MIX_CHUNKS = 4_234  # chunks of bench_engine's mix at scale 1


# ----------------------------------------------------------------------------- the model (pure)


@dataclass
class Workload:
    """What the projection needs, per chunk unless said otherwise."""

    chunks: int  # in the whole input
    gpu_s: float  # device seconds of one rank a chunk (both models)
    sink_s: float  # rank 0's host work a chunk (every rank's chunks pass through it)
    bytes: float  # sent to rank 0 a chunk
    link_bytes_per_s: float  # rank 0's ingest
    serial_s: float  # rank 0 alone, GPUs idle: packing and the end-of-run tables, whole run
    prepass_s: float  # the cost pre-pass, whole run on one rank (shared out over the ranks)
    startup_s: float
    unit_costs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # relative cost of each unit; empty: even


@dataclass
class Projection:
    gpus: int
    compute_s: float
    sink_s: float
    ingest_s: float
    other_s: float  # start-up, serial phases, pre-pass share
    total_s: float
    efficiency: float
    limit: str


def busiest_rank_share(unit_costs: np.ndarray, gpus: int) -> float:
    """The busiest rank's share of the total cost when units are dealt as the engine deals them:
    largest first, snake over the ranks, rank r taking every gpus-th unit from r (the sampler)."""
    from vnp.run.engine import snake

    if len(unit_costs) == 0 or gpus == 1:
        return 1.0 / gpus
    order = np.lexsort((np.arange(len(unit_costs)), -unit_costs))
    dealt = unit_costs[snake(list(order), gpus)]
    per_rank = np.bincount(np.arange(len(dealt)) % gpus, weights=dealt, minlength=gpus)
    return float(per_rank.max() / unit_costs.sum())


def project(work: Workload, gpus: int) -> Projection:
    compute = work.gpu_s * work.chunks * busiest_rank_share(work.unit_costs, gpus)
    sink = work.sink_s * work.chunks
    ingest = work.bytes * work.chunks / work.link_bytes_per_s if gpus > 1 else 0.0
    other = work.startup_s + work.serial_s + work.prepass_s / gpus
    loop = max(compute, sink, ingest)
    total = other + loop
    single = work.startup_s + work.serial_s + work.prepass_s + max(work.gpu_s * work.chunks, sink)
    limit = "GPUs" if loop == compute else "rank 0's sink" if loop == sink else "rank 0's ingest"
    return Projection(gpus, compute, sink, ingest, other, total, single / (gpus * total), limit)


def serial_budget(work: Workload, gpus: int, goal: float) -> float:
    """The most rank-0 serial seconds (packing + tables) that still give `goal` efficiency on `gpus`."""
    from dataclasses import replace

    lo, hi = 0.0, 1e7
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if project(replace(work, serial_s=mid), gpus).efficiency >= goal else (lo, mid)
    return lo


def saturation(work: Workload) -> dict[str, float]:
    """The GPU count at which rank 0's sink, or its ingest, takes as long as an even share of the
    compute (unit granularity aside): beyond it adding GPUs no longer shortens the loop."""
    return {"sink": work.gpu_s / work.sink_s if work.sink_s else float("inf"),
            "ingest": work.gpu_s * work.link_bytes_per_s / work.bytes if work.bytes else float("inf")}


# ----------------------------------------------------------------------------- measurements


@dataclass
class Mix:
    chunks_per_bp: float
    frames: np.ndarray  # kept frames of each chunk, input order
    tokens: np.ndarray  # ESM tokens of each chunk's kept frames
    padding: float  # padded / real ESM tokens - 1 at the GPU unit and budget


def measure_mix(scale: float) -> Mix:
    from benchmarks.bench_batches import fill, frame_tokens
    from benchmarks.bench_engine import write_metagenome
    from vnp.models.batches import token_batches
    from vnp.models.memory import unit_chunks_for
    from vnp.seq.seqio import iter_records

    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "metagenome.fa"
        write_metagenome(fasta, scale=scale)
        bp = sum(len(r.seq) for r in iter_records(fasta))
        per_chunk = frame_tokens(fasta)
    padding = fill(per_chunk, unit_chunks_for(GPU_TOKENS, CHUNK_LENGTH), GPU_TOKENS, token_batches)["padding"]
    return Mix(len(per_chunk) / bp, np.array([len(c) for c in per_chunk]), np.array([sum(c) for c in per_chunk]), padding)


def unit_costs(tokens: np.ndarray, units: int, unit_chunks: int, seed: int = 0) -> np.ndarray:
    """ESM tokens of `units` units of `unit_chunks` consecutive chunks, each a window of the measured
    mix at a random start (wrapping around), so units keep the mix's runs of dense and empty chunks."""
    rng = np.random.default_rng(seed)
    cumulative = np.concatenate(([0], np.cumsum(np.tile(tokens, -(-unit_chunks // len(tokens)) + 1))))
    starts = rng.integers(0, len(tokens), units)
    return (cumulative[starts + unit_chunks] - cumulative[starts]).astype(np.float64)


def measure_sink(frames: np.ndarray, worlds: tuple[int, ...], units_per_rank: int) -> dict[int, float]:
    """Rank 0's sink, host work besides the forward, us a chunk, with bench_sink's path."""
    import torch

    from benchmarks.bench_sink import DIM, UNIT_CHUNKS, after, make_steps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for world in (1, *worlds):  # world 1 warms up (first allocations, the store's first part)
            pool = torch.randn(int(world * UNIT_CHUNKS * min(6, 2 * frames.mean() + 1)), DIM)
            steps = make_steps(world, world * units_per_rank, frames, pool)
            times = []
            for _ in range(2):  # the least of two: the load of a shared machine only adds
                with tempfile.TemporaryDirectory() as tmp:
                    _, other_s, chunks = after(world, steps, pool, Path(tmp))
                times.append(other_s / chunks * 1e6)
            result[world] = min(times)
        return {world: result[world] for world in worlds}
    finally:
        torch.set_num_threads(threads)


def exchange_bytes_per_chunk(frames_per_chunk: float, unit_chunks: int) -> float:
    """Rows of the kept frames plus the unit's header as vnp encodes it (one header a unit reaches
    rank 0 in the all_gather)."""
    from benchmarks.bench_sink import DIM
    from vnp.run.exchange import encode_header

    header = encode_header(0, np.arange(6 * unit_chunks, dtype=np.int64), False, -(-6 * unit_chunks // 64)).nbytes
    return frames_per_chunk * 4 * DIM + header / unit_chunks


def serial_costs(n_chunks: int) -> tuple[dict[str, float], str]:
    from benchmarks.bench_serial import serial_phase_costs

    return serial_phase_costs(n_chunks), "bench_serial"


# ----------------------------------------------------------------------------- the report


def workload(mix: Mix, sink_us: float, serial: dict[str, float], tokens_per_s: float) -> Workload:
    from benchmarks.bench_engine import DNABERT_FRAME_SPEEDUP
    from vnp.models.memory import unit_chunks_for

    chunks = round(GBP * mix.chunks_per_bp)
    unit = unit_chunks_for(GPU_TOKENS, CHUNK_LENGTH)
    gpu_s = mix.tokens.mean() * (1 + mix.padding) / tokens_per_s * (1 + 1 / DNABERT_FRAME_SPEEDUP)
    return Workload(chunks=chunks, gpu_s=gpu_s, sink_s=sink_us * 1e-6,
                    bytes=exchange_bytes_per_chunk(mix.frames.mean(), unit), link_bytes_per_s=LINK_BYTES_PER_S,
                    serial_s=(serial["pack_us"] + serial["tables_us"]) * 1e-6 * chunks,
                    prepass_s=serial["costs_us"] * 1e-6 * chunks, startup_s=STARTUP_S,
                    unit_costs=unit_costs(mix.tokens, -(-chunks // unit), unit))


def show(name: str, work: Workload) -> None:
    sat = saturation(work)
    at = int(min(sat.values()))
    print(f"  {name}: {work.gpu_s * 1e3:.2f} ms of device time a chunk, {work.gpu_s * work.chunks / 3600:.0f} GPU-hours "
          f"in all; rank 0 saturates at ~{sat['sink']:.0f} GPUs (sink) and ~{sat['ingest']:.0f} GPUs (ingest)", flush=True)
    print("     GPUs   compute s   sink s  ingest s  other s   total s  efficiency  limit", flush=True)
    for gpus in sorted({*GPUS, at}):
        p = project(work, gpus)
        print(f"    {gpus:5d}  {p.compute_s:9.0f}  {p.sink_s:7.0f}  {p.ingest_s:8.0f}  {p.other_s:7.0f}  {p.total_s:8.0f}"
              f"  {p.efficiency:9.1%}   {p.limit}" + ("   (rank 0 saturated)" if gpus == at else ""), flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    from vnp.models.memory import unit_chunks_for

    mix = measure_mix(2.5 if quick else 10.0)
    sink = measure_sink(mix.frames, (8, 32), 2 if quick else 4)
    serial, source = serial_costs(10_000 if quick else 40_000)
    unit = unit_chunks_for(GPU_TOKENS, CHUNK_LENGTH)
    chunks = round(GBP * mix.chunks_per_bp)
    print(f"scale model, {GBP / 1e9:.0f} Gbp metagenome-like input: {chunks:,} chunks of {CHUNK_LENGTH} bp "
          f"({len(mix.frames):,} measured), {mix.frames.mean():.2f} kept frames and {mix.tokens.mean():.0f} ESM tokens "
          f"a chunk, padding {mix.padding:.2%}; {-(-chunks // unit):,} units of {unit:,} chunks", flush=True)
    print(f"  measured on this CPU: rank 0's sink {', '.join(f'{us:.1f} us a chunk at {w} ranks' for w, us in sink.items())}; "
          f"serial phases ({source}): pack {serial['pack_us']:.1f}, cost pre-pass {serial['costs_us']:.1f} (over N ranks), "
          f"tables {serial['tables_us']:.1f} us a chunk; exchange "
          f"{exchange_bytes_per_chunk(mix.frames.mean(), unit):,.0f} bytes a chunk to rank 0", flush=True)
    print(f"  assumed: ESM2-3B {ESM_TOKENS_PER_S['H100']:,.0f} tokens/s on an H100, {ESM_TOKENS_PER_S['H200']:,.0f} on an "
          f"H200 (1.1x), DNABERT-S +4%; rank 0's link {LINK_BYTES_PER_S / 1e9:.0f} GB/s (100 Gb/s IB at 80%); "
          f"start-up {STARTUP_S:.0f} s; the sink overlapped with rank 0's own embedding", flush=True)
    for gpu, rate in ESM_TOKENS_PER_S.items():
        work = workload(mix, max(sink.values()), serial, rate)
        show(gpu, work)
        ok = project(work, 64).efficiency >= GOAL
        budget = serial_budget(work, 64, GOAL)
        print(f"    {gpu} at 64 GPUs: {project(work, 64).efficiency:.1%} (goal >= {GOAL:.0%}: "
              f"{'met' if ok else 'missed'}); of the 'other' seconds, packing + tables take {work.serial_s:.0f} s "
              f"({work.serial_s / work.chunks * 1e6:.1f} us a chunk); {GOAL:.0%} at 64 GPUs needs them under "
              f"{budget:.0f} s ({budget / work.chunks * 1e6:.1f} us a chunk)", flush=True)


if __name__ == "__main__":
    main()
