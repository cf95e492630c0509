"""GPU figures (CUDA only; prints "skipped: no GPU" otherwise).

    python -m benchmarks.gpu            # on a machine with a CUDA GPU
    python -m benchmarks.gpu --smoke    # tiny sizes on the CPU: checks the script, measures nothing

1. ESM2-3B architecture (36 layers, 2560 wide, 40 heads), random weights, bf16, through vnp's sdpa
   forward (fused QKV): tokens/s and MFU at several token budgets, on frames of 500 bp chunks.
2. DNABERT-S architecture (BERT-base 12 x 768, ALiBi), random weights, bf16: tokens/s.
3. The memory model (vnp.models.memory): the budgets it picks on this card with ESM2-3B and
   DNABERT-S loaded, the activation bytes it predicts against the peak measured, and whether a
   full batch at the picked budget fits.
4. `vnp predict` end to end on 1 GPU with random full-size models (DNABERT-S 117M, ESM2-3B,
   classifier 3328-d) written as a pack: frames/s over the embedding loop (run.json), with every
   unit's forwards run under torch.cuda.set_sync_debug_mode("error") (a host sync inside them fails
   the run; the exchange and rank 0's sink are outside that check).

Meant to finish within 8 minutes on one H100/H200 (most of it building the random 3B pack).

    python -m benchmarks.gpu --predict-sync-debug FASTA -o OUT key=value...  # step 4 alone (tests/test_cuda.py)
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

import torch

ROOT = Path(__file__).resolve().parents[1]
ESM_3B = dict(num_layers=36, embed_dim=2560, attention_heads=40)
DNABERT_S = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=4096)
BUDGETS = (4096, 8192, 16384, 32768, 65536)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), 989e12)


def proteins(count: int, seed: int = 0) -> list[str]:
    """Frame-like proteins: 40-166 residues (kept frames of 500 bp chunks)."""
    rng = random.Random(seed)
    return ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(40, 166))) for _ in range(count)]


def esm_random(arch: dict, device: torch.device, dtype: torch.dtype):
    """An EsmEmbedder over randomly initialised weights of `arch`, built on the device."""
    import esm
    from esm.model.esm2 import ESM2

    from vnp.models.esm import EsmEmbedder, fused_qkv

    with torch.device(device):
        model = ESM2(arch["num_layers"], arch["embed_dim"], arch["attention_heads"], alphabet="ESM-1b",
                     token_dropout=True)
    model = model.to(dtype).eval().requires_grad_(False)
    for block in model.layers:
        fused_qkv(block.self_attn)
    return EsmEmbedder(model, esm.data.Alphabet.from_architecture("ESM-1b"), arch["num_layers"], "sdpa")


def esm_flops_per_token(arch: dict, mean_length: float) -> float:
    """2 x weights of the layers (matmuls) + attention scores and values (4 x T x D per layer)."""
    d, layers = arch["embed_dim"], arch["num_layers"]
    return layers * (2 * 12 * d * d + 4 * mean_length * d)


def bench_esm(device: torch.device, arch: dict, budgets, count: int) -> None:
    embedder = esm_random(arch, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    seqs = proteins(count)
    tokens = sum(len(p) + 2 for p in seqs)
    per_token = esm_flops_per_token(arch, tokens / len(seqs))
    for budget in budgets:
        prepared = embedder.prepare(seqs, budget)
        embedder.run(embedder.prepare(seqs[:64], budget))  # warm up kernels for this shape range
        _sync(device)
        t0 = time.perf_counter()
        out = embedder.run(prepared)
        _sync(device)
        seconds = time.perf_counter() - t0
        padded = sum(int(batch[1].numel()) for batch in prepared.batches)
        rate = tokens / seconds
        mfu = rate * per_token / peak_flops() if device.type == "cuda" else float("nan")
        print(f"  esm2 {arch['num_layers']}x{arch['embed_dim']} budget {budget:6d}: {len(prepared.batches):4d} forwards, "
              f"{rate:9.0f} tokens/s ({padded / tokens - 1:.1%} padding), MFU {mfu:.1%}", flush=True)
        del out


def dnabert_random(arch: dict, device: torch.device, dtype: torch.dtype):
    from vnp.models.dnabert import DnabertConfig, DnabertEmbedder, DnabertModel, train_tiny_tokenizer

    config = DnabertConfig(**arch)
    with torch.device(device):
        model = DnabertModel(config)
    return DnabertEmbedder(model, train_tiny_tokenizer(arch["vocab_size"], 0), device=device, dtype=dtype)


def dna(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices("ACGT", k=rng.randint(150, 500))) for _ in range(count)]


def bench_dnabert(device: torch.device, arch: dict, budget: int, count: int) -> None:
    embedder = dnabert_random(arch, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    seqs = dna(count)
    prepared = embedder.prepare(seqs, budget)
    tokens = sum(embedder.token_lengths(seqs))
    embedder.run(embedder.prepare(seqs[:64], budget))
    _sync(device)
    t0 = time.perf_counter()
    embedder.run(prepared)
    _sync(device)
    print(f"  dnabert-s {arch['num_hidden_layers']}x{arch['hidden_size']} budget {budget}: "
          f"{tokens / (time.perf_counter() - t0):9.0f} tokens/s", flush=True)


def check_memory_model(device: torch.device, esm_arch: dict, dnabert_arch: dict) -> None:
    """The budgets the memory model picks with both models loaded, and whether they fit."""
    from vnp.models.memory import architecture_of, longest_tokens, token_budget

    esm = esm_random(esm_arch, device, torch.bfloat16)
    dnabert = dnabert_random(dnabert_arch, device, torch.bfloat16)
    budgets = {"esm": token_budget("esm", esm), "dnabert": token_budget("dnabert", dnabert)}
    print(f"  memory model: {torch.cuda.mem_get_info(device)[0] / 2**30:.1f} GiB free with both models loaded -> "
          f"budgets esm {budgets['esm']}, dnabert {budgets['dnabert']}", flush=True)
    for name, embedder, seqs in (("esm", esm, proteins(4000)), ("dnabert", dnabert, dna(4000))):
        arch = architecture_of(embedder)
        predicted = arch.bytes_per_token(torch.bfloat16, longest_tokens(name, 500))
        prepared = embedder.prepare(seqs, budgets[name])
        prepared.batches = prepared.batches[:1]  # the first batch is the longest, the fullest
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        try:
            embedder.run(prepared)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(device) - before
            tokens = int(prepared.batches[0][1].numel())
            print(f"  {name}: a batch of {tokens} tokens fits: peak {peak / 2**20:.0f} MiB = {peak / tokens:.0f} "
                  f"bytes a token (model: {predicted})", flush=True)
        except torch.cuda.OutOfMemoryError:
            print(f"  {name}: a batch at the picked budget {budgets[name]} does NOT fit", flush=True)
    del esm, dnabert
    torch.cuda.empty_cache()


def predict_sync_debug(argv: list[str]) -> int:
    """`vnp predict` with each unit's forwards under torch.cuda.set_sync_debug_mode("error")."""
    from vnp.run import steps
    from vnp.predict import main as predict_main

    compute = steps.FrameWork.compute

    def checked(self, unit, prepared):
        if not torch.cuda.is_available():  # the CPU smoke run: nothing to check
            return compute(self, unit, prepared)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return compute(self, unit, prepared)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    steps.FrameWork.compute = checked
    return predict_main(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_pack(folder: Path, dnabert: dict, esm_arch: dict) -> Path:
    """A pack of random full-size models, in the published files' formats."""
    from omegaconf import OmegaConf

    from vnp.models.classifier import build_tiny_classifier, save_classifier
    from vnp.models.dnabert import build_tiny_dnabert
    from vnp.models.esm import build_tiny_esm

    build_tiny_dnabert(folder / "dnabert", **dnabert)
    build_tiny_esm(folder / "esm2_random.pt", **esm_arch)
    dim = dnabert["hidden_size"] + esm_arch["embed_dim"]
    save_classifier(build_tiny_classifier(dim, 0), folder / "classifier", provenance={"random": True})
    data = dict(name="random-full", chunk_length=500, dnabert="dnabert", esm="esm2_random.pt", esm_layer=None,
                classifier="classifier", dnabert_dim=dnabert["hidden_size"], esm_dim=esm_arch["embed_dim"])
    (folder / "pack.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    return folder / "pack.yaml"


def bench_predict(device: torch.device, dnabert: dict, esm_arch: dict, records: int) -> None:
    from benchmarks.bench_engine import write_metagenome

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        pack = write_pack(tmp / "pack", dnabert, esm_arch)
        fasta = tmp / "metagenome.fa"
        write_metagenome(fasta, scale=records / 600)
        built = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        precision = "bf16" if device.type == "cuda" else "fp32"
        proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--predict-sync-debug", str(fasta), "-o", str(tmp / "out"),
                               f"pack={pack}", f"device={device.type}", f"precision={precision}", "progress=false"],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"  predict failed: {proc.stderr[-2000:]}")
            return
        record = json.loads((tmp / "out" / "run.json").read_text())
        loop = record["timings_s"]["embed_loop_s"]
        rank = record["timings_s"]["per_rank"][0]
        print(f"  vnp predict (forwards under sync debug mode 'error'), random full-size models, 1 {device.type}: "
              f"batches {json.dumps(record['batches'])}, {record['counts']['frames']} frames in "
              f"{loop:.1f} s = {record['counts']['frames'] / loop:.0f} frames/s (busy {rank['busy_s'] / loop:.0%}; "
              f"pack written in {built:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--predict-sync-debug"]:
        sys.exit(predict_sync_debug(argv[1:]))
    if "--smoke" in argv:
        small = dict(num_layers=2, embed_dim=64, attention_heads=4)
        bench_esm(torch.device("cpu"), small, (1024, 4096), 64)
        bench_dnabert(torch.device("cpu"), dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=96, vocab_size=400), 4096, 64)
        bench_predict(torch.device("cpu"), dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=96, vocab_size=400), small, 20)
        return
    if not torch.cuda.is_available():
        print("skipped: no GPU")
        return
    device = torch.device("cuda", 0)
    print(f"gpu: {torch.cuda.get_device_name()} (MFU against {peak_flops() / 1e12:.0f} TFLOP/s bf16)")
    check_memory_model(device, ESM_3B, DNABERT_S)
    bench_esm(device, ESM_3B, BUDGETS, 4000)
    bench_dnabert(device, DNABERT_S, 65536, 4000)
    bench_predict(device, DNABERT_S, ESM_3B, 300)


if __name__ == "__main__":
    main()
