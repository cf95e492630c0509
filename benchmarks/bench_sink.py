"""Rank 0's sink at full size, and the bytes the exchange sends, before and after real-rows-only.

    python -m benchmarks.bench_sink [--quick]

1. Rank 0's sink (CPU proxy). Full-size dims: 3,328-d rows, the real MLP (3328 -> 512 -> BN -> ReLU
   -> 2). For world sizes 1-8, rank 0 is fed synthetic steps as the exchange delivers them (one
   unit of 128 chunks per rank; frames per chunk drawn from a translated metagenome-like input) and
   handles them on one thread; the classifier's forward is timed apart from the rest, the host-side
   work (goal <= 18 us a chunk).
     before: the old exchange and sink, as they were: every rank's fixed-size message (6 x 128 rows)
             stacked and copied to the host, then one forward per unit with its own host copy.
     after:  the engine's sink stage with predict's Collector: the exchange's header decoding, one
             forward per step over the step's rows, the scores' rows split per unit, the store.
2. Exchange bytes. `vnp predict` (tiny pack) under torchrun on 2 ranks, on the demo input and on a
   metagenome-like one: run.json's exchange_bytes and frames per rank, as rows per kept frame plus
   the header per unit; the fixed-size message it replaced, for the same runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DIM = 3328
UNIT_CHUNKS = 128
GOAL_US = 18.0


# ----------------------------------------------------------------------------- synthetic steps


def frames_per_chunk(scale: float) -> np.ndarray:
    """Kept frames of each chunk of a translated metagenome-like input (500 bp chunks)."""
    from benchmarks.bench_engine import write_metagenome
    from vnp.seq.frames import batched_chunks, translate_chunks
    from vnp.seq.seqio import iter_records

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.fa"
        write_metagenome(path, scale=scale)
        counts = [len(kept) for chunks in batched_chunks(iter_records(path), 500) for kept in translate_chunks(chunks)]
    return np.asarray(counts, dtype=np.int64)


def unit_keys(rng: np.random.Generator, per_chunk: np.ndarray, unit: int) -> np.ndarray:
    """Keys of one synthetic unit: each chunk keeps as many frames as a drawn real chunk."""
    counts = rng.choice(per_chunk, UNIT_CHUNKS)
    return np.concatenate([(unit * UNIT_CHUNKS + c) * 6 + np.sort(rng.choice(6, n, replace=False))
                           for c, n in enumerate(counts)]).astype(np.int64)


def make_steps(world: int, units: int, per_chunk: np.ndarray, pool: torch.Tensor) -> list[list[tuple[int, np.ndarray]]]:
    rng = np.random.default_rng(world)
    order = list(range(units))
    return [[(u, unit_keys(rng, per_chunk, u)) for u in order[i:i + world]] for i in range(0, units, world)]


def collector(tmp: Path, units: int):
    """predict's real Collector over a real store, on a stand-in run state."""
    from vnp.models.classifier import MLPClassifier
    from vnp.run.steps import Collector
    from vnp.run.store import ScoreStore

    torch.manual_seed(0)
    classifier = MLPClassifier().eval()
    n_chunks = units * UNIT_CHUNKS
    plan = SimpleNamespace(n_chunks=n_chunks, unit_range=lambda u, size: (u * size, min((u + 1) * size, n_chunks)))
    state = SimpleNamespace(folder=SimpleNamespace(embeddings=tmp / "emb"), store=ScoreStore(tmp / "parts"),
                            spec=SimpleNamespace(unit_chunks=UNIT_CHUNKS, remaining=list(range(units))), plan=plan)
    engine = SimpleNamespace(commit_every_s=30.0, commit_every_steps=64)
    config = SimpleNamespace(engine=engine, save_embeddings=False, progress=False)
    return Collector(state, config, SimpleNamespace(classifier=classifier), torch.device("cpu")), classifier


def after(world: int, steps, pool: torch.Tensor, tmp: Path) -> tuple[float, float, int]:
    """The engine's path on rank 0: decode the step's headers, pick fresh units, the sink stage."""
    from vnp.run.engine import SinkStage
    from vnp.run.exchange import Delivery, UnitRows, decode_keys, encode_header

    units = sum(len(s) for s in steps)
    sink, _ = collector(tmp, units)
    stage = SinkStage(sink, depth=4, device=torch.device("cpu"))
    words = -(-6 * UNIT_CHUNKS // 64)
    decode_s = 0.0
    delivered: set[int] = set()
    for step in steps:
        table = np.stack([encode_header(u, keys, False, words) for u, keys in step])  # other ranks' work
        rows = pool[:sum(len(k) for _, k in step)]  # received in place, rank order
        t0 = time.perf_counter()
        starts = np.concatenate([[0], np.cumsum(table[:, 1])[:-1]])
        unit_rows = [UnitRows(int(h[0]), decode_keys(h), int(s)) for h, s in zip(table, starts)]
        fresh = sorted((u for u in unit_rows if u.unit not in delivered), key=lambda u: u.unit)
        delivered.update(u.unit for u in fresh)
        decode_s += time.perf_counter() - t0
        stage._run(Delivery(unit_rows, rows), fresh)  # on this thread: the same work
    t0 = time.perf_counter()
    sink.close()
    close_s = time.perf_counter() - t0
    stage.pool.shutdown()
    return stage.forward_s, stage.other_s + decode_s + close_s, units * UNIT_CHUNKS


def before(world: int, steps, pool: torch.Tensor, tmp: Path) -> tuple[float, float, int]:
    """The old path on rank 0 (the code as it was before real-rows-only, on the same store)."""
    from vnp.models.classifier import score

    units = sum(len(s) for s in steps)
    sink, classifier = collector(tmp, units)
    rows_cap = 6 * UNIT_CHUNKS
    forward_s = other_s = 0.0
    for step in steps:
        metas, payloads = [], []
        for u, keys in step:  # what each rank posted: a padded meta row and a padded payload
            meta = torch.full((3 + rows_cap,), -1, dtype=torch.int64)
            meta[:3] = torch.tensor([u, len(keys), 0])
            meta[3:3 + len(keys)] = torch.from_numpy(keys)
            payload = torch.zeros((rows_cap, DIM))
            payload[:len(keys)] = pool[:len(keys)]
            metas.append(meta)
            payloads.append(payload)
        t0 = time.perf_counter()
        table = torch.stack(metas).cpu().numpy()
        embeddings = [payloads[0].cpu()] if world == 1 else list(torch.stack(payloads).cpu())
        results = []
        for meta, emb in zip(table, embeddings):
            unit, count = int(meta[0]), int(meta[1])
            results.append((unit, meta[3:3 + count].copy(), emb[:count].numpy()))
        results.sort(key=lambda r: r[0])
        for unit, keys, emb in results:  # the old Collector.consume, per unit
            t1 = time.perf_counter()
            with torch.inference_mode():
                probs = score(classifier, torch.from_numpy(emb).to(torch.device("cpu"))).cpu().numpy()
            forward_s += time.perf_counter() - t1
            sink.state.store.add(unit, keys, probs)
            sink.frames += len(keys)
            sink.chunks += sink._unit_chunks(unit)
            sink.bar.update(sink._unit_chunks(unit))
        sink.steps_since_commit += 1
        if sink.steps_since_commit >= sink.commit_every_steps or time.time() - sink.last_commit >= sink.commit_every_s:
            sink.commit()
        sink.progress.sample(sink.chunks, sink.frames)
        other_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    sink.close()
    other_s += time.perf_counter() - t0
    return forward_s, other_s - forward_s, units * UNIT_CHUNKS


def sink_benchmark(quick: bool) -> None:
    torch.set_num_threads(1)
    per_chunk = frames_per_chunk(0.1 if quick else 0.3)
    units = 16 if quick else 48
    pool = torch.randn(8 * 6 * UNIT_CHUNKS, DIM)
    print(f"rank 0's sink, full size ({DIM}-d rows, MLP {DIM}->512->2), {UNIT_CHUNKS}-chunk units, "
          f"{per_chunk.mean():.2f} kept frames a chunk ({1 - per_chunk.mean() / 6:.0%} of frames empty), "
          f"1 thread; us a chunk, host work besides the forward (forward):", flush=True)
    worst = 0.0
    for world in range(1, 9):
        steps = make_steps(world, units, per_chunk, pool)
        line = []
        for name, path in (("before", before), ("after", after)):
            with tempfile.TemporaryDirectory() as tmp:
                forward_s, other_s, chunks = path(world, steps, pool, Path(tmp))
            line.append(f"{name} {other_s / chunks * 1e6:6.1f} ({forward_s / chunks * 1e6:5.1f})")
            if name == "after":
                worst = max(worst, other_s / chunks * 1e6)
        print(f"  {world} rank(s): " + "   ".join(line), flush=True)
    print(f"  after: worst host work {worst:.1f} us a chunk (goal <= {GOAL_US:.0f})", flush=True)


# ----------------------------------------------------------------------------- exchange bytes


def exchange_benchmark(quick: bool) -> None:
    from benchmarks.bench_engine import write_metagenome
    from vnp.demo import write_example
    from vnp.run.exchange import HEADER

    unit_chunks = 16
    print(f"exchange bytes (vnp predict, tiny pack, 2 ranks under torchrun, batch.unit_chunks={unit_chunks}):",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo, meta = tmp / "demo.fa", tmp / "metagenome.fa"
        write_example(demo)
        write_metagenome(meta, scale=0.05 if quick else 0.15)
        for name, fasta in (("demo", demo), ("metagenome-like", meta)):
            out = tmp / name
            cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "vnp.predict", str(fasta),
                   "-o", str(out), "pack=tiny", "progress=false", "threads=1", f"batch.unit_chunks={unit_chunks}"]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            record = json.loads((out / "run.json").read_text())
            row = 4 * (record["models"]["dnabert_dim"] + record["models"]["esm_dim"])
            rows_cap = 6 * unit_chunks
            header = 8 * (HEADER + -(-rows_cap // 64))
            for rank in record["timings_s"]["per_rank"][1:]:  # rank 0 sends no rows
                steps, frames, sent = rank["steps"], rank["frames"], rank["exchange_bytes"]
                per_frame = (sent - steps * header) / max(frames, 1) / row
                old = steps * (8 * (3 + rows_cap) + rows_cap * row)
                print(f"  {name}: rank {rank['rank']} sent {sent:,} bytes for {frames} frames in {steps} steps: "
                      f"{per_frame:.3f} rows a frame + {header} bytes a unit (goal <= 1.15 rows); "
                      f"the fixed message sent {old:,} bytes, {old / max(frames, 1) / row:.2f} rows a frame; "
                      f"at 3,328-d rows and {UNIT_CHUNKS}-chunk units: "
                      f"{1 + 8 * (HEADER + 12) / max(frames / steps * UNIT_CHUNKS / unit_chunks, 1) / (4 * DIM):.4f} "
                      f"rows a frame, header included", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    sink_benchmark(quick)
    exchange_benchmark(quick)


if __name__ == "__main__":
    main()
