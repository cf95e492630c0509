"""Embedding throughput, fp32 on CPU: vnp's batched path vs the original VirNucPro's call pattern.

    python -m benchmarks.bench_embed [--frames 2000] [--baseline-frames 200] [--threads 2]

Models have random weights and real architectures: DNABERT-S with 4 of its 12 layers (the real
BPE tokenizer from ../shared/reference/dnabert-s when present, so token counts are realistic) and
ESM2 with the 8M architecture (6 layers, 320 wide, 20 heads). Inputs are the first kept frames of
coding-like sequences chunked at 500 bp and six-frame translated by vnp itself: nucleotide frames for
DNABERT-S, protein frames for ESM2.

- ours: `vnp.embed.embed_records` with the CPU default token budget (sdpa attention for ESM2);
- original, DNABERT-S: one unpadded sequence per forward, then the mean over its tokens;
- original, ESM2: fair-esm's own forward over `FastaBatchedDataset.get_batch_indices(2048,
  extra_toks_per_seq=1)` batches, then `t[i, 1 : len + 1].mean(0)`.

The original runs on an evenly spaced subset of the same frames (same length mix) to keep the run
short; rates are per frame and per real token. Both sides use the same number of threads. Matrix
products dominate both, so the printed share of the measured fp32 matmul peak shows how much any
batching can still gain on this CPU.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vnp.demo import coding_like
from vnp.embed import BATCH_RECORDS, embed_records
from vnp.models import TOKEN_BUDGETS
from vnp.models.batches import token_batches
from vnp.models.dnabert import build_tiny_dnabert, load_dnabert
from vnp.models.esm import build_tiny_esm, load_esm
from vnp.seq.seqio import Record
from vnp.seq.frames import Frame, batched_chunks, translate_chunks

REAL_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dnabert-s" / "tokenizer.json"
DNABERT_ARCH = dict(num_hidden_layers=4, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                    vocab_size=4096)
ESM_ARCH = dict(num_layers=6, embed_dim=320, attention_heads=20)
ORIGINAL_ESM_TOKENS = 2048  # the original's toks_per_batch



# ----------------------------------------------------------------------------- inputs


def coding_frames(count: int, chunk_length: int = 500, seed: int = 0) -> list[Frame]:
    """The first `count` kept frames of stop-free sequences of 150 bp - 3 kb (so frames survive)."""
    rng = random.Random(seed)

    def records():
        for number in itertools.count():
            seq = coding_like(rng, 3 * rng.randint(50, 1000))
            yield Record(f"seq{number}", seq, 1)

    frames: list[Frame] = []
    for chunks in batched_chunks(records(), chunk_length, max_bases=1 << 18):
        for kept in translate_chunks(chunks):
            frames.extend(kept)
        if len(frames) >= count:
            return frames[:count]
    raise AssertionError("unreachable: the record stream is endless")


def evenly_spaced(items: list, count: int) -> list:
    """`count` items spread over the list (same length mix as the whole)."""
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


# ----------------------------------------------------------------------------- models


def build_dnabert(folder: Path):
    build_tiny_dnabert(folder, seed=0, **DNABERT_ARCH)
    if REAL_TOKENIZER.is_file():  # copied into the temporary model folder only
        shutil.copy(REAL_TOKENIZER, folder / "tokenizer.json")
    return load_dnabert(str(folder))


def build_esm(folder: Path):
    return load_esm(build_tiny_esm(folder / "esm2_t6_bench.pt", seed=0, **ESM_ARCH), attention="sdpa")


# ----------------------------------------------------------------------------- the original's loops


@torch.no_grad()
def dnabert_original(embedder, seqs: list[str]) -> np.ndarray:
    """VirNucPro: `model(tokenizer(seq)['input_ids'])[0]`, then `torch.mean(hidden[0], dim=0)`."""
    rows = []
    for seq in seqs:
        input_ids = torch.tensor([embedder.tokenizer.encode(seq).ids])
        hidden = embedder.model(input_ids)  # (1, T, H)
        rows.append(torch.mean(hidden[0], dim=0).numpy())
    return np.stack(rows)


@torch.no_grad()
def esm_original(embedder, proteins: list[str]) -> np.ndarray:
    """VirNucPro's extract loop: fair-esm batches, batch converter, forward, per-row mean."""
    from esm.data import FastaBatchedDataset

    dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], proteins)
    batches = dataset.get_batch_indices(ORIGINAL_ESM_TOKENS, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(dataset, collate_fn=embedder.alphabet.get_batch_converter(1022),
                                         batch_sampler=batches)
    out = np.empty((len(proteins), embedder.dim), dtype=np.float32)
    layer = embedder.layer
    for labels, strs, toks in loader:
        reps = embedder.model(toks, repr_layers=[layer], return_contacts=False)["representations"][layer]
        for i, label in enumerate(labels):
            out[int(label)] = reps[i, 1 : min(1022, len(strs[i])) + 1].mean(0).numpy()
    return out


# ----------------------------------------------------------------------------- measuring


def ours(embedder, seqs: list[str], max_tokens: int) -> np.ndarray:
    records = ((str(i), seq) for i, seq in enumerate(seqs))
    return np.concatenate([vectors for _, vectors in embed_records(embedder, records, max_tokens)])


def timed(fn, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def padding_share(lengths: list[int], batcher, max_tokens: int) -> float:
    """Share of computed token positions that are padding, 1 - real / (rows x longest), over the
    batches `embed_records` makes: `batcher(lengths, max_tokens)` per slice of records."""
    computed = 0
    for start in range(0, len(lengths), BATCH_RECORDS):
        piece = lengths[start:start + BATCH_RECORDS]
        computed += sum(len(batch) * max(piece[i] for i in batch) for batch in batcher(piece, max_tokens))
    return 1 - sum(lengths) / computed


def matmul_peak_gflops(seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of a (2048 x 768) @ (768 x 3072) product, the best of a few runs."""
    a, b = torch.randn(2048, 768), torch.randn(768, 3072)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _, dt = timed(torch.matmul, a, b)
        best = max(best, 2 * 2048 * 768 * 3072 / dt / 1e9)
    return best


def dnabert_flops(lengths: list[int]) -> float:
    """Multiply-adds x 2 of a forward over sequences of these token counts (no padding)."""
    h, i, n = DNABERT_ARCH["hidden_size"], DNABERT_ARCH["intermediate_size"], DNABERT_ARCH["num_hidden_layers"]
    per_token = 2 * n * h * (4 * h + 3 * i)  # Wqkv, attention output, gated MLP (2I), wo
    return sum(per_token * t + 4 * n * t * t * h for t in lengths)


def esm_flops(lengths: list[int]) -> float:
    """The same for ESM2: q, k, v, out (4 D^2) and fc1, fc2 (8 D^2) per token and layer, plus attention."""
    d, n = ESM_ARCH["embed_dim"], ESM_ARCH["num_layers"]
    return sum(24 * n * d * d * t + 4 * n * t * t * d for t in lengths)


def report(name: str, seqs: list[str], lengths: list[int], subset: list[int], run_ours, run_original,
           flops, padding: float, peak: float) -> None:
    """Time both paths, check they agree, print one block of numbers."""
    ours_vectors, ours_s = timed(run_ours, seqs)
    sub_seqs = [seqs[i] for i in subset]
    original_vectors, original_s = timed(run_original, sub_seqs)
    diff = float(np.abs(ours_vectors[subset] - original_vectors).max())
    tokens, sub_tokens = sum(lengths), sum(lengths[i] for i in subset)
    ours_fps, original_fps = len(seqs) / ours_s, len(subset) / original_s
    ours_tps, original_tps = tokens / ours_s, sub_tokens / original_s
    ours_use = flops(lengths) / ours_s / 1e9 / peak
    original_use = flops([lengths[i] for i in subset]) / original_s / 1e9 / peak
    print(f"{name}: ours     {len(seqs)} frames in {ours_s:.1f} s: {ours_fps:.1f} frames/s, "
          f"{ours_tps:.0f} tokens/s, padding {padding:.1%} of computed tokens (target < 10%), "
          f"{ours_use:.0%} of matmul peak")
    print(f"{name}: original {len(subset)} frames in {original_s:.1f} s: {original_fps:.1f} frames/s, "
          f"{original_tps:.0f} tokens/s, {original_use:.0%} of matmul peak")
    print(f"{name}: ratio {ours_fps / original_fps:.2f}x per frame, {ours_tps / original_tps:.2f}x per token "
          f"(target >= 2x; at 100% of matmul peak it would be {1 / original_use:.2f}x); "
          f"max |ours - original| = {diff:.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--baseline-frames", type=int, default=200, help="frames for the original's loops")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        run_all(args)
    finally:
        torch.set_num_threads(threads)


def run_all(args: argparse.Namespace) -> None:
    frames = coding_frames(args.frames)
    subset = evenly_spaced(list(range(len(frames))), args.baseline_frames)
    peak = matmul_peak_gflops()
    print(f"embed: fp32, {args.threads} threads, load average {os.getloadavg()[0]:.1f}, "
          f"matmul peak {peak:.0f} GFLOP/s; {len(frames)} frames of 500 bp chunks")
    with tempfile.TemporaryDirectory() as tmp:
        bench_dnabert([f.nucleotide for f in frames], subset, Path(tmp) / "dnabert", peak)
        bench_esm([f.protein for f in frames], subset, Path(tmp), peak)
    print(f"embed: load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")


def bench_dnabert(seqs: list[str], subset: list[int], folder: Path, peak: float) -> None:
    embedder = build_dnabert(folder)
    lengths = embedder.token_lengths(seqs)
    budget = TOKEN_BUDGETS["dnabert"]["cpu"]
    tokenizer = "real DNABERT-S tokenizer" if REAL_TOKENIZER.is_file() else "tiny trained tokenizer"
    print(f"dnabert: 4 layers x 768, {tokenizer}, {np.mean(lengths):.0f} tokens/frame, max_tokens {budget}")
    report("dnabert", seqs, lengths, subset, lambda s: ours(embedder, s, budget),
           lambda s: dnabert_original(embedder, s), dnabert_flops,
           padding_share(lengths, token_batches, budget), peak)


def bench_esm(proteins: list[str], subset: list[int], folder: Path, peak: float) -> None:
    embedder = build_esm(folder)
    lengths = embedder.token_lengths(proteins)
    budget = TOKEN_BUDGETS["esm"]["cpu"]
    print(f"esm: ESM2 8M architecture (6 x 320, 20 heads), {np.mean(lengths):.0f} tokens/frame, "
          f"max_tokens {budget}")
    report("esm", proteins, lengths, subset, lambda s: ours(embedder, s, budget),
           lambda s: esm_original(embedder, s), esm_flops,
           padding_share(lengths, token_batches, budget), peak)

if __name__ == "__main__":
    main()
