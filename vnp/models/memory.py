"""Batch sizes from the device's memory: token budgets and the GPU work-unit size.

On a GPU the token budget of each language model (padded tokens per forward) defaults to what its
activations may take of the memory left once the models are loaded:

    budget = clamp((free x (1 - RESERVE_SHARE) - RESERVE_BYTES) / bytes_per_token, MIN, MAX)

rounded down to a multiple of 1,024. `bytes_per_token` is the activation model below: inference
keeps one layer's tensors alive at a time, so the peak is the larger of the attention half and the
MLP half of one layer, per token of the batch (docs/architecture.md, "Memory-sized batches"):

    attention: residual + LayerNorm out + QKV (3 D) + rotated q, k and their temporaries (~4 D)
               + attention out + its re-layout + output projection        = r D + 11 e D
    MLP:       residual + LayerNorm out + up-projection + activation      = r D + e D + 2 e F
               (a gated MLP, DNABERT-S's, projects to 2 F first: + 2 e F)
    scores:    where the attention scores are formed in memory (a float bias, DNABERT-S's ALiBi, or
               fair-esm's reference forward): heads x T x (2 e + 4) more per token (bias and
               scores in the run's dtype, probabilities in float32); the fused kernels of the sdpa
               path (flash / memory-efficient) form none.

with D the width, F the MLP width, T the longest sequence of a batch, e the bytes of the run's dtype
and r those of the residual stream (float32 in fp16 runs, see esm.forward_sdpa). ESM2-3B in bf16
(36 layers, D 2560, F 10240, 40 heads): 61,440 bytes a token; DNABERT-S in bf16 (BERT-base, 12 x 768,
F 3072 gated, 12 heads) with 500 bp chunks (T <= 502): 75,840 bytes a token. The reserve covers the
CUDA context, the allocator's fragmentation, the exchange buffers and rank 0's classifier.

On the CPU the budgets stay 2,048 (measured fastest there, benchmarks/bench_embed.py). An explicit
`batch.*_tokens` always wins.

On a GPU the default work unit follows the ESM budget: a unit holds UNIT_BATCHES full batches of
one-frame chunks (chunk_length / 3 + 2 tokens a chunk), so that batches fill even though a unit is
batched only with itself; at 65,536 tokens and 500 bp chunks that is 6,272 chunks. The unit size is
part of the run record and a resume keeps it, whatever the card (vnp.run.folder.keep_unit_size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

CPU_TOKENS = 2048  # both models on the CPU
CPU_UNIT_CHUNKS = 128
MIN_TOKENS = 2048  # a full-length ESM2 sequence (1,024 tokens) twice over
MAX_TOKENS = 65536  # beyond it a forward gains no throughput, and one batch holds a unit up longer
RESERVE_SHARE = 0.25
RESERVE_BYTES = 1 << 30
UNIT_BATCHES = 16  # full ESM batches of one-frame chunks in a GPU work unit
UNIT_MULTIPLE = 128
MAX_UNIT_CHUNKS = 16384


@dataclass(frozen=True)
class Architecture:
    """What the activation model needs of a transformer encoder."""

    layers: int
    width: int  # D
    heads: int
    mlp_width: int  # F
    gated_mlp: bool = False  # the MLP projects to 2 F, then gates down to F
    scores_in_memory: bool = False  # attention scores (or a float bias of their shape) are formed

    def bytes_per_token(self, dtype: torch.dtype, longest: int) -> int:
        """Peak activation bytes per token of a batch whose longest sequence has `longest` tokens."""
        e = torch.empty((), dtype=dtype).element_size()
        r = 4 if dtype == torch.float16 else e
        d, f = self.width, self.mlp_width
        attention = r * d + 11 * e * d
        mlp = r * d + e * d + 2 * e * f + (2 * e * f if self.gated_mlp else 0)
        scores = self.heads * longest * (2 * e + 4) if self.scores_in_memory else 0
        return max(attention, mlp) + scores


ESM2_3B = Architecture(layers=36, width=2560, heads=40, mlp_width=10240)
DNABERT_S = Architecture(layers=12, width=768, heads=12, mlp_width=3072, gated_mlp=True, scores_in_memory=True)


def longest_tokens(model: str, chunk_length: int) -> int:
    """The most tokens one frame of a chunk takes: ESM2 a residue per codon (at most 1,022) plus
    BOS/EOS; DNABERT-S at most one token per base (an N is one [UNK]) plus [CLS]/[SEP]."""
    if model == "esm":
        return min(chunk_length // 3, 1022) + 2
    return chunk_length + 2


def memory_budget(arch: Architecture, free_bytes: int, dtype: torch.dtype, longest: int) -> int:
    """The token budget the activation model allows in `free_bytes`, clamped to MIN..MAX_TOKENS."""
    usable = free_bytes * (1 - RESERVE_SHARE) - RESERVE_BYTES
    tokens = int(max(0, usable) // arch.bytes_per_token(dtype, longest))
    return max(MIN_TOKENS, min(MAX_TOKENS, tokens // 1024 * 1024))


def architecture_of(embedder) -> Architecture:
    """The activation model's view of a loaded embedder (EsmEmbedder or DnabertEmbedder)."""
    if hasattr(embedder, "alphabet"):  # ESM2 through fair-esm
        model = embedder.model
        return Architecture(model.num_layers, model.embed_dim, model.attention_heads, 4 * model.embed_dim,
                            scores_in_memory=embedder.attention == "fair-esm")
    config = embedder.model.config
    return Architecture(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                        config.intermediate_size, gated_mlp=True, scores_in_memory=True)


def free_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device now (the models already loaded)."""
    return int(torch.cuda.mem_get_info(device)[0])


def token_budget(model: str, embedder, configured: int = 0, chunk_length: int = 500) -> int:
    """The token budget of `model` ("esm" or "dnabert"): the configured one; 2,048 on the CPU; on a
    GPU what the activation model allows in the memory free now (call it once the models are loaded)."""
    if configured > 0:
        return configured
    device = torch.device(embedder.device)
    if device.type != "cuda":
        return CPU_TOKENS
    dtype = next(embedder.model.parameters()).dtype
    return memory_budget(architecture_of(embedder), free_memory(device), dtype, longest_tokens(model, chunk_length))


def unit_chunks_for(esm_tokens: int, chunk_length: int) -> int:
    """The GPU work unit: UNIT_BATCHES full ESM batches of one-frame chunks, rounded up to a multiple
    of UNIT_MULTIPLE, at most MAX_UNIT_CHUNKS."""
    per_chunk = longest_tokens("esm", chunk_length)
    chunks = -(-UNIT_BATCHES * esm_tokens // per_chunk)
    return max(UNIT_MULTIPLE, min(MAX_UNIT_CHUNKS, -(-chunks // UNIT_MULTIPLE) * UNIT_MULTIPLE))


def planned_unit_chunks(batch, device: torch.device, chunk_length: int, pack, precision: str) -> int:
    """The work-unit size of a new run (rank 0, before the models load): `batch.unit_chunks` when set;
    CPU_UNIT_CHUNKS on the CPU; on a GPU the unit that follows the ESM budget: `batch.esm_tokens`, or
    the activation model's (ESM2-3B's) for the memory free now less what the pack's models will take."""
    if batch.unit_chunks > 0:
        return batch.unit_chunks
    if device.type != "cuda":
        return CPU_UNIT_CHUNKS
    esm_tokens = batch.esm_tokens
    if not esm_tokens:
        dtype = DTYPES[precision]
        free = free_memory(device) - weight_bytes_of(model_paths(pack), dtype)
        esm_tokens = memory_budget(ESM2_3B, free, dtype, longest_tokens("esm", chunk_length))
    return unit_chunks_for(esm_tokens, chunk_length)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_paths(pack) -> list[Path]:
    """The checkpoint files of a pack's two language models (already fetched)."""
    from vnp.models.dnabert import find_checkpoint, resolve_model_folder
    from vnp.models.esm import resolve_checkpoint

    return [find_checkpoint(resolve_model_folder(pack.dnabert)), resolve_checkpoint(pack.esm)]


def weight_bytes_of(files: list[Path], dtype: torch.dtype) -> int:
    """The device memory the models in `files` will take, from their size on disk: a checkpoint
    stored in 16-bit takes twice its size in float32; one stored in float32 takes half in 16-bit
    (over-counted here, which only lowers the planned budget)."""
    scale = max(1.0, torch.empty((), dtype=dtype).element_size() / 2)
    return int(sum(os.stat(path).st_size for path in files) * scale)
