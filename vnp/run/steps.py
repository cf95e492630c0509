"""Predict's work for the unit engine: every rank embeds its work units; rank 0 classifies,
commits and reports progress.

A work unit is a block of `batch.unit_chunks` consecutive chunks. The engine (vnp/run/engine.py) deals
units to ranks by a DistributedSampler in estimated-cost order. Because a unit's frames are batched
only with each other, every frame's embedding is computed the same way whatever the world size or
order, and so are the tables.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from vnp.run import dist as vdist
from vnp.support.config import ModelRunConfig, PredictConfig
from vnp.run.engine import run_units
from vnp.support.errors import InputError
from vnp.seq.chunking import chunk_id
from vnp.run.exchange import Computed, UnitResult
from vnp.models.batches import Budget, FrameTooLarge
from vnp.models.memory import DTYPES, token_budget
from vnp.run.plan import ChunkPlan, read_chunks
from vnp.run.state import RunState
from vnp.run.folder import PART_FILES
from vnp.run.store import PartWriter, part_number, write_atomic
from vnp.support import atomic
from vnp.seq.frames import Chunk, Frame, frame_id, translate_chunks

log = logging.getLogger("vnp")


@dataclass
class EmbedTimes:
    """Run-level timings (stages), every rank's loop timings, and rank 0's progress samples."""

    stages: dict = field(default_factory=dict)
    per_rank: list = field(default_factory=list)
    progress: list = field(default_factory=list)
    batches: dict = field(default_factory=dict)  # run.json "batches": unit size, budgets, out-of-memory retries


@dataclass
class Models:
    dnabert: object
    esm: object
    classifier: object | None  # rank 0 only
    budgets: dict = field(default_factory=dict)  # {"dnabert": tokens, "esm": tokens}, the same on every rank

    @classmethod
    def load_everywhere(cls, ctx: vdist.Context, state: RunState, config: ModelRunConfig) -> "Models":
        """Every rank loads its models before any work; one rank's failure stops them all."""
        from vnp.models.dnabert import load_dnabert
        from vnp.models.esm import load_esm

        models, error, budgets = None, None, None
        dtype = DTYPES[state.spec.precision]
        _resolve_once_per_node(ctx, state)
        try:
            dnabert_folder, esm_path = _resolve(state)  # on disk now: no rank downloads again
            dnabert = load_dnabert(str(dnabert_folder), device=ctx.device, dtype=dtype)
            esm = load_esm(str(esm_path), layer=state.spec.pack.esm_layer, device=ctx.device, dtype=dtype,
                           attention=config.esm_attention)
            _check_dims(state, dnabert.dim, esm.dim)
            classifier = state.classifier.to(ctx.device) if ctx.is_main and state.classifier is not None else None
            models = cls(dnabert, esm, classifier)
            # measured once the models are loaded (on a GPU, from the memory they left free)
            budgets = {"dnabert": token_budget("dnabert", dnabert, config.batch.dnabert_tokens, state.spec.chunk_length),
                       "esm": token_budget("esm", esm, config.batch.esm_tokens, state.spec.chunk_length)}
        except InputError as err:
            error = f"rank {ctx.rank}: {err}" if ctx.world_size > 1 else str(err)
        answers = vdist.all_gather_object(ctx, (error, budgets))
        errors = [e for e, _ in answers]
        failed = [e for e in errors if e]
        if failed:
            first = next(r for r, e in enumerate(errors) if e)
            raise InputError(failed[0], reported=ctx.rank != first)  # the first failing rank says it, once
        # every rank batches with the smallest card's budgets: a unit's embeddings do not depend on its rank
        models.budgets = {name: min(b[name] for _, b in answers) for name in ("dnabert", "esm")}
        return models


def _resolve(state: RunState):
    """The pack's DNABERT folder and ESM checkpoint on disk (hub ids and model names downloaded
    into their caches when missing and the network is allowed)."""
    from vnp.models.dnabert import resolve_model_folder
    from vnp.models.esm import resolve_checkpoint

    pack = state.spec.pack
    return resolve_model_folder(pack.dnabert, pack.dnabert_revision, pack.name), resolve_checkpoint(pack.esm, pack.name)


def _resolve_once_per_node(ctx: vdist.Context, state: RunState) -> None:
    """One download per node: local rank 0 resolves the models first (downloading what its node's
    cache lacks, with progress in its log), the other ranks wait for it at a collective, then find
    them on disk. A failure is said once, by the first failing rank."""
    error = None
    if ctx.env.local_rank == 0:
        try:
            _resolve(state)
        except InputError as err:
            error = f"rank {ctx.rank}: {err}" if ctx.world_size > 1 else str(err)
    errors = vdist.all_gather_object(ctx, error)
    if any(errors):
        first = next(r for r, e in enumerate(errors) if e)
        raise InputError(errors[first], reported=ctx.rank != first)


def _check_dims(state: RunState, dnabert_dim: int, esm_dim: int) -> None:
    pack = state.spec.pack
    if (dnabert_dim, esm_dim) != (pack.dnabert_dim, pack.esm_dim):
        raise InputError(f"model pack {pack.name}: models give {dnabert_dim}+{esm_dim} dimensions, "
                         f"the pack says {pack.dnabert_dim}+{pack.esm_dim}")


def keep_every_frame(chunk: Chunk, frames: list[Frame]) -> list[Frame]:
    """The default frame selection: every stop-free frame, as the original's prediction mode."""
    return frames


class FrameWork:
    """The engine's work for predict (and training): units of chunks -> frames -> embeddings.

    `select_frames(chunk, frames) -> frames` picks the frames to embed after translation (training
    passes its own rule); prediction keeps every stop-free frame.
    """

    def __init__(self, state: RunState, config: ModelRunConfig, models: Models,
                 select_frames: Callable[[Chunk, list[Frame]], list[Frame]] | None = None):
        self.state, self.models = state, models
        self.select_frames = select_frames or keep_every_frame
        self.unit_chunks = state.spec.unit_chunks
        self.dim = state.spec.pack.embedding_dim
        self.rows = 6 * self.unit_chunks
        budgets = models.budgets or {name: token_budget(name, getattr(models, name), getattr(config.batch, f"{name}_tokens"),
                                                       state.spec.chunk_length) for name in ("dnabert", "esm")}
        # lowered for the rest of the run when a batch runs out of memory (split and retried)
        self.budgets = {name: Budget(name, tokens) for name, tokens in budgets.items()}
        self.translate_s = 0.0  # on the helper thread

    def units(self) -> tuple[int, ...]:
        return self.state.spec.remaining

    def frames(self, unit: int) -> list[tuple[int, Frame]]:
        """(global chunk, frame) of the unit's selected frames, in chunk and frame order."""
        c0, c1 = self.state.plan.unit_range(unit, self.unit_chunks)
        chunks = read_chunks(self.state.plan, self.state.folder.sequences, c0, c1)
        return [(chunk.index, f) for chunk, kept in zip(chunks, translate_chunks(chunks))
                for f in self.select_frames(chunk, kept)]

    @property
    def esm_tokens(self) -> int:
        return self.budgets["esm"].tokens

    @property
    def dnabert_tokens(self) -> int:
        return self.budgets["dnabert"].tokens

    def costs(self, units) -> np.ndarray:
        """ESM tokens of each unit (ESM2-3B dominates: DNABERT-S is ~25x cheaper a frame); its
        batches pad them by under 1-2% (benchmarks/bench_batches.py), so the real tokens estimate
        the device time without batching every unit here. Every kept frame (predict): a stop scan
        of the unit's letters (`ChunkPlan.tokens`, no translation); another selection (training's):
        its frames, translated."""
        from vnp.models.esm import MAX_RESIDUES

        if self.select_frames is keep_every_frame:
            plan, sequences = self.state.plan, self.state.folder.sequences
            return np.asarray([plan.tokens(sequences, *plan.unit_range(u, self.unit_chunks)).sum(dtype=np.int64)
                               for u in units], dtype=np.float64)
        return np.asarray([sum(min(len(f.protein), MAX_RESIDUES) + 2 for _, f in self.frames(u)) for u in units],
                          dtype=np.float64)

    def prepare(self, unit: int):
        """Read, translate and tokenize one unit (helper thread)."""
        t0 = time.perf_counter()
        frames = self.frames(unit)
        keys = np.asarray([c * 6 + f.index for c, f in frames], dtype=np.int64)
        prepared = None
        if frames:
            prepared = (self.models.dnabert.prepare([f.nucleotide for _, f in frames], self.dnabert_tokens),
                        self.models.esm.prepare([f.protein for _, f in frames], self.esm_tokens))
        self.translate_s += time.perf_counter() - t0
        return keys, prepared

    def compute(self, unit: int, prepared) -> Computed:
        keys, batches = prepared
        if batches is None:
            return Computed(unit, keys, torch.zeros((0, self.dim), dtype=torch.float32))
        try:
            nucleotide = self.models.dnabert.run(batches[0], self.budgets["dnabert"])
            protein = self.models.esm.run(batches[1], self.budgets["esm"])
        except FrameTooLarge as err:
            key = keys[err.row]
            name = IdLookup(self.state.plan, self.state.folder.ids).frame_ids(keys[err.row:err.row + 1])[0]
            raise InputError(f"frame {name} (chunk {key // 6}, {err.tokens} {err.model} tokens) runs out of "
                             f"{self.models.esm.device.type} memory even alone; use a device with more "
                             "memory or a shorter chunk_length") from None
        return Computed(unit, keys, torch.cat([nucleotide, protein], dim=1))

    def batch_summary(self) -> dict:
        """For run.json: each model's token budget, the one it ended with, and the batches that ran
        out of memory and were split."""
        return {name: budget.summary() for name, budget in self.budgets.items()}


class IdLookup:
    """Frame IDs for any frame keys: record IDs read at their offsets in ids.txt (the plan's
    `id_offsets`), since balanced dealing delivers units out of input order."""

    def __init__(self, plan: ChunkPlan, ids: Path):
        self.plan, self.path = plan, ids

    def frame_ids(self, keys: np.ndarray) -> list[str]:
        chunks = keys // 6
        records = self.plan.record_of(chunks)
        offsets = self.plan.id_offsets
        names: dict[int, str] = {}
        out = []
        with open(self.path, "rb") as fh:
            for key, chunk, record in zip(keys.tolist(), chunks.tolist(), records.tolist()):
                if record not in names:
                    fh.seek(int(offsets[record]))
                    names[record] = fh.read(int(offsets[record + 1]) - int(offsets[record]) - 1).decode("utf-8")
                number = chunk - int(self.plan.first_chunk[record]) + 1
                out.append(frame_id(chunk_id(names[record], number), key % 6))
        return out


class Progress:
    """At most ~MAX samples {t_s, chunks, frames} of rank 0's progress: one every `every` seconds,
    halving the samples and doubling the spacing whenever they would exceed MAX."""

    MAX = 1000

    def __init__(self) -> None:
        self.started = time.time()
        self.every, self.last = 1.0, -1e9
        self.samples: list[dict] = []

    def sample(self, chunks: int, frames: int, force: bool = False) -> None:
        t = time.time() - self.started
        if not force and t - self.last < self.every:
            return
        self.last = t
        self.samples.append({"t_s": round(t, 3), "chunks": chunks, "frames": frames})
        if len(self.samples) > self.MAX:
            self.samples = self.samples[::2]
            self.every *= 2


class Collector:
    """Rank 0's sink for predict: classify each completed step's rows in one forward on rank 0's
    device (`score`, run by the engine's sink stage), keep each unit's scores (and embeddings),
    commit by time and size in the background, show progress. (Training brings its own sink and
    `select_frames` to the same engine: `run_units(ctx, FrameWork(state, config, models,
    select_frames), sink, stop, config.engine)`.)"""

    def __init__(self, state: RunState, config: PredictConfig, models: Models, device: torch.device):
        self.state, self.models, self.device = state, models, device
        self.commit_every_s = config.engine.commit_every_s
        self.commit_every_steps = config.engine.commit_every_steps
        self.embeddings_dir = state.folder.embeddings if config.save_embeddings else None
        if self.embeddings_dir is not None:
            self.embeddings_dir.mkdir(parents=True, exist_ok=True)
            self._drop_orphan_embeddings()
            self.id_lookup = IdLookup(state.plan, state.folder.ids)
        else:  # embeddings parts are paired with score parts by number: compact only without them
            replaced = state.store.compact()
            if replaced:
                log.info("compacted %d progress parts into one", replaced)
        self.keep_rows = self.embeddings_dir is not None
        self.unit_chunks, self.n_chunks = state.spec.unit_chunks, state.plan.n_chunks
        self.writer = PartWriter()
        self.pending_embeddings: list[UnitResult] = []
        self.steps_since_commit, self.last_commit = 0, time.time()
        self.frames = 0
        self.chunks = 0
        self.progress = Progress()
        self.started = time.time()
        total = sum(self._unit_chunks(u) for u in state.spec.remaining)
        self.bar = tqdm(total=total, unit="chunk", desc="vnp predict", disable=not config.progress,
                        dynamic_ncols=True, mininterval=1.0)

    def _unit_chunks(self, unit: int) -> int:
        c0, c1 = self.state.plan.unit_range(unit, self.state.spec.unit_chunks)
        return c1 - c0

    def _drop_orphan_embeddings(self) -> None:
        committed = {part_number(p) for p in self.state.folder.parts.glob("part-*.npz")}
        for path in self.embeddings_dir.iterdir():  # only vnp's own names: parts and their temporaries
            if atomic.is_temporary(path) or (PART_FILES.fullmatch(path.name) and part_number(path) not in committed):
                path.unlink()

    def score(self, rows: torch.Tensor) -> torch.Tensor:
        """One step's rows (N, D) on rank 0's device -> (N, 2) probabilities there."""
        from vnp.models.classifier import score

        return score(self.models.classifier, rows)

    def consume(self, results: list[UnitResult]) -> None:
        """Keep one step's fresh units with their scores; commit when enough time or steps passed."""
        chunks = 0
        for result in results:
            self.state.store.add(result.unit, result.keys, result.scores)
            if self.keep_rows:
                self.pending_embeddings.append(result)
            self.frames += len(result.keys)
            chunks += self._unit_chunks(result.unit)
        self.chunks += chunks
        self.bar.update(chunks)
        self.steps_since_commit += 1
        if self.steps_since_commit >= self.commit_every_steps or time.time() - self.last_commit >= self.commit_every_s:
            self.commit()
        if not self.bar.disable:
            elapsed = max(time.time() - self.started, 1e-9)
            self.bar.set_postfix(frames=self.frames, frames_per_s=f"{self.frames / elapsed:.1f}", refresh=False)
        self.progress.sample(self.chunks, self.frames)

    def commit(self) -> None:
        """Hand the kept units to the background writer as one part (embeddings part first: the
        score part is the commit point)."""
        self.steps_since_commit, self.last_commit = 0, time.time()
        if not self.state.store.pending_units:
            return
        if self.embeddings_dir is not None:
            embeddings, self.pending_embeddings = self.pending_embeddings, []
            self.writer.submit(self._write_embeddings, self.state.store.next_part, embeddings)
        self.state.store.commit(self.writer)

    def _write_embeddings(self, number: int, embeddings: list[UnitResult]) -> None:
        keys = np.concatenate([r.keys for r in embeddings])
        vectors = np.concatenate([r.embeddings for r in embeddings])
        write_atomic(self.embeddings_dir, number, {"ids": np.asarray(self.id_lookup.frame_ids(keys), dtype=str),
                                                   "keys": keys, "embeddings": vectors})

    def close(self) -> None:
        """Commit what is left and wait for every write (also when the loop failed)."""
        try:
            self.commit()
            self.writer.close()
        finally:
            self.progress.sample(self.chunks, self.frames, force=True)
            self.bar.close()


def run_steps(ctx: vdist.Context, state: RunState, config: ModelRunConfig, models: Models, stop, sink=None,
              select_frames: Callable[[Chunk, list[Frame]], list[Frame]] | None = None) -> EmbedTimes:
    """Every unit through the engine. Rank 0 hands the results to `sink` (training's), or by
    default to the Collector that classifies and commits scores, and then checks completeness.
    `select_frames` picks the frames to embed (training's CDS rule; predict keeps them all).
    `config` is a PredictConfig when no `sink` is given (the Collector reads its keys)."""
    times = EmbedTimes()
    t_start = time.time()
    collector = Collector(state, config, models, ctx.device) if ctx.is_main and sink is None else None
    work = FrameWork(state, config, models, select_frames)
    log.info("%d units to do (%d done before)", len(state.spec.remaining), state.spec.resumed_units)
    stats = run_units(ctx, work, (collector or sink) if ctx.is_main else None, stop, config.engine)
    times.stages["embed_loop_s"] = round(time.time() - t_start, 3)
    mine = {**stats.mine(ctx.rank), "translate_s": round(work.translate_s, 3), "batches": work.batch_summary()}
    if collector is not None:
        per_chunk = 1e6 / max(1, collector.chunks)
        mine["sink_us_per_chunk"] = {"forward": round(stats.sink_forward_s * per_chunk, 2),
                                     "other": round(stats.sink_other_s * per_chunk, 2)}
        times.progress = collector.progress.samples
    times.per_rank = vdist.all_gather_object(ctx, mine)
    times.batches = {"unit_chunks": state.spec.unit_chunks, **{
        name: {"tokens": budget.initial,
               "final_tokens": min(r["batches"][name]["final_tokens"] for r in times.per_rank),
               "oom_retries": sum(r["batches"][name]["oom_retries"] for r in times.per_rank)}
        for name, budget in work.budgets.items()}}
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
