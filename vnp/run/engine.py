"""The unit engine of `vnp predict` and `vnp embed` (and training): every rank busy, rank 0 the sink.

    rank r:  [prepare k+1 (helper thread)]  [compute k (device)]  post k --+
                                                                          |  up to `window`
    rank 0:  ... complete step k-window+1 <-------------------------------+  steps in flight
             -> sink.consume(results in ascending unit order)

A `Work` describes the units: how many, what each costs (optional), how to prepare one on the
CPU and how to compute it on the device. The units are put in dealing order (by estimated cost,
largest first, in a snake over the ranks, when the work can estimate it; else in input order) and
a DistributedSampler deals that order to the ranks, so the units of one step cost about the same
on every rank and no rank gets the larger unit of every step. A unit is
batched only with itself, so its results do not depend on the world size or the order.

Each step every rank posts a fixed-shape message (gather.Exchange); it waits for the oldest step
only once `window` steps are in flight. A stop request (SIGTERM/SIGUSR1) rides in the message: the
rank that completes step s with a stop in it has just posted step s + window - 1 (the same on every
rank), stops posting after it and drains, so every rank stops after the same step.
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from vnp.run import dist as vdist
from vnp.run.exchange import NO_UNIT, CollectiveFailed, Computed, Exchange, UnitResult

log = logging.getLogger("vnp")

__all__ = ["EngineSettings", "EngineStats", "Sink", "StopFlag", "UnitResult", "Work", "run_units"]


class Sink(Protocol):
    """Rank 0's consumer of results: fresh units only, ascending unit order within a call, each once."""

    def consume(self, results: list[UnitResult]) -> None: ...

    def close(self) -> None: ...


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
class EngineSettings:
    balance: bool = True  # deal units in cost order (False: input order, as before)
    prefetch: int = 1  # units prepared ahead on the helper thread (0: prepare inline)
    window: int = 4  # steps in flight before a rank waits (1: wait every step)

    @classmethod
    def from_config(cls, engine) -> "EngineSettings":
        """From the `engine` section of a configuration (vnp.support.config.EngineConfig)."""
        return cls(engine.balance, engine.prefetch, engine.window)


@dataclass
class EngineStats:
    """Seconds this rank spent: in model forwards (busy), waiting on the exchange, waiting for its
    next prepared unit, estimating costs, waiting for rank 0's sink, and in the whole loop."""

    busy_s: float = 0.0
    wait_s: float = 0.0
    prepare_wait_s: float = 0.0
    cost_s: float = 0.0
    sink_wait_s: float = 0.0
    loop_s: float = 0.0
    steps: int = 0
    units: int = 0
    stopped: bool = False
    per_rank: list = field(default_factory=list)

    def mine(self, rank: int) -> dict:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"rank": rank, "busy_s": round(self.busy_s, 3), "wait_s": round(self.wait_s, 3),
                "prepare_wait_s": round(self.prepare_wait_s, 3), "cost_s": round(self.cost_s, 3),
                "sink_wait_s": round(self.sink_wait_s, 3),
                "loop_s": round(self.loop_s, 3), "steps": self.steps, "units": self.units,
                "peak_rss_mib": round(peak_mib, 1)}


class StopFlag:
    """Set by SIGTERM or SIGUSR1 (SLURM preemption, `--signal=USR1@120`): stop after this step."""

    def __init__(self) -> None:
        self.requested = False

    @classmethod
    def install(cls) -> "StopFlag":
        flag = cls()
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, flag._handle)
        return flag

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


def helper_thread(name: str) -> ThreadPoolExecutor:
    """One worker thread that computes with this rank's torch thread count: OpenMP's count is
    per thread, and a different count changes float summation order (and so the tables)."""
    return ThreadPoolExecutor(1, thread_name_prefix=name, initializer=torch.set_num_threads,
                              initargs=(torch.get_num_threads(),))


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


class SinkThread:
    """Rank 0 hands each completed step to the sink on one helper thread, in order, so that
    classifying and committing do not hold up its next step (and with it every other rank).
    At most `depth` steps wait for the sink; a failure in the sink is raised on the main thread."""

    def __init__(self, sink: Sink, depth: int):
        self.sink, self.depth = sink, depth
        self.pool = helper_thread("vnp-sink")
        self.futures: deque[Future] = deque()

    def submit(self, results: list[UnitResult]) -> None:
        while self.futures and (self.futures[0].done() or len(self.futures) >= self.depth):
            self.futures.popleft().result()
        self.futures.append(self.pool.submit(self.sink.consume, results))

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


def run_units(ctx: vdist.Context, work: Work, sink: Sink | None, stop, settings: EngineSettings) -> EngineStats:
    """Run every unit of `work` on the ranks; rank 0 hands results to `sink` (None elsewhere) and
    closes it at the end, also when the loop fails. Returns this rank's stats with every rank's in
    `per_rank`. `stop.requested` is polled (set by a signal handler) and set on every rank when any
    rank asked."""
    stats = EngineStats()
    t_start = time.perf_counter()
    order = dealing_order(ctx, work, settings.balance, stats)
    slots = vdist.shard(len(order), ctx)
    units = [None if slot is None else order[slot] for slot in slots]
    device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    exchange = Exchange(ctx.world_size, ctx.rank, device, work.rows, work.dim)
    prefetch = Prefetcher(work.prepare, units, settings.prefetch)
    window = max(1, settings.window)
    # The main thread feeds the device and mostly waits (on it, on the exchange) with the GIL
    # released; a short switch interval gives it the GIL back soon after, while the helper thread
    # runs Python (translation).
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.0005))
    delivered: set[int] = set()
    consumer = SinkThread(sink, window) if sink is not None else None
    log.info("%d units, %d steps on this rank (balance=%s, prefetch=%d, window=%d)", len(order), len(units),
             settings.balance, settings.prefetch, window)

    def complete_one() -> bool:
        t0 = time.perf_counter()
        try:
            results, stop_any = exchange.complete_oldest()
        except CollectiveFailed as err:
            raise vdist.PeerFailure(f"collective failed ({err})") from None
        stats.wait_s += time.perf_counter() - t0
        timer.settle(keep=len(exchange))
        if consumer is not None:
            fresh = sorted((r for r in results if r.unit not in delivered), key=lambda r: r.unit)
            delivered.update(r.unit for r in fresh)
            if fresh:
                t1 = time.perf_counter()
                consumer.submit(fresh)
                stats.sink_wait_s += time.perf_counter() - t1
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
                raise vdist.PeerFailure(f"step {step}: collective failed ({err})") from None
            if len(exchange) >= window and complete_one():
                stats.stopped = True  # every rank learns it after posting this same step
                break
        while len(exchange):
            stats.stopped |= complete_one()
    except BaseException:
        if consumer is not None:  # what arrived is still handed over and closed (committed)
            consumer.drain(quiet=True)
            try:
                sink.close()
            except Exception:
                log.exception("closing the sink failed too")
        raise
    else:
        if consumer is not None:
            t0 = time.perf_counter()
            consumer.drain()
            sink.close()
            stats.sink_wait_s += time.perf_counter() - t0
    finally:
        prefetch.close()
        sys.setswitchinterval(switch_interval)
    timer.settle()
    stats.busy_s = timer.seconds
    if stats.stopped:
        stop.requested = True
        log.info("stop requested: left after step %d", stats.steps - 1)
    stats.loop_s = time.perf_counter() - t_start
    if sink is not None and not stats.stopped and delivered != set(order):
        missing = sorted(set(order) - delivered)
        raise RuntimeError(f"work units missing after the last step: {missing[:5]}... ({len(missing)} in all)")
    stats.per_rank = vdist.all_gather_object(ctx, stats.mine(ctx.rank))
    return stats
