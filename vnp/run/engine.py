"""The unit engine of `vnp predict` and `vnp embed` (and training): every rank busy, rank 0 the sink.

    rank r:  [prepare k+1 (helper thread)]  [compute k (device)]  post k --+
                                                                          |  up to `window`
    rank 0:  ... complete step k-window+1 <-------------------------------+  steps in flight
             -> sink stage (helper thread): one batched forward over the step's rows on the
                device (a side stream on CUDA), scores to the host -> sink.consume(units ascending)

A `Work` describes the units: how many, what each costs (optional), how to prepare one on the
CPU and how to compute it on the device. The units are put in dealing order (by estimated cost,
largest first, in a snake over the ranks, when the work can estimate it; else in input order) and
a DistributedSampler deals that order to the ranks, so the units of one step cost about the same on
every rank and no rank gets the larger unit of every step. A unit is
batched only with itself, so its results do not depend on the world size or the order.

Each step every rank posts a small header and then exactly its rows (run.exchange.Exchange); it
waits for the oldest step only once `window` steps are in flight, and nothing between posting a step
and completing it reads the device back. A stop request (SIGTERM/SIGUSR1) rides in the header: the
rank that completes step s with a stop in it has just posted step s + window - 1 (the same on every
rank), stops posting after it and drains, so every rank stops after the same step.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import time
from collections import deque
from contextlib import nullcontext
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from vnp.run import dist as vdist
from vnp.support.config import EngineConfig
from vnp.support.errors import PeerFailure
from vnp.run.exchange import NO_UNIT, CollectiveFailed, Computed, Delivery, Exchange, UnitResult, UnitRows

log = logging.getLogger("vnp")

__all__ = ["EngineStats", "RowSink", "Sink", "StopFlag", "UnitResult", "Work", "run_units"]

MIN_BATCH_ROWS = 4  # a step's forward sees at least this many rows (zero rows added): see SinkStage


class Sink(Protocol):
    """Rank 0's consumer of results: fresh units only, ascending unit order within a call, each once.

    `score` runs once per completed step over all of its rows, on rank 0's device; its output rows
    (and, with `keep_rows`, the embeddings) reach `consume` on the host as each unit's `scores`
    (`embeddings`)."""

    keep_rows: bool

    def score(self, rows: torch.Tensor) -> torch.Tensor | None: ...

    def consume(self, results: list[UnitResult]) -> None: ...

    def close(self) -> None: ...


class RowSink:
    """A sink that takes the embeddings and scores nothing (vnp embed, training's features)."""

    keep_rows = True

    def score(self, rows: torch.Tensor) -> None:
        return None


class Work(Protocol):
    """What the engine runs. `prepare` runs on a helper thread; `compute` on the main thread."""

    dim: int  # embedding width
    rows: int  # most frames (result rows) one unit can have: the fixed message size

    def units(self) -> Sequence[int]: ...

    def costs(self, units: Sequence[int]) -> np.ndarray | None:
        """Estimated device cost of each of these units (any unit of measure), or None."""

    def prepare(self, unit: int) -> Any: ...

    def compute(self, unit: int, prepared: Any) -> Computed: ...


@dataclass
class EngineStats:
    """Seconds this rank spent: in model forwards (busy), waiting on the exchange, waiting for its
    next prepared unit, estimating costs, waiting for rank 0's sink, and in the whole loop; what it
    sent in the loop (bytes) and the rows it computed; on rank 0 the sink stage's forward and the
    rest of its host work (decoding the exchange's headers included)."""

    busy_s: float = 0.0
    wait_s: float = 0.0
    prepare_wait_s: float = 0.0
    cost_s: float = 0.0
    sink_wait_s: float = 0.0
    loop_s: float = 0.0
    steps: int = 0
    units: int = 0
    exchange_bytes: int = 0
    frames: int = 0
    sink_forward_s: float = 0.0
    sink_other_s: float = 0.0
    stopped: bool = False
    per_rank: list = field(default_factory=list)

    def mine(self, rank: int) -> dict:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"rank": rank, "busy_s": round(self.busy_s, 3), "wait_s": round(self.wait_s, 3),
                "prepare_wait_s": round(self.prepare_wait_s, 3), "cost_s": round(self.cost_s, 3),
                "sink_wait_s": round(self.sink_wait_s, 3),
                "loop_s": round(self.loop_s, 3), "steps": self.steps, "units": self.units,
                "exchange_bytes": self.exchange_bytes, "frames": self.frames,
                **({"sink_forward_s": round(self.sink_forward_s, 6), "sink_other_s": round(self.sink_other_s, 6)}
                   if rank == 0 else {}),
                "peak_rss_mib": round(peak_mib, 1)}


class StopFlag:
    """Set by SIGTERM or SIGUSR1 (SLURM preemption, `--signal=USR1@120`): stop after this step.

    Under torchrun (or accelerate, which runs it) a rank's parent is the launcher's agent; if the
    agent is killed alone (`kill -9` of it, of its process group), nothing would ever stop the ranks.
    So a rank that finds its parent changed stops as on SIGTERM: the parent process id is compared
    with the one at the start wherever the flag is read (a system call, far cheaper than a step).
    """

    def __init__(self, parent: int | None = None) -> None:
        self._requested = False
        self.parent = parent  # the launcher's process id, watched; None: not watched
        self.reason = "signal"

    @classmethod
    def install(cls, watch_parent: bool | None = None) -> "StopFlag":
        """The flag, set by this process's stop signals; `watch_parent` (default: when a torchrun
        agent started this process) also sets it once the parent process is gone."""
        if watch_parent is None:
            watch_parent = "TORCHELASTIC_RUN_ID" in os.environ
        flag = cls(os.getppid() if watch_parent else None)
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, flag._handle)
        return flag

    def launcher_gone(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent

    @property
    def requested(self) -> bool:
        if not self._requested and self.launcher_gone():
            self._requested, self.reason = True, f"its launcher (process {self.parent}) is gone"
            log.warning("stopping: the launcher (process %d) is gone", self.parent)
        return self._requested

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = value

    def _handle(self, signum, frame) -> None:
        self.requested = True


def dealing_order(ctx: vdist.Context, work: Work, balance: bool, stats: EngineStats) -> list[int]:
    """The units in the order the sampler deals them: largest estimated cost first (ties in input
    order) when balancing, else input order. Costs are estimated once, shared out over the ranks
    and exchanged, so every rank derives the same order."""
    units = list(work.units())
    if not balance or ctx.world_size == 1 or not units:
        return units
    t0 = time.perf_counter()
    share = units[ctx.rank::ctx.world_size]
    mine = work.costs(share)
    stats.cost_s = time.perf_counter() - t0
    if mine is None:
        return units
    pieces = vdist.all_gather_object(ctx, np.asarray(mine, dtype=np.float64))
    costs = np.empty(len(units), dtype=np.float64)
    for rank, piece in enumerate(pieces):
        costs[rank::ctx.world_size] = piece
    order = np.lexsort((np.asarray(units), -costs))  # cost descending, then unit ascending
    return snake([units[i] for i in order], ctx.world_size)


def snake(order: list[int], world_size: int) -> list[int]:
    """Every other group of `world_size` reversed, so that the sampler, which gives rank r the
    r-th unit of each group, does not give rank 0 the largest unit of every step."""
    groups = [order[i:i + world_size] for i in range(0, len(order), world_size)]
    return [unit for g, group in enumerate(groups) for unit in (group[::-1] if g % 2 else group)]


def helper_thread(name: str, device: torch.device | None = None) -> ThreadPoolExecutor:
    """One worker thread that computes with this rank's torch thread count (OpenMP's count is
    per thread, and a different count changes float summation order, and so the tables) and, on
    CUDA, this rank's device (the current device is per thread too)."""
    return ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_helper_init,
                              initargs=(torch.get_num_threads(), device))


def _helper_init(threads: int, device: torch.device | None) -> None:
    torch.set_num_threads(threads)
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)


class Prefetcher:
    """Prepares the next units on one helper thread while the device works on the current one."""

    def __init__(self, prepare: Callable[[int], Any], units: Sequence[int | None], depth: int):
        self.prepare, self.units, self.depth = prepare, units, depth
        self.pool = helper_thread("vnp-prepare") if depth > 0 else None
        self.futures: dict[int, Any] = {}

    def get(self, step: int):
        unit = self.units[step]
        if self.pool is None:
            return None if unit is None else self.prepare(unit)
        for ahead in range(step, min(step + self.depth + 1, len(self.units))):
            if ahead not in self.futures and self.units[ahead] is not None:
                self.futures[ahead] = self.pool.submit(self.prepare, self.units[ahead])
        future = self.futures.pop(step, None)
        return None if future is None else future.result()

    def close(self) -> None:
        if self.pool is not None:
            for future in self.futures.values():
                future.cancel()
            self.pool.shutdown(wait=True)


class ComputeTimer:
    """Seconds spent computing units. On CUDA the forwards run asynchronously, so the time is taken
    from events recorded around each unit and read once its step has completed (no extra sync);
    elsewhere it is the wall time of the call."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: deque = deque()
        self.seconds = 0.0

    def start(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, started) -> None:
        if not self.cuda:
            self.seconds += time.perf_counter() - started
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.events.append((started, end))

    def settle(self, keep: int = 0) -> None:
        """Add the time of every recorded unit but the last `keep` (those may still be running)."""
        while len(self.events) > keep:
            started, end = self.events.popleft()
            end.synchronize()
            self.seconds += started.elapsed_time(end) / 1000


class SinkStage:
    """Rank 0 hands each completed step to the sink on one helper thread, in order, so that
    classifying and committing do not hold up its next step (and with it every other rank).

    Per step: one `sink.score` over all of the step's rows (at least MIN_BATCH_ROWS: a matrix
    product of one to three rows takes another kernel whose sums round differently, and which units
    share a step depends on the world size), then the scores (and, with `keep_rows`, the rows) to
    the host, then `sink.consume` with the fresh units ascending. On CUDA the forward and the copies
    run on the side stream the rows arrived on, into pinned buffers, and only this thread waits for
    them; on CPU the same steps run in turn. At most `depth` steps wait for the sink; a failure in
    the sink is raised on the main thread."""

    def __init__(self, sink: Sink, depth: int, device: torch.device):
        self.sink, self.depth = sink, depth
        self.pool = helper_thread("vnp-sink", device)
        self.futures: deque[Future] = deque()
        self.forward_s = 0.0  # the sink's forwards (device time on CUDA)
        self.other_s = 0.0  # the rest of the stage's host work (waiting for the device left out)

    def submit(self, delivery: Delivery, fresh: list[UnitRows]) -> None:
        while self.futures and (self.futures[0].done() or len(self.futures) >= self.depth):
            self.futures.popleft().result()
        self.futures.append(self.pool.submit(self._run, delivery, fresh))

    def _run(self, delivery: Delivery, fresh: list[UnitRows]) -> None:
        t0 = time.perf_counter()
        rows, stream = delivery.rows, delivery.stream
        n = rows.shape[0]
        scores = kept = None
        forward_s = waited_s = 0.0
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            # a step without rows still asks the sink, so that a scoring sink always sees (0, C) scores
            batch = rows if n >= MIN_BATCH_ROWS else torch.cat([rows, rows.new_zeros((MIN_BATCH_ROWS - n, rows.shape[1]))])
            timer = _ForwardTimer(stream)
            scored = self.sink.score(batch)
            forward_s = timer.stop()
            scores = None if scored is None else _to_host(scored[:n])
            if self.sink.keep_rows:
                kept = _to_host(rows)
            if stream is not None:
                done = torch.cuda.Event()
                done.record(stream)
                t1 = time.perf_counter()
                done.synchronize()  # this thread only: neither the compute stream nor the main thread
                waited_s = time.perf_counter() - t1
                forward_s = timer.elapsed()
        scores_np = None if scores is None else _numpy(scores)
        kept_np = None if kept is None else _numpy(kept)
        results = [UnitResult(u.unit, u.keys, None if kept_np is None else kept_np[u.start:u.stop],
                              None if scores_np is None else scores_np[u.start:u.stop]) for u in fresh]
        self.sink.consume(results)
        self.forward_s += forward_s
        self.other_s += time.perf_counter() - t0 - waited_s - (0.0 if stream is not None else forward_s)

    def drain(self, quiet: bool = False) -> None:
        """Wait for the sink; `quiet` (the loop already failed): log a sink failure, keep the first."""
        try:
            while self.futures:
                try:
                    self.futures.popleft().result()
                except Exception:
                    if not quiet:
                        raise
                    log.exception("the sink failed too")
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _ForwardTimer:
    """Wall time of the sink's forward on CPU; on CUDA, events on the side stream read after it
    has been waited for."""

    def __init__(self, stream: torch.cuda.Stream | None):
        self.stream, self.t0 = stream, time.perf_counter()
        if stream is not None:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record(stream)

    def stop(self) -> float:
        if self.stream is None:
            return time.perf_counter() - self.t0
        self.end.record(self.stream)
        return 0.0

    def elapsed(self) -> float:
        return self.start.elapsed_time(self.end) / 1000


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy begun now: into pinned memory, non-blocking, from a GPU; the tensor itself on CPU."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def _numpy(host: torch.Tensor) -> np.ndarray:
    """NumPy of a finished host copy; pinned buffers are copied out (pinned memory is scarce)."""
    array = host.detach().numpy()
    return array.copy() if host.is_pinned() else array


def close_after_failure(sink: Sink) -> None:
    """Close (commit) the sink after the loop or the sink itself failed; the first error is the one
    raised, a second one from closing is logged."""
    try:
        sink.close()
    except Exception:
        log.exception("closing the sink failed too")


def run_units(ctx: vdist.Context, work: Work, sink: Sink | None, stop, settings: EngineConfig,
              recorder: Callable[[str, int], None] | None = None) -> EngineStats:
    """Run every unit of `work` on the ranks; rank 0 hands results to `sink` (None elsewhere) and
    closes it at the end, also when the loop fails. Returns this rank's stats with every rank's in
    `per_rank`. `stop.requested` is polled (set by a signal handler) and set on every rank when any
    rank asked. `recorder` sees the exchange's events (tests: see Exchange)."""
    stats = EngineStats()
    t_start = time.perf_counter()
    order = dealing_order(ctx, work, settings.balance, stats)
    slots = vdist.shard(len(order), ctx)
    units = [None if slot is None else order[slot] for slot in slots]
    device = torch.device("cpu") if ctx.backend == "gloo" else ctx.device
    side = torch.cuda.Stream(ctx.device) if sink is not None and ctx.device.type == "cuda" else None
    exchange = Exchange(ctx.world_size, ctx.rank, device, work.rows, work.dim, side, recorder)
    prefetch = Prefetcher(work.prepare, units, settings.prefetch)
    window = max(1, settings.window)
    # The main thread feeds the device and mostly waits (on it, on the exchange) with the GIL
    # released; a short switch interval gives it the GIL back soon after, while the helper thread
    # runs Python (translation).
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.0005))
    delivered: set[int] = set()
    consumer = SinkStage(sink, window, ctx.device) if sink is not None else None
    unit_rows_s = 0.0  # rank 0: decoding the headers and picking the fresh units
    log.info("%d units, %d steps on this rank (balance=%s, prefetch=%d, window=%d)", len(order), len(units),
             settings.balance, settings.prefetch, window)

    def complete_one() -> bool:
        nonlocal unit_rows_s
        t0 = time.perf_counter()
        try:
            delivery, stop_any = exchange.complete_oldest()
        except CollectiveFailed as err:
            raise PeerFailure(f"collective failed ({err})", reported=True) from None
        stats.wait_s += time.perf_counter() - t0 - exchange.decode_s
        unit_rows_s += exchange.decode_s
        timer.settle(keep=len(exchange))
        if consumer is not None:
            t1 = time.perf_counter()
            fresh = sorted((u for u in delivery.units if u.unit not in delivered), key=lambda u: u.unit)
            delivered.update(u.unit for u in fresh)
            t2 = time.perf_counter()
            unit_rows_s += t2 - t1
            if fresh:
                consumer.submit(delivery, fresh)
                stats.sink_wait_s += time.perf_counter() - t2
        return stop_any

    timer = ComputeTimer(ctx.device)
    empty = Computed(NO_UNIT, np.zeros(0, np.int64), torch.zeros((0, work.dim)))
    try:
        for step, unit in enumerate(units):
            t0 = time.perf_counter()
            prepared = prefetch.get(step)
            stats.prepare_wait_s += time.perf_counter() - t0
            started = timer.start()
            computed = empty if unit is None else work.compute(unit, prepared)
            timer.stop(started)
            stats.steps += 1
            stats.units += unit is not None
            try:
                exchange.post(computed, stop.requested)
            except CollectiveFailed as err:
                raise PeerFailure(f"step {step}: collective failed ({err})", reported=True) from None
            if len(exchange) >= window and complete_one():
                stats.stopped = True  # every rank learns it after posting this same step
                break
        while len(exchange):
            stats.stopped |= complete_one()
    except BaseException:
        if consumer is not None:  # what arrived is still handed over and closed (committed)
            consumer.drain(quiet=True)
            close_after_failure(sink)
        raise
    else:
        if consumer is not None:
            t0 = time.perf_counter()
            try:
                consumer.drain()
            except BaseException:  # the sink failed on the last steps: what it took is committed
                close_after_failure(sink)
                raise
            sink.close()
            stats.sink_wait_s += time.perf_counter() - t0
    finally:
        prefetch.close()
        sys.setswitchinterval(switch_interval)
    timer.settle()
    stats.busy_s = timer.seconds
    stats.exchange_bytes, stats.frames = exchange.sent_bytes, exchange.frames
    if consumer is not None:
        stats.sink_forward_s, stats.sink_other_s = consumer.forward_s, consumer.other_s + unit_rows_s
    if stats.stopped:
        stop.requested = True
        log.info("stop requested: left after step %d", stats.steps - 1)
    stats.loop_s = time.perf_counter() - t_start
    if sink is not None and not stats.stopped and delivered != set(order):
        missing = sorted(set(order) - delivered)
        raise RuntimeError(f"work units missing after the last step: {missing[:5]}... ({len(missing)} in all)")
    stats.per_rank = vdist.all_gather_object(ctx, stats.mine(ctx.rank))
    return stats
