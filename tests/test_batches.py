"""Batches on any device: the batching rule, memory-sized budgets (fake memory figures), the GPU
unit size, out-of-memory back-off (injected on the CPU), precision by capability, fp16 safety."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TABLES, write_mixed_input
from vnp.support.config import BatchConfig
from vnp.models import memory
from vnp.models.batches import BATCH_PENALTY, UNDER_HALF_PENALTY, Budget, FrameTooLarge, is_out_of_memory, token_batches
from vnp.predict import main as predict_main
from vnp.run.folder import keep_unit_size

from benchmarks.bench_batches import greedy_batches  # the rule before, the benchmark's baseline

GIB = 1 << 30


# ----------------------------------------------------------------------------- the batching rule


def padded(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def cost(lengths, batches, budget):
    sizes = [len(b) * max(lengths[i] for i in b) for b in batches]
    return sum(sizes) + int(BATCH_PENALTY * budget) * len(sizes) + \
        int(UNDER_HALF_PENALTY * budget) * sum(2 * size < budget for size in sizes)


@pytest.mark.parametrize("seed", range(5))
def test_token_batches_cover_respect_budget_and_beat_greedy_batches(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([168] * 5 + list(range(20, 168))) for _ in range(rng.randint(50, 400))]
    lengths += [3000]  # longer than the budget: alone
    budget = 2048
    batches = token_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)  # longest first
    assert batches[0] == [len(lengths) - 1]
    assert cost(lengths, batches, budget) <= cost(lengths, greedy_batches(lengths, budget), budget)
    assert token_batches(lengths, budget) == batches  # the same lengths, the same batches


def test_token_batches_exact_on_a_small_case():
    # greedy fills the first batch: [100 60] [60 60], 200 + 120 padded tokens; the best cut of two
    # batches pads nothing: [100] [60 60 60], 100 + 180
    assert greedy_batches([100, 60, 60, 60], 240) == [[0, 1], [2, 3]]
    assert token_batches([100, 60, 60, 60], 240) == [[0], [1, 2, 3]]
    # one more batch under half the budget costs (0.1 + 0.05) x 240 = 36: worth it to save 50 padded
    # tokens, not 30
    assert token_batches([100, 100, 60, 60, 60, 10], 240) == [[0, 1], [2, 3, 4], [5]]
    assert token_batches([100, 100, 60, 60, 60, 30], 240) == [[0, 1], [2, 3, 4, 5]]
    assert token_batches([], 100) == []


# ----------------------------------------------------------------------------- the memory model


def test_activation_model_by_hand():
    d, f = 2560, 10240  # ESM2-3B in bf16: the attention half is the peak, 2 D + 22 D bytes
    assert memory.ESM2_3B.bytes_per_token(torch.bfloat16, 168) == 24 * d
    # fp16: float32 residual stream (4 D) + 22 D; fp32: 4 D + 44 D
    assert memory.ESM2_3B.bytes_per_token(torch.float16, 168) == 26 * d
    assert memory.ESM2_3B.bytes_per_token(torch.float32, 168) == 48 * d
    # DNABERT-S bf16: gated MLP 2 D + 2 D + 8 F, plus ALiBi bias/scores 12 heads x T x (2 + 2 + 4)
    assert memory.DNABERT_S.bytes_per_token(torch.bfloat16, 502) == 4 * 768 + 8 * 3072 + 12 * 502 * 8 == 75840
    assert f == 4 * d


def test_memory_budget_from_fake_memory_figures():
    per_token = memory.ESM2_3B.bytes_per_token(torch.bfloat16, 168)
    free = 4 * GIB  # a small card after the weights: 4 GiB x 0.75 - 1 GiB = 2 GiB of activations
    assert memory.memory_budget(memory.ESM2_3B, free, torch.bfloat16, 168) == (2 * GIB // per_token) // 1024 * 1024
    assert memory.memory_budget(memory.ESM2_3B, 70 * GIB, torch.bfloat16, 168) == memory.MAX_TOKENS  # H100
    assert memory.memory_budget(memory.ESM2_3B, GIB, torch.bfloat16, 168) == memory.MIN_TOKENS  # nothing left
    assert memory.memory_budget(memory.ESM2_3B, -GIB, torch.bfloat16, 168) == memory.MIN_TOKENS


def cuda_embedder(kind: str, monkeypatch, free: int):
    """A stand-in for a loaded embedder on cuda:0 with `free` bytes of device memory left."""
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))
    if kind == "esm":
        model = SimpleNamespace(num_layers=36, embed_dim=2560, attention_heads=40, parameters=lambda: iter([param]))
        return SimpleNamespace(device=torch.device("cuda", 0), model=model, alphabet=object(), attention="sdpa")
    config = SimpleNamespace(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
    return SimpleNamespace(device=torch.device("cuda", 0), model=SimpleNamespace(config=config,
                                                                                 parameters=lambda: iter([param])))


def test_token_budget_on_a_gpu_follows_free_memory_and_explicit_wins(monkeypatch):
    esm = cuda_embedder("esm", monkeypatch, 6 * GIB)
    expected = memory.memory_budget(memory.ESM2_3B, 6 * GIB, torch.bfloat16, 168)
    assert memory.MIN_TOKENS < expected < memory.MAX_TOKENS
    assert memory.token_budget("esm", esm, 0, 500) == expected
    assert memory.token_budget("esm", esm, 3000, 500) == 3000  # batch.esm_tokens wins
    dnabert = cuda_embedder("dnabert", monkeypatch, 6 * GIB)
    assert memory.token_budget("dnabert", dnabert, 0, 500) == \
        memory.memory_budget(memory.DNABERT_S, 6 * GIB, torch.bfloat16, 502)
    cpu = SimpleNamespace(device=torch.device("cpu"))
    assert memory.token_budget("esm", cpu) == memory.CPU_TOKENS == 2048


def test_gpu_unit_size_follows_the_budget(monkeypatch):
    assert memory.unit_chunks_for(65536, 500) == 6272  # 16 x 65,536 / 168 = 6,242 -> multiple of 128
    assert memory.unit_chunks_for(2048, 500) == 256
    assert memory.unit_chunks_for(65536, 30) >= memory.unit_chunks_for(65536, 500)
    assert memory.unit_chunks_for(65536, 3) == memory.MAX_UNIT_CHUNKS
    monkeypatch.setattr(memory, "free_memory", lambda device: 80 * GIB)
    monkeypatch.setattr(memory, "model_paths", lambda pack: [])
    gpu = torch.device("cuda", 0)
    assert memory.planned_unit_chunks(BatchConfig(), gpu, 500, None, "bf16") == 6272
    assert memory.planned_unit_chunks(BatchConfig(esm_tokens=8192), gpu, 500, None, "bf16") == \
        memory.unit_chunks_for(8192, 500)
    assert memory.planned_unit_chunks(BatchConfig(unit_chunks=7), gpu, 500, None, "bf16") == 7
    assert memory.planned_unit_chunks(BatchConfig(), torch.device("cpu"), 500, None, "fp32") == 128
    monkeypatch.setattr(memory, "free_memory", lambda device: 4 * GIB)  # a small card: smaller units
    assert memory.planned_unit_chunks(BatchConfig(), gpu, 500, None, "fp16") < 6272


def test_a_resume_keeps_the_recorded_unit_size():
    old = {"inputs": [], "models": {}, "pack": "p", "chunk_length": 500, "unit_chunks": 6272, "precision": "bf16",
           "esm_attention": "sdpa", "device": "cuda"}
    new = {**old, "unit_chunks": 1024}  # another card plans another size
    assert keep_unit_size(new, old, 0)["unit_chunks"] == 6272
    assert keep_unit_size(new, old, 1024)["unit_chunks"] == 1024  # set explicitly: a different run
    assert keep_unit_size({**new, "chunk_length": 300}, old, 0)["unit_chunks"] == 1024  # another run anyway
    assert keep_unit_size(new, None, 0)["unit_chunks"] == 1024


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("capability, expected", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp16"),
                                                  ((7, 0), "fp16")])
def test_precision_auto_by_capability(monkeypatch, capability, expected):
    from vnp.models import resolve_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from vnp.models.pack import build_tiny_pack

    return build_tiny_pack(tmp_path_factory.mktemp("pack"))


def proteins(n=30, seed=3):
    rng = random.Random(seed)
    return ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(5, 60))) for _ in range(n)]


def dna(n=30, seed=3):
    rng = random.Random(seed)
    return ["".join(rng.choices("ACGT", k=rng.randint(20, 300))) for _ in range(n)]


def scale_outputs(modules, target: float, inputs) -> None:
    """Scale each module's weight and bias so that its outputs on `inputs()` reach about `target`."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(float(o.abs().max()))) for m in modules]
    inputs()
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for module, peak in zip(modules, seen):
            module.weight.mul_(target / peak)
            module.bias.mul_(target / peak)


def test_fp16_esm_does_not_overflow_where_the_residual_passes_fp16_range(pack):
    """Every MLP's output scaled to ~60,000 (fits fp16): their sum in the residual passes 65,504.
    The fp32 residual stream and norms keep fp16 finite and close to fp32; fair-esm's own forward,
    with an fp16 residual, overflows (the control)."""
    from vnp.models.esm import load_esm

    seqs = proteins()
    full = load_esm(pack.esm)
    scale_outputs([block.fc2 for block in full.model.layers], 6.0e4, lambda: full.embed(seqs))
    state = {k: v.clone() for k, v in full.model.state_dict().items()}
    half, control = load_esm(pack.esm, dtype=torch.float16), load_esm(pack.esm, dtype=torch.float16,
                                                                          attention="fair-esm")
    for embedder in (half, control):
        embedder.model.load_state_dict(state)
    ref, got = full.embed(seqs), half.embed(seqs)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    assert not np.isfinite(control.embed(seqs)).all()


def test_fp16_dnabert_does_not_overflow_where_a_sum_passes_fp16_range(pack):
    """Layer 1's input (layer 0's output) scaled to ~30,000 and its attention output to ~40,000: the
    sum before its LayerNorm passes 65,504. Summed and normalised in float32, fp16 stays finite."""
    from vnp.models.dnabert import load_dnabert

    seqs = dna()
    full = load_dnabert(pack.dnabert)
    first, second = full.model.encoder.layer
    scale_outputs([first.mlp.layernorm], 3.0e4, lambda: full.embed(seqs))
    with torch.no_grad():
        second.attention.self.Wqkv.weight.zero_()  # attention on such inputs would overflow anyway
        second.attention.output.dense.bias.fill_(4.0e4)
    state = {k: v.clone() for k, v in full.model.state_dict().items()}
    half = load_dnabert(pack.dnabert, dtype=torch.float16)
    half.model.load_state_dict(state)
    ref, got = full.embed(seqs), half.embed(seqs)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()


# ----------------------------------------------------------------------------- out-of-memory back-off


def test_allocation_failures_are_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


@pytest.fixture
def oom_above(monkeypatch):
    """Attention raises torch.cuda.OutOfMemoryError for batches of more than `limit` tokens."""
    real = F.scaled_dot_product_attention
    state = {"limit": None, "raised": 0}

    def attention(q, k, v, *args, **kwargs):
        if state["limit"] is not None and q.shape[0] * q.shape[2] > state["limit"]:
            state["raised"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", attention)
    return state


@pytest.mark.parametrize("kind", ["esm", "dnabert"])
def test_a_batch_out_of_memory_is_split_until_it_fits(pack, oom_above, kind):
    from vnp.models.dnabert import load_dnabert
    from vnp.models.esm import load_esm

    embedder = load_esm(pack.esm) if kind == "esm" else load_dnabert(pack.dnabert)
    seqs = proteins() if kind == "esm" else dna()
    prepared = embedder.prepare(seqs, 2048)
    ref = embedder.run(prepared).numpy()
    oom_above["limit"] = 300
    budget = Budget(kind, 2048)
    got = embedder.run(prepared, budget).numpy()
    assert oom_above["raised"] > 0 and budget.retries == oom_above["raised"]
    assert budget.tokens <= 1024 and budget.summary()["tokens"] == 2048
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # without a budget nothing is retried
        embedder.run(prepared)
    oom_above["limit"] = 0  # even one sequence fails
    with pytest.raises(FrameTooLarge) as caught:
        embedder.run(embedder.prepare(seqs[:3], 2048), Budget(kind, 2048))
    lengths = embedder.token_lengths(seqs[:3])
    assert lengths[caught.value.row] == caught.value.tokens == max(lengths)  # the longest goes first


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def scores(out: Path) -> dict[str, np.ndarray]:
    rows = (out / "prediction_results.txt").read_text().splitlines()[1:]
    return {r.split("\t")[0]: np.array([float(x) for x in r.split("\t")[2:]]) for r in rows}


COMMON = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=4", "dist.timeout_s=60"]


def test_predict_with_injected_out_of_memory_gives_the_same_calls(tmp_path, oom_above, capsys):
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    normal, backed_off = tmp_path / "normal", tmp_path / "oom"
    assert predict_main([str(fasta), "-o", str(normal), *COMMON]) == 0
    oom_above["limit"] = 400
    assert predict_main([str(fasta), "-o", str(backed_off), *COMMON]) == 0
    assert oom_above["raised"] > 0
    got, want = scores(backed_off), scores(normal)
    assert got.keys() == want.keys()
    assert max(np.abs(got[k] - want[k]).max() for k in want) < 1e-5
    for name in TABLES:  # calls, labels and regions: the same
        if name.endswith((".csv", ".tsv")) and "highestscore" not in name:
            assert (backed_off / name).read_text().splitlines()[0] == (normal / name).read_text().splitlines()[0]
    calls = [line.split("\t")[1] for line in (backed_off / "prediction_results.txt").read_text().splitlines()]
    assert calls == [line.split("\t")[1] for line in (normal / "prediction_results.txt").read_text().splitlines()]
    batches = run_json(backed_off)["batches"]
    assert batches["unit_chunks"] == 4
    retries = batches["esm"]["oom_retries"] + batches["dnabert"]["oom_retries"]
    assert retries == oom_above["raised"]
    assert batches["esm"]["tokens"] == 2048 and batches["esm"]["final_tokens"] < 2048
    assert run_json(normal)["batches"]["esm"] == {"tokens": 2048, "final_tokens": 2048, "oom_retries": 0}
    log = (backed_off / "logs" / "rank0.log").read_text()
    assert log.count("out of memory on a batch") <= 2  # once per model at most


def test_a_frame_that_does_not_fit_alone_ends_the_run_with_one_line(tmp_path, oom_above, capsys):
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    oom_above["limit"] = 0
    assert predict_main([str(fasta), "-o", str(tmp_path / "o"), *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "frame " in err and "_chunk_" in err and "tokens" in err and "memory even alone" in err


def test_a_resumed_run_keeps_its_unit_size_on_another_card(tmp_path, monkeypatch):
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    out = tmp_path / "o"
    common = ["pack=tiny", "progress=false", "threads=1", "dist.timeout_s=60"]
    assert predict_main([str(fasta), "-o", str(out), *common]) == 0
    first = (out / "prediction_results.txt").read_bytes()
    assert run_json(out)["batches"]["unit_chunks"] == 128
    monkeypatch.setattr(memory, "CPU_UNIT_CHUNKS", 64)  # a card whose default unit differs
    assert predict_main([str(fasta), "-o", str(out), *common]) == 0  # no "holds a run with different unit_chunks"
    assert run_json(out)["batches"]["unit_chunks"] == 128
    assert (out / "prediction_results.txt").read_bytes() == first


@pytest.mark.parametrize("kind", ["esm", "dnabert"])
def test_the_forwards_build_nothing_from_python_data_on_the_device_and_read_nothing_back(pack, monkeypatch, kind):
    """The device half of both embedders: no `torch.tensor(..., device=...)`, `.item()`, `.tolist()`
    or `.cpu()` (each waits for a GPU; tests/test_cuda.py checks the same under the sync debug mode)."""
    from vnp.models.dnabert import load_dnabert
    from vnp.models.esm import load_esm

    embedder = load_esm(pack.esm) if kind == "esm" else load_dnabert(pack.dnabert)
    prepared = embedder.prepare(proteins() if kind == "esm" else dna(), 512)
    embedder.run(prepared)  # first batch: caches (the ALiBi slopes) are filled once, then reused
    calls = []
    real_tensor = torch.tensor

    def tensor(*args, **kwargs):
        if "device" in kwargs:
            calls.append("torch.tensor(device=)")
        return real_tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", tensor)
    for name in ("item", "tolist", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, _r=real, **k: calls.append(_n) or _r(self, *a, **k))
    embedder.run(prepared, Budget(kind, 512))
    assert calls == []
