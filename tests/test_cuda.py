"""The CUDA path, for a machine with a GPU (skipped without one).

    python -m pytest -q tests/test_cuda.py

Tiny models: the GPU results must match the CPU's (fp32) and bf16 must run end to end.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from tests.helpers import TABLES, child_env, run, write_mixed_input

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from vnp.models.pack import build_tiny_pack

    return build_tiny_pack(tmp_path_factory.mktemp("pack"))


def sequences(n: int = 40) -> tuple[list[str], list[str]]:
    rng = random.Random(1)
    dna = ["".join(rng.choices("ACGT", k=rng.randint(30, 501))) for _ in range(n)]
    protein = ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(10, 166))) for _ in range(n)]
    return dna, protein


def test_dnabert_on_gpu_matches_cpu(pack):
    from vnp.models.dnabert import load_dnabert

    dna, _ = sequences()
    cpu = load_dnabert(pack.dnabert).embed(dna, max_tokens=4096)
    gpu = load_dnabert(pack.dnabert, device="cuda").embed(dna, max_tokens=4096)
    assert np.abs(cpu - gpu).max() < 1e-4
    bf16 = load_dnabert(pack.dnabert, device="cuda", dtype=torch.bfloat16).embed(dna, max_tokens=4096)
    assert np.isfinite(bf16).all() and np.abs(cpu - bf16).max() < 0.1


@pytest.mark.parametrize("attention", ["sdpa", "fair-esm"])
def test_esm_on_gpu_matches_cpu(pack, attention):
    from vnp.models.esm import load_esm

    _, protein = sequences()
    cpu = load_esm(pack.esm, attention="fair-esm").embed(protein, max_tokens=4096)
    gpu = load_esm(pack.esm, device="cuda", attention=attention).embed(protein, max_tokens=4096)
    assert np.abs(cpu - gpu).max() < 1e-4
    bf16 = load_esm(pack.esm, device="cuda", dtype=torch.bfloat16, attention=attention).embed(protein)
    assert np.isfinite(bf16).all() and np.abs(cpu - bf16).max() < 0.1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predict_on_gpu(tmp_path, precision):
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    common = ["pack=tiny", "progress=false", "batch.unit_chunks=2"]
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(cpu), *common, "device=cpu"]).returncode == 0
    proc = run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(gpu), *common, "device=cuda",
                f"precision={precision}"])
    assert proc.returncode == 0, proc.stderr
    rows = {name: (gpu / name).read_text().splitlines() for name in TABLES}
    expected = {name: (cpu / name).read_text().splitlines() for name in TABLES}
    assert [r.split("\t")[0] for r in rows["prediction_results.txt"]] == \
        [r.split("\t")[0] for r in expected["prediction_results.txt"]]
    if precision == "fp32":
        got = np.array([[float(x) for x in r.split("\t")[2:]] for r in rows["prediction_results.txt"][1:]])
        want = np.array([[float(x) for x in r.split("\t")[2:]] for r in expected["prediction_results.txt"][1:]])
        assert np.abs(got - want).max() < 1e-4
    assert '"device": "cuda:0"' in (gpu / "run.json").read_text()


def test_gpus_flag_on_one_gpu(tmp_path):
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    proc = run([sys.executable, "-m", "vnp.cli", "predict", "--gpus", "0", str(fasta), "-o", str(tmp_path / "o"),
                "pack=tiny", "progress=false"], env=child_env())
    assert proc.returncode == 0, proc.stderr


def test_engine_loop_never_waits_on_the_device():
    """Between posting a step and completing it nothing reads the device back: the whole loop (one
    rank, forwards and rank 0's per-step scoring on the GPU) runs under sync debug mode "error"."""
    from vnp.run import dist as vdist
    from vnp.run.engine import RowSink, StopFlag, run_units
    from vnp.support.config import EngineConfig
    from vnp.run.exchange import Computed

    device = torch.device("cuda", torch.cuda.current_device())
    ctx = vdist.Context(vdist.Env(0, 0, 1, 1, "single"), device, None)
    weight = torch.randn(16, 64, device=device)
    head = torch.randn(64, 2, device=device)

    class Work:
        dim, rows = 64, 12

        def units(self):
            return list(range(20))

        def costs(self, units):
            return None

        def prepare(self, unit):
            keys = np.arange(unit % 7, dtype=np.int64) + 12 * unit
            return keys, torch.randn(len(keys), 16).pin_memory()

        def compute(self, unit, prepared):
            keys, x = prepared
            return Computed(unit, keys, torch.tanh(x.to(device, non_blocking=True) @ weight))

    class Sink(RowSink):
        def __init__(self):
            self.got = {}

        def score(self, rows):
            return rows @ head

        def consume(self, results):
            for r in results:
                self.got[r.unit] = (r.embeddings, r.scores)

        def close(self):
            pass

    sink = Sink()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = run_units(ctx, Work(), sink, StopFlag(), EngineConfig(window=4))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert sorted(sink.got) == list(range(20))
    for rows, scores in sink.got.values():
        assert np.allclose(scores, rows @ head.cpu().numpy(), atol=1e-4)
    assert stats.per_rank[0]["sink_forward_s"] > 0


def test_predict_forwards_under_sync_debug_mode(tmp_path):
    """No host sync inside the forwards of either model: every unit's compute runs under
    torch.cuda.set_sync_debug_mode("error") (benchmarks/gpu.py --predict-sync-debug), at the memory
    model's budgets and the GPU default unit size, and precision=auto as the card supports it."""
    import json

    fasta = write_mixed_input(tmp_path / "mixed.fa")
    out = tmp_path / "out"
    proc = run([sys.executable, "-m", "benchmarks.gpu", "--predict-sync-debug", str(fasta), "-o", str(out),
                "pack=tiny", "progress=false", "device=cuda"], env=child_env())
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "run.json").read_text())
    expected = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
    assert record["precision"] == expected
    assert record["batches"]["esm"]["oom_retries"] == 0 and record["batches"]["esm"]["tokens"] >= 2048
