"""The unit engine at GPU speed without a GPU: busy share per rank for 1, 2 and 4 ranks.

    python -m benchmarks.bench_engine [--quick]

The real `vnp predict` pipeline (packing, chunk plan, translation, tokenization, dealing, exchange
over gloo between real torchrun processes, classification, commits, tables) runs with the tiny pack;
only the two model forwards are replaced by sleeps proportional to their padded tokens, at measured
GPU speeds: ESM2-3B ~95,000 tokens/s, DNABERT-S ~25x faster per frame. Sleeping releases the CPU,
so 4 ranks fit on a 2-core machine.

Compared in the same run:
  before: engine.balance=false engine.prefetch=0 engine.window=1 engine.commit_every_steps=1
          (input-order dealing, no overlap, wait every step, commit every step: the old loop)
  after:  the defaults (cost-ordered dealing, prefetch 1, window 4, commits every 64 steps / 30 s)
Input: a metagenome-like mix (GC-rich contigs with all six frames open, coding-like contigs with
one, random non-coding contigs with none, short reads, long records), and an adversarial file where
every 4th unit is dense and the rest empty (input-order dealing on 4 ranks gives rank 0 all the
work), against the same records shuffled.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vnp.demo import coding_like, random_dna

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
ESM_TOKENS_PER_S = 95_000.0
DNABERT_FRAME_SPEEDUP = 25.0  # DNABERT-S embeds a frame ~25x faster than ESM2-3B
UNIT_CHUNKS = 16
BEFORE = ["engine.balance=false", "engine.prefetch=0", "engine.window=1", "engine.commit_every_steps=1"]
AFTER: list[str] = []


# ----------------------------------------------------------------------------- inputs


def gc_rich(rng: random.Random, length: int) -> str:
    """G/C only: no stop codon in any of the six frames (the densest chunks)."""
    return "".join(rng.choices("GC", k=length))


def mixed_contig(rng: random.Random, length: int) -> str:
    """Segments of dense, coding-like and non-coding sequence, as a real contig mixes them."""
    parts, total = [], 0
    while total < length:
        size = min(length - total, rng.choice([500, 1500, 4000]))
        kind = rng.random()
        parts.append(gc_rich(rng, size) if kind < 0.2 else coding_like(rng, size) if kind < 0.6 else random_dna(rng, size))
        total += size
    return "".join(parts)


def write_metagenome(path: Path, seed: int = 0, scale: float = 1.0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(int(600 * scale)):
            kind = rng.random()
            if kind < 0.5:  # short reads, a third of them coding
                length = rng.randint(150, 300)
                seq = coding_like(rng, length) if rng.random() < 0.33 else random_dna(rng, length)
            elif kind < 0.97:
                seq = mixed_contig(rng, rng.randint(1_000, 8_000))
            else:  # a few long records
                seq = mixed_contig(rng, rng.randint(20_000, 50_000))
            fh.write(f">m{i}\n{seq}\n")


def write_adversarial(path: Path, units: int, ranks: int = 4, shuffle: bool = False, seed: int = 1) -> None:
    """One record per unit (UNIT_CHUNKS x 500 bp): every `ranks`-th dense, the rest without frames."""
    rng = random.Random(seed)
    length = UNIT_CHUNKS * 500
    records = [(f"a{i}", gc_rich(rng, length) if i % ranks == 0 else random_dna(rng, length)) for i in range(units)]
    if shuffle:
        random.Random(seed + 1).shuffle(records)
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))


# ----------------------------------------------------------------------------- the worker


def patch_forwards(dnabert_tokens_per_s: float) -> None:
    """Replace both model forwards by sleeps proportional to their padded tokens."""
    import torch

    from vnp.models.dnabert import DnabertEmbedder
    from vnp.models.esm import EsmEmbedder

    def sleeper(tokens_per_s: float):
        def run(self, prepared):
            tokens = sum(int(batch[1].numel()) for batch in prepared.batches)  # rows x padded length
            time.sleep(tokens / tokens_per_s)
            return torch.zeros((prepared.rows, self.dim), dtype=torch.float32)
        return run

    EsmEmbedder.run = sleeper(ESM_TOKENS_PER_S)
    DnabertEmbedder.run = sleeper(dnabert_tokens_per_s)


def worker(argv: list[str]) -> int:
    patch_forwards(float(os.environ["VNP_BENCH_DNABERT_TOKENS_PER_S"]))
    from vnp.predict import main as predict_main

    return predict_main(argv)


# ----------------------------------------------------------------------------- the runs


def dnabert_tokens_per_s(fasta: Path) -> float:
    """DNABERT-S speed in its own tokens such that a frame costs 1/25 of its ESM time: the ratio of
    the two models' tokens per frame, measured on this input with the tiny pack's tokenizers."""
    from vnp.models.pack import build_tiny_pack
    from vnp.models.dnabert import load_dnabert
    from vnp.models.esm import load_esm
    from vnp.seq.seqio import iter_records
    from vnp.seq.frames import batched_chunks, translate_chunks

    with tempfile.TemporaryDirectory() as tmp:
        pack = build_tiny_pack(Path(tmp))
        dnabert, esm = load_dnabert(pack.dnabert), load_esm(pack.esm)
    frames = []
    for chunks in batched_chunks(iter_records(fasta), 500):
        frames += [f for kept in translate_chunks(chunks) for f in kept]
        if len(frames) > 2000:
            break
    ratio = sum(dnabert.token_lengths([f.nucleotide for f in frames])) / sum(esm.token_lengths([f.protein for f in frames]))
    return ESM_TOKENS_PER_S * DNABERT_FRAME_SPEEDUP * ratio


def predict(ranks: int, fasta: Path, out: Path, extra: list[str], dnabert_speed: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env.update(PYTHONPATH=str(ROOT), VNP_BENCH_DNABERT_TOKENS_PER_S=str(dnabert_speed), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m"] if ranks == 1 else \
        [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m"]
    cmd = [*launcher, "benchmarks.bench_engine", "--worker", str(fasta), "-o", str(out), "pack=tiny", "progress=false",
           "threads=1", f"batch.unit_chunks={UNIT_CHUNKS}", *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "run.json").read_text())


def summary(record: dict) -> dict:
    ranks = record["timings_s"]["per_rank"]
    busy = [r["busy_s"] / max(r["loop_s"], 1e-9) for r in ranks]
    loop = record["timings_s"]["embed_loop_s"]
    return {"busy": busy, "loop_s": loop, "frames_per_s": record["counts"]["frames"] / loop,
            "wait": [r["wait_s"] / max(r["loop_s"], 1e-9) for r in ranks]}


def show(name: str, ranks: int, s: dict, base: float | None) -> None:
    busy = " ".join(f"{b:.0%}" for b in s["busy"])
    scale = f", {s['frames_per_s'] / base:.2f}x one rank" if base else ""
    print(f"  {name:6s} {ranks} rank(s): busy {busy} (mean {sum(s['busy']) / len(s['busy']):.0%}), "
          f"loop {s['loop_s']:.1f} s, {s['frames_per_s']:.0f} frames/s{scale}", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        sys.exit(worker(argv[1:]))
    scale = 0.3 if "--quick" in argv else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mixed = tmp / "metagenome.fa"
        write_metagenome(mixed, scale=scale)
        speed = dnabert_tokens_per_s(mixed)
        print(f"engine (forwards as sleeps: ESM2-3B {ESM_TOKENS_PER_S:.0f} tokens/s, DNABERT-S {speed:.0f} tokens/s; "
              f"unit_chunks={UNIT_CHUNKS}, gloo, {os.cpu_count()} cores)")
        results = {}
        for name, extra in (("before", BEFORE), ("after", AFTER)):
            base = None
            for ranks in (1, 2, 4):
                s = summary(predict(ranks, mixed, tmp / f"{name}{ranks}", extra, speed))
                base = base or s["frames_per_s"]
                results[name, ranks] = s
                show(name, ranks, s, base)
        for name in ("before", "after"):
            mean4 = sum(results[name, 4]["busy"]) / 4
            print(f"  {name}: 4-rank busy share {mean4:.0%} (goal >= 92%), 4-rank throughput "
                  f"{results[name, 4]['frames_per_s'] / results[name, 1]['frames_per_s']:.2f}x one rank (goal >= 3.6x)")
        units = int(160 * scale)
        adversarial, shuffled = tmp / "adversarial.fa", tmp / "shuffled.fa"
        write_adversarial(adversarial, units)
        write_adversarial(shuffled, units, shuffle=True)
        for name, extra in (("before", BEFORE), ("after", AFTER)):
            bad = summary(predict(4, adversarial, tmp / f"adv-{name}", extra, speed))
            good = summary(predict(4, shuffled, tmp / f"shuf-{name}", extra, speed))
            print(f"  {name}: adversarial order {bad['loop_s']:.1f} s vs shuffled {good['loop_s']:.1f} s on 4 ranks: "
                  f"{bad['loop_s'] / good['loop_s']:.2f}x (goal <= 1.15x)", flush=True)


if __name__ == "__main__":
    main()
