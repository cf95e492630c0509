"""Moving each step's results to rank 0: the only place where the unit loop calls torch.distributed.

Each step every rank posts, in the same order, a small fixed-size header (unit, frame count, stop
request, first frame key and a bit mask of the unit's frame keys) to every rank: an `all_gather`
on a gloo group of its own, so headers are host memory on any backend and reading one never waits
on a device. Once a step's header has arrived, each rank knows every rank's frame count for that
step, and each rank but rank 0 sends exactly its rows (`isend`, on the default group: NCCL on GPUs)
while rank 0 receives them (`irecv`) into one buffer in rank order, its own rows copied in. No
padding rows travel. Payloads are posted in step order on every rank, as soon as a header is seen
complete (polled, never waited for) and at the latest when the step is completed; headers and
payloads are on two groups, so each group sees its operations in the same order on every rank.

A rank runs up to `window` steps ahead of the slowest before it completes (waits for) its oldest
step. On CUDA, rank 0's receives and the copy of its own rows run on a side stream (the sink's), so
the rows of a step are ready on that stream without the host or the compute stream waiting.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

NO_UNIT = -1  # a rank whose sampler slot was padding sends this instead of a unit index
HEADER = 4  # unit, frame count, stop, first key; then the key bit mask in int64 words
TAG_SPAN = 1 << 30  # point-to-point tags: the step number modulo this


@dataclass
class UnitResult:
    """The frames of one work unit on rank 0's host: global frame keys (chunk * 6 + frame), their
    embeddings (when the sink keeps rows) and their scores (when the sink scores)."""

    unit: int
    keys: np.ndarray  # int64 [F]
    embeddings: np.ndarray | None = None  # float32 [F, D]
    scores: np.ndarray | None = None  # float32 [F, C]


@dataclass
class Computed:
    """One rank's result of one step before the exchange: embeddings still on the device."""

    unit: int
    keys: np.ndarray  # int64 [F], ascending, spanning at most the work's `rows` keys
    embeddings: torch.Tensor  # float32 [F, D], any device


@dataclass
class UnitRows:
    """Where one unit of a completed step lies in the step's rows."""

    unit: int
    keys: np.ndarray  # int64 [F]
    start: int  # first row of the unit in Delivery.rows

    @property
    def stop(self) -> int:
        return self.start + len(self.keys)


@dataclass
class Delivery:
    """One completed step on rank 0: its units (rank order, padding slots left out) and every
    unit's rows in one tensor, ready on `stream` (CUDA) or now (CPU)."""

    units: list[UnitRows]
    rows: torch.Tensor  # float32 [N, D] on the exchange's device
    stream: torch.cuda.Stream | None = None


class CollectiveFailed(RuntimeError):
    """A collective failed: another rank died or stopped answering."""


def encode_header(unit: int, keys: np.ndarray, stop: bool, words: int) -> np.ndarray:
    """unit, count, stop, first key, then a bit per key offset from the first (`words` int64)."""
    header = np.zeros(HEADER + words, dtype=np.int64)
    header[:HEADER] = (unit, len(keys), int(stop), keys[0] if len(keys) else 0)
    if len(keys):
        offsets = keys - keys[0]
        if len(keys) > 1 and not bool(np.all(offsets[1:] > offsets[:-1])) or offsets[-1] >= 64 * words:
            raise RuntimeError(f"unit {unit}: frame keys must ascend and span at most {64 * words} keys")
        bits = np.zeros(64 * words, dtype=np.uint8)
        bits[offsets] = 1
        header[HEADER:] = np.packbits(bits, bitorder="little").view(np.int64)
    return header


def decode_keys(header: np.ndarray) -> np.ndarray:
    count, first = int(header[1]), int(header[3])
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.ascontiguousarray(header[HEADER:]).view(np.uint8), bitorder="little")
    keys = np.flatnonzero(bits).astype(np.int64) + first
    if len(keys) != count:
        raise RuntimeError(f"unit {int(header[0])}: header says {count} frames, its key mask {len(keys)}")
    return keys


@dataclass
class _Step:
    number: int
    header: torch.Tensor  # this rank's header: alive until the all_gather completes
    embeddings: torch.Tensor  # this rank's rows (on the exchange's device)
    ready: torch.cuda.Event | None = None  # rank 0 on CUDA: its rows are computed
    headers: list[torch.Tensor] | None = None  # every rank's header, once the all_gather is done
    header_work: object = None
    table: np.ndarray | None = None  # [world_size, HEADER + words], once read
    rows: torch.Tensor | None = None  # rank 0: every rank's rows
    works: list = field(default_factory=list)  # the payload's point-to-point handles


class Exchange:
    """Posts each step's header and rows; hands back completed steps, oldest first.

    `recorder(event, step)` (tests): "post" when a step is posted, "header" when its header is
    read on the host (a gloo receive, no device involved), "wait" when the loop waits for it.
    """

    def __init__(self, world_size: int, rank: int, device: torch.device, rows: int, dim: int,
                 stream: torch.cuda.Stream | None = None, recorder: Callable[[str, int], None] | None = None):
        self.world_size, self.rank, self.device, self.dim = world_size, rank, device, dim
        self.words = -(-max(1, rows) // 64)
        self.stream = stream if device.type == "cuda" else None
        self.record = recorder or (lambda event, step: None)
        self.group = dist.new_group(backend="gloo") if world_size > 1 else None
        self.in_flight: deque[_Step] = deque()
        self.posted = 0
        self.sent_bytes = 0  # everything this rank sent in the loop: its headers and rows
        self.frames = 0  # rows this rank computed (and sent, unless it is rank 0)
        self.decode_s = 0.0  # host time of the last completion after its waits (rank 0: decoding)

    def __len__(self) -> int:
        return len(self.in_flight)

    def post(self, computed: Computed, stop: bool) -> None:
        number, self.posted = self.posted, self.posted + 1
        header = torch.from_numpy(encode_header(computed.unit, computed.keys, stop, self.words))
        embeddings = computed.embeddings
        if embeddings.device != self.device:  # no rows, or a GPU rank exchanging over gloo
            embeddings = embeddings.to(self.device) if len(computed.keys) else \
                torch.empty((0, self.dim), dtype=torch.float32, device=self.device)
        self.frames += len(computed.keys)
        step = _Step(number, header, embeddings)
        self.record("post", number)
        if self.stream is not None:
            step.ready = torch.cuda.Event()
            step.ready.record()  # on the compute stream, after this unit's forwards
        if self.world_size == 1:
            step.table = header.numpy()[None]
            self.in_flight.append(step)
            return
        step.headers = [torch.empty_like(header) for _ in range(self.world_size)]
        try:
            step.header_work = dist.all_gather(step.headers, header, group=self.group, async_op=True)
        except RuntimeError as err:
            raise CollectiveFailed(str(err).splitlines()[0]) from None
        self.sent_bytes += header.nbytes
        self.in_flight.append(step)
        for earlier in self.in_flight:  # payloads in step order, each once its header is here
            if earlier.table is None:
                if not earlier.header_work.is_completed():
                    break
                self._post_payload(earlier)

    def _post_payload(self, step: _Step) -> None:
        try:
            step.header_work.wait()
        except RuntimeError as err:
            raise CollectiveFailed(str(err).splitlines()[0]) from None
        step.table = torch.stack(step.headers).numpy()
        step.headers = None
        self.record("header", step.number)
        counts = step.table[:, 1]
        tag = step.number % TAG_SPAN
        try:
            if self.rank != 0:
                if counts[self.rank]:
                    step.works = dist.batch_isend_irecv([dist.P2POp(dist.isend, step.embeddings, 0, tag=tag)])
                    self.sent_bytes += step.embeddings.nbytes
                return
            ends = np.cumsum(counts)
            with _on(self.stream):
                step.rows = torch.empty((int(ends[-1]), self.dim), dtype=torch.float32, device=self.device)
                ops = [dist.P2POp(dist.irecv, step.rows[ends[r - 1]:ends[r]], r, tag=tag)
                       for r in range(1, self.world_size) if counts[r]]
                step.works = dist.batch_isend_irecv(ops) if ops else []
                if counts[0]:
                    self._own_rows(step, step.rows[:ends[0]])
        except RuntimeError as err:
            raise CollectiveFailed(str(err).splitlines()[0]) from None

    def _own_rows(self, step: _Step, into: torch.Tensor | None = None) -> torch.Tensor:
        """Rank 0's rows of this step, ordered after their forwards on the side stream (CUDA)."""
        if self.stream is not None:
            self.stream.wait_event(step.ready)
            step.embeddings.record_stream(self.stream)
        if into is None:
            return step.embeddings
        return into.copy_(step.embeddings, non_blocking=True)

    def complete_oldest(self) -> tuple[Delivery | None, bool]:
        """The oldest posted step: on rank 0 its delivery (None elsewhere), and whether any rank
        asked to stop in it."""
        step = self.in_flight[0]
        if step.table is None:
            self._post_payload(step)
        self.in_flight.popleft()
        self.record("wait", step.number)
        try:
            if self.stream is not None:  # NCCL: the side stream waits for the receives, not the host
                with torch.cuda.stream(self.stream):
                    for work in step.works:
                        work.wait()
            elif self.device.type == "cpu":  # gloo: the receives/sends are done on return
                for work in step.works:
                    work.wait()
            # a CUDA rank other than 0 leaves its sends to NCCL, which holds their buffers
        except RuntimeError as err:
            raise CollectiveFailed(str(err).splitlines()[0]) from None
        t0 = time.perf_counter()
        table = step.table
        stop = bool(table[:, 2].any())
        if self.rank != 0:
            return None, stop
        rows = self._own_rows(step) if self.world_size == 1 else step.rows
        starts = np.concatenate([[0], np.cumsum(table[:, 1])[:-1]])
        units = [UnitRows(int(header[0]), decode_keys(header), int(start))
                 for header, start in zip(table, starts) if header[0] != NO_UNIT]
        self.decode_s = time.perf_counter() - t0
        return Delivery(units, rows, self.stream), stop


def _on(stream: torch.cuda.Stream | None):
    """`torch.cuda.stream(stream)`, or nothing without one."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
