"""Setting up a run in OUT: checks, the run record that guards OUT, input packing, resume.

Rank 0 prepares; what it finds is one frozen `RunSpec` (models, chunk length, precision, work-unit
size, the units left), built once and handed to the other ranks once. They learn the outcome in two
stages: a quick broadcast after the cheap checks (OUT usable, inputs present, model pack resolved),
then a ready file in OUT/work once the inputs are validated and packed, which may take long: they
wait on the file, not on a collective, while rank 0 touches a heartbeat, so a large input cannot
trip `dist.timeout_s` (`share_preparation`, which `vnp train` uses too). Every path in OUT comes
from `vnp.run.folder.RunFolder`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vnp import __version__
from vnp.run import dist as vdist
from vnp.support.config import PredictConfig
from vnp.support.errors import PeerFailure, Stopped
from vnp.models import resolve_precision
from vnp.models.pack import ModelPack, load_pack
from vnp.run.plan import ChunkPlan, check_inputs, load_plan, pack_inputs, packed_problem
from vnp.run.folder import RunFolder, input_entries, keep_unit_size, new_run_record
from vnp.run.lifecycle import Heartbeat, Rank, open_log, outcome, raise_outcome, shared
from vnp.run.store import ScoreStore
from vnp.support.atomic import open_atomic

log = logging.getLogger("vnp")

STOP_WAIT_S = 30.0  # a rank asked to stop waits this long for rank 0 to stop preparing too


@dataclass(frozen=True)
class RunSpec:
    """What rank 0's preparation found, the same on every rank: built once, sent once, never
    changed (the run record and input summaries are plain JSON data; leave them as they are)."""

    pack: ModelPack
    chunk_length: int
    precision: str  # resolved: fp32, bf16 or fp16
    unit_chunks: int  # chunks per work unit, the one place the unit size is read from
    remaining: tuple[int, ...]  # work units still to do, ascending
    run_record: dict  # what OUT/work/record.json holds for this run (unit_chunks included)
    inputs: tuple[dict, ...] = ()  # per input: the run record's entry and its number of records
    resumed_units: int = 0
    rejected_parts: int = 0  # progress parts that failed their check and are redone

    def to_ready(self) -> dict:
        """The ready file's content (the remaining units travel in their own .npy file)."""
        return {"ok": True, "pack": asdict(self.pack), "chunk_length": self.chunk_length,
                "precision": self.precision, "unit_chunks": self.unit_chunks, "run_record": self.run_record,
                "inputs": list(self.inputs), "resumed_units": self.resumed_units,
                "rejected_parts": self.rejected_parts}

    @classmethod
    def from_ready(cls, info: dict, remaining) -> "RunSpec":
        return cls(ModelPack(**info["pack"]), info["chunk_length"], info["precision"], info["unit_chunks"],
                   tuple(remaining), info["run_record"], tuple(info["inputs"]), info["resumed_units"],
                   info["rejected_parts"])


@dataclass
class RunState:
    """One rank's run: the folder, the frozen description, the chunk plan, and what changes while
    it runs (rank 0's score store, its timings, whether an earlier run's progress is replaced)."""

    folder: RunFolder
    spec: RunSpec
    plan: ChunkPlan
    store: ScoreStore | None = None  # rank 0 only
    classifier: object | None = None  # rank 0 only: loaded (and checked) while preparing
    stages: dict = field(default_factory=dict)
    afresh: bool = False  # rank 0: an earlier run's progress is to be replaced once the models load

    def begin(self) -> None:
        """Rank 0, once every rank has loaded its models: only now remove the progress of the run
        being replaced and record this one (its tables stay until the new ones replace them)."""
        if self.afresh:
            self.folder.clear_progress()
            # a new run id: run.json (written at the end) names the run whose results it holds, so a
            # report can tell when a later run, not yet finished, has replaced its progress
            self.folder.write_run_record({**self.spec.run_record, "run_id": uuid.uuid4().hex})
            self.store = ScoreStore(self.folder.parts)
            self.afresh = False

    @property
    def n_units(self) -> int:
        return self.plan.n_units(self.spec.unit_chunks)

    def run_json(self, ctx: vdist.Context, config: PredictConfig, counts, times) -> dict:
        spec = self.spec
        return {
            "vnp": __version__, "torch": torch.__version__,
            "run_id": (self.folder.read_run_record() or {}).get("run_id"),
            "models": {**asdict(spec.pack), "fingerprint": spec.run_record["pack"],
                       "digests": spec.run_record["models"]},
            "inputs": list(spec.inputs),
            "counts": asdict(counts),
            "chunk_length": spec.chunk_length,
            "work_units": self.n_units, "resumed_units": spec.resumed_units,
            "rejected_progress_parts": spec.rejected_parts,
            "world_size": ctx.world_size, "launcher": ctx.env.launcher,
            "device": str(ctx.device), "precision": spec.precision, "batches": times.batches,
            "timings_s": {**self.stages, **times.stages, "per_rank": times.per_rank},
        }


def share_preparation(rank: Rank, checks: Callable[[], Any],
                      work: Callable[[Any], tuple[RunSpec, Any]]) -> tuple[RunSpec, Any]:
    """The one preparation handshake of a command that prepares on rank 0 (`vnp predict`, `vnp train`).

    Rank 0 makes OUT usable and locks it, opens its log, runs `checks()` (quick: every rank learns
    the outcome by a broadcast), then `work(checked) -> (spec, mine)` (may take long: the other
    ranks wait on the ready file, not on a collective, while rank 0 touches a heartbeat, so a long
    input pass cannot trip `dist.timeout_s`). Returns (spec, mine) on rank 0 and (spec, None)
    elsewhere. A stop signal on any rank stops every rank at once (Stopped, exit code 143)."""
    ctx, folder, stop = rank.ctx, rank.folder, rank.stop
    if ctx.is_main:
        with _stop_at_once(stop):
            checked = None

            def first() -> str:
                nonlocal checked
                if stop.requested:  # a signal before this point
                    raise Stopped("stopped by a signal")
                folder.check_usable()
                folder.lock()
                open_log(folder, ctx.rank)  # from here on, an unexpected error has its traceback in the log
                folder.remove_leftovers()
                checked = checks()
                return uuid.uuid4().hex[:12]

            nonce = shared(ctx, first)
            folder.remove_handshake_files()
            beating = Heartbeat(folder.heartbeat(nonce), on_request=folder.stop_request(nonce), stop=stop)
            try:
                spec, mine = work(checked)
            except BaseException as err:
                folder.write_json(folder.ready(nonce), {"ok": False, **outcome(err)})
                raise
            finally:
                beating.stop()
        with open_atomic(folder.remaining(nonce), "wb") as fh:
            np.save(fh, np.asarray(spec.remaining, dtype=np.int64))
        folder.write_json(folder.ready(nonce), spec.to_ready())
        rank.started()
        return spec, mine
    spec = _wait_until_ready(rank, shared(ctx, lambda: None))
    open_log(folder, ctx.rank)
    rank.started()
    return spec, None


def _wait_until_ready(rank: Rank, nonce: str) -> RunSpec:
    """Ranks > 0: wait for rank 0's ready file (heartbeat-guarded); a stop signal to this rank
    ends the wait (exit code 143)."""
    folder, stop, timeout_s = rank.folder, rank.stop, rank.timeout_s
    ready, heartbeat = folder.ready(nonce), folder.heartbeat(nonce)
    last_sign = time.time()
    asked = None
    while not ready.exists():
        if stop.requested and asked is None:  # rank 0 stops and tells every rank
            folder.stop_request(nonce).touch()
            asked = time.time()
        if asked is not None and time.time() - asked > STOP_WAIT_S:
            raise Stopped(f"stopped by a signal; rank 0 did not stop preparing within {STOP_WAIT_S:.0f} s")
        if heartbeat.exists():
            last_sign = max(last_sign, heartbeat.stat().st_mtime)
        if time.time() - last_sign > timeout_s:
            raise PeerFailure(f"rank {rank.ctx.rank}: rank 0 gave no sign of life for {timeout_s:.0f} s "
                              "while preparing")
        time.sleep(0.2)
    info = folder.read_json(ready)
    if not info["ok"]:
        raise_outcome(info)
    return RunSpec.from_ready(info, np.load(folder.remaining(nonce)).tolist())


@contextlib.contextmanager
def _stop_at_once(stop) -> Iterator[None]:
    """While rank 0 prepares there is no step to finish: a stop signal (SIGTERM, SIGUSR1) raises
    Stopped where it lands (temporary files are removed on the way out). Later signals only set
    the flag, so that the failure is still reported to the other ranks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        first = not stop.requested
        stop.requested = True
        if first:
            raise Stopped(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- `vnp predict`


def prepare_run(rank: Rank, config: PredictConfig, inputs: list[str]) -> RunState:
    """`vnp predict`'s preparation (rank 0: check, guard OUT with the run record, pack the inputs,
    find what is left to do), shared with every rank by `share_preparation`."""
    folder = rank.folder
    t0 = time.time()
    spec, state = share_preparation(rank, lambda: _quick_checks(config, inputs, folder),
                                    lambda checked: _prepare_work(rank.ctx, config, *checked, folder))
    if state is None:  # ranks > 0
        return RunState(folder, spec, load_plan(folder.work, spec.chunk_length, spec.run_record["filters"]))
    state.stages["prepare_s"] = round(time.time() - t0, 3)
    return state


def _quick_checks(config: PredictConfig, inputs: list[str], folder: RunFolder):
    paths = check_inputs(inputs)
    pack = load_pack(config.pack, config.classifier or None, tiny_dir=folder.tiny_pack,
                     chunk_length=config.chunk_length, models_dir=config.models.dir)
    from vnp.models.classifier import load_classifier

    classifier = load_classifier(pack.classifier, input_dim=pack.embedding_dim)  # refused before any work
    return paths, pack, classifier


def _fetch_models(pack: ModelPack) -> None:
    """Download hub models once, on rank 0, before the other ranks load them from the cache."""
    from vnp.models.dnabert import resolve_model_folder
    from vnp.models.esm import resolve_checkpoint

    resolve_model_folder(pack.dnabert)
    resolve_checkpoint(pack.esm)


def _prepare_work(ctx, config: PredictConfig, paths, pack: ModelPack, classifier, folder: RunFolder):
    _fetch_models(pack)
    chunk_length = config.chunk_length or pack.chunk_length
    precision = resolve_precision(config.precision, ctx.device)
    run_record = new_run_record(input_entries(paths), pack, chunk_length, precision, config, ctx.device,
                                save_embeddings=config.save_embeddings, filters=asdict(config.filter))
    run_record = keep_unit_size(run_record, folder.read_run_record(), config.batch.unit_chunks)
    same = folder.holds_same_run(run_record, pack, config.force)
    fresh = not (same and folder.index.exists()) or config.force
    damage = None if fresh else packed_problem(folder.work)
    if damage:  # the inputs are unchanged (by checksum): packing them again gives the same bytes
        log.warning("repacking the inputs: %s", damage)
        pack_inputs(paths, folder.work)
    if fresh:
        # The old progress can no longer be resumed (the index is about to change), even if this
        # run fails before it starts; the old results themselves stay until replaced.
        folder.forget_run_record()
        pack_inputs(paths, folder.work)  # validates; replaces the old index only on success
    afresh = fresh or not config.resume
    plan = load_plan(folder.work, chunk_length, run_record["filters"])
    store = None if afresh else ScoreStore(folder.parts)
    done = set() if afresh else store.load_committed()
    unit_chunks = run_record["unit_chunks"]
    spec = RunSpec(pack, chunk_length, precision, unit_chunks,
                   tuple(u for u in range(plan.n_units(unit_chunks)) if u not in done), run_record,
                   tuple(_input_summaries(run_record, folder)), resumed_units=len(done),
                   rejected_parts=len(store.rejected) if store else 0)
    return spec, RunState(folder, spec, plan, store=store, classifier=classifier, afresh=afresh)


def _input_summaries(run_record: dict, folder: RunFolder) -> list[dict]:
    with np.load(folder.index, allow_pickle=False) as data:
        per_input = data["records_per_input"].tolist()
    return [{**entry, "records": n} for entry, n in zip(run_record["inputs"], per_input)]
