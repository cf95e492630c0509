"""The step loop: every rank embeds its work units; rank 0 classifies, commits and reports progress.

A work unit is a block of `batch.unit_chunks` consecutive chunks. Units are dealt to ranks by a
DistributedSampler (no shuffle). Because a unit's frames are batched only with each other, every
frame's embedding is computed the same way whatever the world size, and so are the tables.
"""

from __future__ import annotations

import logging
import resource
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from vnp import dist as vdist
from vnp.config import PredictConfig
from vnp.errors import InputError
from vnp.chunking import chunk_id
from vnp.gather import NO_UNIT, UnitResult, gather_step
from vnp.models import token_budget
from vnp.plan import SEQUENCES, iter_ids, read_chunks
from vnp.run_state import RunState
from vnp.store import part_number, write_atomic
from vnp.translate import FRAME_NAMES, translate_chunks

log = logging.getLogger("vnp")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


@dataclass
class EmbedTimes:
    """Seconds this rank spent per stage; rank 0 adds the other ranks' at the end."""

    translate: float = 0.0
    dnabert: float = 0.0
    esm: float = 0.0
    exchange: float = 0.0
    classify: float = 0.0
    stages: dict = field(default_factory=dict)
    per_rank: list = field(default_factory=list)


@dataclass
class Models:
    dnabert: object
    esm: object
    classifier: object | None  # rank 0 only

    @classmethod
    def load_everywhere(cls, ctx: vdist.Context, state: RunState, config: PredictConfig) -> "Models":
        """Every rank loads its models before any work; one rank's failure stops them all."""
        from vnp.models.dnabert import load_dnabert
        from vnp.models.esm import load_esm

        models, error = None, None
        dtype = DTYPES[state.precision]
        try:
            dnabert = load_dnabert(state.pack.dnabert, device=ctx.device, dtype=dtype)
            esm = load_esm(state.pack.esm, layer=state.pack.esm_layer, device=ctx.device, dtype=dtype,
                           attention=config.esm_attention)
            _check_dims(state, dnabert.dim, esm.dim)
            classifier = state.classifier.to(ctx.device) if ctx.is_main and state.classifier is not None else None
            models = cls(dnabert, esm, classifier)
        except InputError as err:
            error = f"rank {ctx.rank}: {err}" if ctx.world_size > 1 else str(err)
        errors = vdist.all_gather_object(ctx, error)
        failed = [e for e in errors if e]
        if failed:
            first = next(r for r, e in enumerate(errors) if e)
            raise InputError(failed[0], reported=ctx.rank != first)  # the first failing rank says it, once
        return models


def _check_dims(state: RunState, dnabert_dim: int, esm_dim: int) -> None:
    if (dnabert_dim, esm_dim) != (state.pack.dnabert_dim, state.pack.esm_dim):
        raise InputError(f"model pack {state.pack.name}: models give {dnabert_dim}+{esm_dim} dimensions, "
                         f"the pack says {state.pack.dnabert_dim}+{state.pack.esm_dim}")


def embed_unit(unit: int, state: RunState, config: PredictConfig, models: Models, times: EmbedTimes,
               select_frames=None) -> UnitResult:
    """Read, translate and embed the frames of one work unit; `select_frames(chunk, frames)`, when
    given, narrows each chunk's stop-free frames (training's CDS rule)."""
    c0, c1 = state.plan.unit_range(unit, state.record["unit_chunks"])
    t0 = time.perf_counter()
    chunks = read_chunks(state.plan, state.work / SEQUENCES, c0, c1)
    per_chunk = translate_chunks(chunks)
    if select_frames is not None:
        per_chunk = [select_frames(chunk, kept) for chunk, kept in zip(chunks, per_chunk)]
    frames = [(chunk.index, f) for chunk, kept in zip(chunks, per_chunk) for f in kept]
    t1 = time.perf_counter()
    times.translate += t1 - t0
    dim = state.pack.embedding_dim
    if not frames:
        return UnitResult(unit, np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
    keys = np.asarray([c * 6 + f.index for c, f in frames], dtype=np.int64)
    device = models.dnabert.device.type
    nucleotide = models.dnabert.embed([f.nucleotide for _, f in frames],
                                      max_tokens=token_budget("dnabert", device, config.batch.dnabert_tokens))
    t2 = time.perf_counter()
    protein = models.esm.embed([f.protein for _, f in frames],
                               max_tokens=token_budget("esm", device, config.batch.esm_tokens))
    t3 = time.perf_counter()
    times.dnabert += t2 - t1
    times.esm += t3 - t2
    return UnitResult(unit, keys, np.concatenate([nucleotide, protein], axis=1).astype(np.float32))


class IdCursor:
    """Frame IDs for keys that arrive in ascending order, reading ids.txt forward only."""

    def __init__(self, state: RunState):
        self.plan = state.plan
        self.ids = iter_ids(state.work)
        self.record, self.current = -1, ""

    def frame_ids(self, keys: np.ndarray) -> list[str]:
        chunks = keys // 6
        records = self.plan.record_of(chunks)
        out = []
        for key, chunk, record in zip(keys.tolist(), chunks.tolist(), records.tolist()):
            while self.record < record:
                self.current, self.record = next(self.ids), self.record + 1
            number = chunk - int(self.plan.first_chunk[record]) + 1
            out.append(chunk_id(self.current, number) + FRAME_NAMES[key % 6])
        return out


class Collector:
    """Rank 0: classify each arriving unit, commit its scores (and embeddings), show progress."""

    def __init__(self, state: RunState, config: PredictConfig, models: Models, device: torch.device):
        self.state, self.models, self.device = state, models, device
        self.seen: set[int] = set()
        self.embeddings_dir = state.out / "embeddings" if config.save_embeddings else None
        if self.embeddings_dir is not None:
            self.embeddings_dir.mkdir(parents=True, exist_ok=True)
            self._drop_orphan_embeddings()
            self.id_cursor = IdCursor(state)
        self.frames = 0
        self.chunks = 0
        self.started = time.time()
        total = sum(self._unit_chunks(u) for u in state.remaining)
        self.bar = tqdm(total=total, unit="chunk", desc="vnp predict", disable=not config.progress,
                        dynamic_ncols=True, mininterval=1.0)

    def _unit_chunks(self, unit: int) -> int:
        c0, c1 = self.state.plan.unit_range(unit, self.state.record["unit_chunks"])
        return c1 - c0

    def _drop_orphan_embeddings(self) -> None:
        committed = {part_number(p) for p in (self.state.work / "parts").glob("part-*.npz")}
        for path in self.embeddings_dir.glob("part-*"):
            if path.suffix != ".npz" or part_number(path) not in committed:
                path.unlink()

    def consume(self, results: list[UnitResult], times: EmbedTimes) -> None:
        """Classify and commit one step's units (in unit order), dropping padding and duplicates."""
        from vnp.models.classifier import score

        t0 = time.perf_counter()
        fresh = sorted((r for r in results if r.unit != NO_UNIT and r.unit not in self.seen), key=lambda r: r.unit)
        embeddings = []
        for result in fresh:
            self.seen.add(result.unit)
            probs = np.zeros((0, 2), np.float32)
            if len(result.keys):
                with torch.inference_mode():
                    probs = score(self.models.classifier, torch.from_numpy(result.embeddings).to(self.device)).cpu().numpy()
            self.state.store.add(result.unit, result.keys, probs)
            if self.embeddings_dir is not None:
                embeddings.append(result)
            self.frames += len(result.keys)
            self.chunks += self._unit_chunks(result.unit)
            self.bar.update(self._unit_chunks(result.unit))
        if fresh:
            self._commit(embeddings)
        elapsed = max(time.time() - self.started, 1e-9)
        self.bar.set_postfix(frames=self.frames, frames_per_s=f"{self.frames / elapsed:.1f}", refresh=False)
        times.classify += time.perf_counter() - t0

    def _commit(self, embeddings: list[UnitResult]) -> None:
        number = self.state.store.next_part
        if self.embeddings_dir is not None:  # written first: the score part is the commit point
            keys = np.concatenate([r.keys for r in embeddings]) if embeddings else np.zeros(0, np.int64)
            dim = self.state.pack.embedding_dim
            vectors = np.concatenate([r.embeddings for r in embeddings]) if embeddings else np.zeros((0, dim), np.float32)
            write_atomic(self.embeddings_dir, number,
                         {"ids": np.asarray(self.id_cursor.frame_ids(keys), dtype=str), "keys": keys,
                          "embeddings": vectors})
        self.state.store.commit()

    def close(self) -> None:
        self.bar.close()


def fresh_results(results: list[UnitResult], seen: set[int]) -> list[UnitResult]:
    """A step's results without padding or units already consumed, in unit order (marked seen)."""
    fresh = sorted((r for r in results if r.unit != NO_UNIT and r.unit not in seen), key=lambda r: r.unit)
    seen.update(r.unit for r in fresh)
    return fresh


def run_steps(ctx: vdist.Context, state: RunState, config: PredictConfig, models: Models, stop,
              sink=None, select_frames=None) -> EmbedTimes:
    """The same sequence of collectives on every rank, one gather per step, until done or stopped.

    Rank 0 hands each step's results to `sink` (`consume(results)` with fresh units in unit order,
    then `close()`), or by default to the Collector that classifies and commits scores.
    `select_frames` is passed to `embed_unit`."""
    times = EmbedTimes()
    t_start = time.time()
    remaining = state.remaining
    slots = vdist.shard(len(remaining), ctx)
    collector = (Collector(state, config, models, ctx.device) if sink is None else sink) if ctx.is_main else None
    seen: set[int] = set()
    exchange_device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    dim = state.pack.embedding_dim
    log.info("%d units to do (%d done before), %d steps on this rank", len(remaining), state.resumed_units, len(slots))
    try:
        for step, slot in enumerate(slots):
            unit = NO_UNIT if slot is None else remaining[slot]
            result = embed_unit(unit, state, config, models, times, select_frames) if unit != NO_UNIT else \
                UnitResult(NO_UNIT, np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
            t0 = time.perf_counter()
            try:
                results, stop_all = gather_step(result, dim, exchange_device, ctx.world_size, ctx.rank, stop.requested)
            except RuntimeError as err:
                raise vdist.PeerFailure(f"step {step}: collective failed ({str(err).splitlines()[0]})") from None
            times.exchange += time.perf_counter() - t0
            if sink is not None and collector is not None:
                sink.consume(fresh_results(results, seen))
            elif collector is not None:
                collector.consume(results, times)
            if stop_all:
                log.info("stop requested: leaving after step %d", step)
                stop.requested = True
                break
    finally:
        if collector is not None:
            collector.close()
    times.stages["embed_loop_s"] = round(time.time() - t_start, 3)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mine = {"rank": ctx.rank, "peak_rss_mib": round(peak_mib, 1), "translate_s": round(times.translate, 3), "dnabert_s": round(times.dnabert, 3),
            "esm_s": round(times.esm, 3), "exchange_s": round(times.exchange, 3), "classify_s": round(times.classify, 3)}
    times.per_rank = vdist.all_gather_object(ctx, mine)
    if ctx.is_main and not stop.requested and sink is None:
        _check_complete(state)  # a sink checks its own
    return times


def _check_complete(state: RunState) -> None:
    """Every unit of the plan accounted for exactly once, checked, not assumed."""
    finished = state.store.finished_units()
    expected = set(range(state.n_units))
    if finished != expected:
        missing = sorted(expected - finished)[:5]
        raise RuntimeError(f"work units missing after the last step: {missing}... ({len(expected - finished)} in all)")
    keys, _ = state.store.sorted_scores()
    if len(np.unique(keys)) != len(keys):
        raise RuntimeError("a frame was scored twice")
