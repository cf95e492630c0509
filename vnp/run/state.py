"""Setting up a run in OUT: checks, the run record that guards OUT, input packing, resume.

Rank 0 prepares; what it finds is one frozen `RunSpec` (models, chunk length, precision, work-unit
size, the units left), built once and handed to the other ranks once. They learn the outcome in two
stages: a quick broadcast after the cheap checks (OUT usable, inputs present, model pack resolved),
then a ready file in OUT/work once the inputs are validated and packed, which may take long: they
wait on the file, not on a collective, while rank 0 touches a heartbeat, so a large input cannot
trip `dist.timeout_s`. Every path in OUT comes from `vnp.run.folder.RunFolder`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from vnp import __version__
from vnp.run import dist as vdist
from vnp.support.config import PredictConfig
from vnp.support.errors import InputError, Stopped
from vnp.models.pack import ModelPack, load_pack
from vnp.run.plan import ChunkPlan, check_inputs, load_plan, pack_inputs
from vnp.run.folder import RunFolder, input_entries, new_run_record
from vnp.run.store import ScoreStore

log = logging.getLogger("vnp")

HEARTBEAT_EVERY_S = 2.0
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
            self.folder.write_run_record(self.run_record)
            self.store = ScoreStore(self.folder.parts)
            self.afresh = False

    # The engine reads these names (state.record["unit_chunks"] included).
    out = property(lambda self: self.folder.root)
    work = property(lambda self: self.folder.work)
    pack = property(lambda self: self.spec.pack)
    chunk_length = property(lambda self: self.spec.chunk_length)
    precision = property(lambda self: self.spec.precision)
    unit_chunks = property(lambda self: self.spec.unit_chunks)
    run_record = property(lambda self: self.spec.run_record)
    record = run_record  # the engine's older name for the run record
    inputs = property(lambda self: list(self.spec.inputs))
    resumed_units = property(lambda self: self.spec.resumed_units)
    rejected_parts = property(lambda self: self.spec.rejected_parts)

    @property
    def remaining(self) -> list[int]:
        return list(self.spec.remaining)

    @property
    def n_units(self) -> int:
        return self.plan.n_units(self.unit_chunks)

    def run_json(self, ctx: vdist.Context, config: PredictConfig, counts, times) -> dict:
        return {
            "vnp": __version__, "torch": torch.__version__,
            "models": {**asdict(self.pack), "fingerprint": self.run_record["pack"],
                       "digests": self.run_record["models"]},
            "inputs": self.inputs,
            "counts": asdict(counts),
            "chunk_length": self.chunk_length,
            "work_units": self.n_units, "resumed_units": self.resumed_units,
            "rejected_progress_parts": self.rejected_parts,
            "world_size": ctx.world_size, "launcher": ctx.env.launcher,
            "device": str(ctx.device), "precision": self.precision,
            "timings_s": {**self.stages, **times.stages, "per_rank": times.per_rank},
        }


def resolved_precision(config: PredictConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    return "bf16" if device.type == "cuda" else "fp32"


def open_log(out: Path, rank: int) -> Path:
    """This rank's log file, OUT/logs/rankN.log (opened once; later calls return its path)."""
    path = RunFolder(out).log(rank)
    if any(getattr(h, "baseFilename", None) == str(path.absolute()) for h in log.handlers):
        return path
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{path.parent}: exists and is not a folder (the per-rank logs go there)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError as err:
        raise InputError(f"{path}: cannot write the log ({err.strerror})") from None
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return path


def log_path() -> Path | None:
    """The log file this process writes, if one is open."""
    names = [h.baseFilename for h in log.handlers if getattr(h, "baseFilename", None)]
    return Path(names[0]) if names else None


def _quick_checks(ctx, config: PredictConfig, inputs: list[str], folder: RunFolder):
    folder.check_usable()
    folder.lock()
    open_log(folder.root, ctx.rank)  # from here on, an unexpected error has its traceback in the log
    folder.remove_leftovers()
    paths = check_inputs(inputs)
    pack = load_pack(config.pack, config.classifier or None, tiny_dir=folder.tiny_pack,
                     chunk_length=config.chunk_length)
    from vnp.models.classifier import load_classifier

    classifier = load_classifier(pack.classifier, input_dim=pack.embedding_dim)  # refused before any work
    return paths, pack, classifier


def prepare_run(ctx: vdist.Context, config: PredictConfig, inputs: list[str], folder: RunFolder,
                stop=None) -> RunState:
    """Rank 0: check, guard OUT with the run record, pack inputs, find what is left to do; the
    run's description goes to the other ranks through the ready file.

    `stop` (a StopFlag) is honoured at once: a stop signal raises Stopped wherever rank 0 is.
    """
    nonce = uuid.uuid4().hex[:12]
    t0 = time.time()
    with _stop_at_once(stop):
        try:
            if stop is not None and stop.requested:  # a signal before this point
                raise Stopped("stopped by a signal")
            paths, pack, classifier = _quick_checks(ctx, config, inputs, folder)
        except BaseException as err:  # every rank learns it, whatever it is
            vdist.broadcast_object(ctx, {"nonce": nonce, **_failure(err)})
            raise
        vdist.broadcast_object(ctx, {"nonce": nonce, "error": None})
        folder.remove_handshake_files()
        beating = _Heartbeat(folder.heartbeat(nonce), stop_requests=folder.stop_request(nonce))
        try:
            state = _prepare_work(ctx, config, paths, pack, folder)
        except BaseException as err:
            folder.write_json(folder.ready(nonce), {"ok": False, **_failure(err)})
            raise
        finally:
            beating.stop()
    state.classifier = classifier
    state.stages["prepare_s"] = round(time.time() - t0, 3)
    np.save(folder.remaining(nonce), np.asarray(state.spec.remaining, dtype=np.int64))
    folder.write_json(folder.ready(nonce), state.spec.to_ready())
    return state


def wait_until_ready(ctx: vdist.Context, config: PredictConfig, folder: RunFolder, stop=None) -> RunState:
    """Ranks > 0: wait for rank 0's checks, then for its ready file (heartbeat-guarded); a stop
    signal to this rank ends the wait (exit code 143)."""
    status = vdist.broadcast_object(ctx)
    _raise_failure(status)
    nonce = status["nonce"]
    ready, heartbeat = folder.ready(nonce), folder.heartbeat(nonce)
    last_sign = time.time()
    asked = None
    while not ready.exists():
        if stop is not None and stop.requested and asked is None:  # rank 0 stops and tells every rank
            folder.stop_request(nonce).touch()
            asked = time.time()
        if asked is not None and time.time() - asked > STOP_WAIT_S:
            raise Stopped(f"stopped by a signal; rank 0 did not stop preparing within {STOP_WAIT_S:.0f} s")
        if heartbeat.exists():
            last_sign = max(last_sign, heartbeat.stat().st_mtime)
        if time.time() - last_sign > config.dist.timeout_s:
            raise vdist.PeerFailure(f"rank 0 gave no sign of life for {config.dist.timeout_s:.0f} s while preparing")
        time.sleep(0.2)
    info = folder.read_json(ready)
    if not info["ok"]:
        _raise_failure({**info, "error": info["error"] or "rank 0 failed while preparing the inputs"})
    spec = RunSpec.from_ready(info, np.load(folder.remaining(nonce)).tolist())
    plan = load_plan(folder.work, spec.chunk_length, spec.run_record["filters"])
    return RunState(folder, spec, plan)


def _failure(err: BaseException) -> dict:
    """What the other ranks are told of rank 0's failure (it reports the failure itself)."""
    if isinstance(err, Stopped):
        return {"error": None, "stopped": True}
    return {"error": str(err) if isinstance(err, InputError) else "rank 0 failed while preparing the inputs"}


def _raise_failure(status: dict) -> None:
    if status.get("stopped"):
        raise Stopped("rank 0 was stopped by a signal while preparing")
    if status.get("error"):
        raise InputError(status["error"], reported=True)  # rank 0 printed it


@contextlib.contextmanager
def _stop_at_once(stop) -> Iterator[None]:
    """While rank 0 prepares there is no step to finish: a stop signal (SIGTERM, SIGUSR1) raises
    Stopped where it lands (temporary files are removed on the way out). Later signals only set
    the flag, so that the failure is still reported to the other ranks."""
    if stop is None or threading.current_thread() is not threading.main_thread():
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


class _Heartbeat:
    """A file touched every few seconds: rank 0's while it prepares (the other ranks watch it), and
    each other rank's while it runs (rank 0 looks at them when a collective fails)."""

    def __init__(self, path: Path, stop_requests: Path | None = None):
        self.path = path
        self.stop_requests = stop_requests  # rank 0: another rank asks it to stop preparing
        self._done = threading.Event()
        path.touch()
        self._thread = threading.Thread(target=self._run, name="vnp-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(HEARTBEAT_EVERY_S):
            self.path.touch()
            if self.stop_requests is not None and self.stop_requests.exists():
                self.stop_requests = None
                os.kill(os.getpid(), signal.SIGUSR1)  # as if this rank got the signal: stops at once

    def stop(self, remove: bool = False) -> None:
        self._done.set()
        self._thread.join()
        if remove:
            self.path.unlink(missing_ok=True)


def show_alive(folder: RunFolder, rank: int) -> _Heartbeat:
    """Ranks > 0, from the end of preparation to their exit (removed then, whatever the exit)."""
    return _Heartbeat(folder.alive(rank))


def silent_ranks(folder: RunFolder, world_size: int) -> list[int]:
    """Ranks whose alive file is still there but no longer touched: killed (OOM killer, kill -9)
    or their node lost. A rank that ended by itself removed its file and reported its own error."""
    files = {rank: folder.alive(rank) for rank in range(1, world_size)}

    def touched() -> dict[int, int]:
        return {rank: path.stat().st_mtime_ns for rank, path in files.items() if path.exists()}

    before = touched()
    deadline = time.time() + 3 * HEARTBEAT_EVERY_S
    while before and time.time() < deadline:
        time.sleep(0.2)
        before = {rank: t for rank, t in before.items() if touched().get(rank) == t}
    return sorted(before)


def _fetch_models(pack: ModelPack) -> None:
    """Download hub models once, on rank 0, before the other ranks load them from the cache."""
    from vnp.models.dnabert import resolve_model_folder
    from vnp.models.esm import resolve_checkpoint

    resolve_model_folder(pack.dnabert)
    resolve_checkpoint(pack.esm)


def _prepare_work(ctx, config: PredictConfig, paths, pack: ModelPack, folder: RunFolder) -> RunState:
    _fetch_models(pack)
    chunk_length = config.chunk_length or pack.chunk_length
    precision = resolved_precision(config, ctx.device)
    run_record = new_run_record(input_entries(paths), pack, chunk_length, precision, config, ctx.device,
                                save_embeddings=config.save_embeddings, filters=asdict(config.filter))
    same = folder.holds_same_run(run_record, pack, config.force)
    fresh = not (same and folder.index.exists()) or config.force
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
    return RunState(folder, spec, plan, store=store, afresh=afresh)


def _input_summaries(run_record: dict, folder: RunFolder) -> list[dict]:
    with np.load(folder.index, allow_pickle=False) as data:
        per_input = data["records_per_input"].tolist()
    return [{**entry, "records": n} for entry, n in zip(run_record["inputs"], per_input)]
