"""Moving each step's results to rank 0: the only place where the unit loop calls torch.distributed.

Every rank posts one fixed-shape message per step, in the same order, even when its slot was
padding: an int64 meta row (unit, frame count, stop request, then the frame keys padded with -1)
that every rank receives (all_gather), and the embeddings padded to the unit's largest possible
frame count that rank 0 receives (gather). Both are issued with async_op=True: shapes are known
in advance, so no header round trip is needed, and a rank can run up to `window` steps ahead of
the slowest before it waits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

NO_UNIT = -1  # a rank whose sampler slot was padding sends this instead of a unit index
META = 3  # unit, count, stop


@dataclass
class UnitResult:
    """The frames of one work unit: global frame keys (chunk * 6 + frame) and embeddings."""

    unit: int
    keys: np.ndarray  # int64 [F]
    embeddings: np.ndarray  # float32 [F, D]


@dataclass
class Computed:
    """One rank's result of one step before the exchange: embeddings still on the device."""

    unit: int
    keys: np.ndarray  # int64 [F]
    embeddings: torch.Tensor  # float32 [F, D], any device


class CollectiveFailed(RuntimeError):
    """A collective failed: another rank died or stopped answering."""


@dataclass
class _InFlight:
    meta: list[torch.Tensor]  # every rank's meta row (filled once the all_gather completes)
    payload: list[torch.Tensor] | None  # every rank's embeddings on rank 0
    works: list  # the async handles
    keep: tuple  # send buffers: alive until the collectives complete


class Exchange:
    """Posts each step's messages and hands back completed steps, oldest first."""

    def __init__(self, world_size: int, rank: int, device: torch.device, rows: int, dim: int):
        self.world_size, self.rank, self.device = world_size, rank, device
        self.rows, self.dim = max(1, rows), dim
        self.in_flight: deque = deque()

    def post(self, computed: Computed, stop: bool) -> None:
        count = len(computed.keys)
        if count > self.rows:
            raise RuntimeError(f"unit {computed.unit}: {count} frames, more than the {self.rows} a message holds")
        meta = torch.full((META + self.rows,), -1, dtype=torch.int64)
        meta[:META] = torch.tensor([computed.unit, count, int(stop)])
        meta[META:META + count] = torch.from_numpy(computed.keys)
        if self.world_size == 1:
            self.in_flight.append(_InFlight([meta], [computed.embeddings], [], ()))
            return
        meta = meta.to(self.device, non_blocking=True)
        payload = torch.zeros((self.rows, self.dim), dtype=torch.float32, device=self.device)
        payload[:count] = computed.embeddings.to(self.device, non_blocking=True)
        metas = [torch.empty_like(meta) for _ in range(self.world_size)]
        payloads = [torch.empty_like(payload) for _ in range(self.world_size)] if self.rank == 0 else None
        try:
            works = [dist.all_gather(metas, meta, async_op=True),
                     dist.gather(payload, payloads, dst=0, async_op=True)]
        except RuntimeError as err:
            raise CollectiveFailed(str(err).splitlines()[0]) from None
        self.in_flight.append(_InFlight(metas, payloads, works, (meta, payload)))

    def __len__(self) -> int:
        return len(self.in_flight)

    def complete_oldest(self) -> tuple[list[UnitResult], bool]:
        """Wait for the oldest posted step: its results on rank 0 (in rank order; none elsewhere,
        padding slots left out) and whether any rank asked to stop in it."""
        step = self.in_flight.popleft()
        try:
            for work in step.works:
                work.wait()
        except RuntimeError as err:
            raise CollectiveFailed(str(err).splitlines()[0]) from None
        metas = torch.stack(step.meta).cpu().numpy()  # one small copy for every rank's header
        stop = bool(metas[:, 2].any())
        if self.rank != 0:
            return [], stop
        if self.world_size == 1:
            embeddings = [step.payload[0].cpu()]
        else:
            embeddings = list(torch.stack(step.payload).cpu())  # one device-to-host copy per step
        results = []
        for meta, emb in zip(metas, embeddings):
            unit, count = int(meta[0]), int(meta[1])
            if unit != NO_UNIT:
                results.append(UnitResult(unit, meta[META:META + count].copy(), emb[:count].numpy()))
        return results, stop
