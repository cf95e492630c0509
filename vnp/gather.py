"""Moving each step's embeddings to rank 0 with torch.distributed collectives.

Every rank calls `gather_step` once per step, in the same order, even when its shard is empty:
an all_gather of (unit, frame count) headers, then a gather of frame keys and of embeddings padded
to the step's largest count. Rank 0 cuts the padding off by count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

NO_UNIT = -1  # a rank whose sampler slot was padding sends this instead of a unit index


@dataclass
class UnitResult:
    """The frames of one work unit: global frame keys (chunk * 6 + frame) and embeddings."""

    unit: int
    keys: np.ndarray  # int64 [F]
    embeddings: np.ndarray  # float32 [F, D]


def gather_step(result: UnitResult, dim: int, device: torch.device, world_size: int, rank: int,
                stop: bool = False) -> tuple[list[UnitResult], bool]:
    """All ranks' results of this step on rank 0 (in rank order; empty elsewhere), and whether any
    rank asked to stop (every rank learns it in the same step)."""
    if world_size == 1:
        return [result], stop
    header = torch.tensor([result.unit, len(result.keys), int(stop)], dtype=torch.int64, device=device)
    headers = [torch.empty_like(header) for _ in range(world_size)]
    dist.all_gather(headers, header)
    counts = [int(h[1]) for h in headers]
    stop_all = any(int(h[2]) for h in headers)
    rows = max(1, max(counts))  # (rows,) and (rows, D): equal shapes on every rank
    keys = torch.full((rows,), -1, dtype=torch.int64, device=device)
    emb = torch.zeros((rows, dim), dtype=torch.float32, device=device)
    if counts[rank]:
        keys[: counts[rank]] = torch.from_numpy(result.keys).to(device)
        emb[: counts[rank]] = torch.from_numpy(result.embeddings).to(device)
    key_list = [torch.empty_like(keys) for _ in range(world_size)] if rank == 0 else None
    emb_list = [torch.empty_like(emb) for _ in range(world_size)] if rank == 0 else None
    dist.gather(keys, key_list, dst=0)
    dist.gather(emb, emb_list, dst=0)
    if rank != 0:
        return [], stop_all
    return [UnitResult(int(h[0]), k[:n].cpu().numpy(), e[:n].cpu().numpy())
            for h, n, k, e in zip(headers, counts, key_list, emb_list)], stop_all
