"""Setting up a run in OUT: checks, the run record that guards OUT, input packing, resume.

Rank 0 does the work; the other ranks learn the outcome in two stages: a quick broadcast after the
cheap checks (OUT usable, inputs present, model pack resolved), then a ready file in OUT/work once
the inputs are validated and packed, which may take long: they wait on the file, not on a
collective, while rank 0 touches a heartbeat, so a large input cannot trip `dist.timeout_s`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
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
from vnp import dist as vdist
from vnp.config import PredictConfig
from vnp.errors import InputError, Stopped
from vnp.models.pack import ModelPack, fingerprint, load_pack, model_digests
from vnp.plan import ChunkPlan, check_inputs, file_sha256, load_plan, pack_inputs
from vnp.store import ScoreStore

log = logging.getLogger("vnp")

RECORD = "record.json"
HEARTBEAT_EVERY_S = 2.0
STOP_WAIT_S = 30.0  # a rank asked to stop waits this long for rank 0 to stop preparing too


@dataclass
class RunState:
    out: Path
    pack: ModelPack
    chunk_length: int
    plan: ChunkPlan
    remaining: list[int]  # work units still to do, ascending
    precision: str
    store: ScoreStore | None = None  # rank 0 only
    classifier: object | None = None  # rank 0 only: loaded (and checked) while preparing
    record: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    resumed_units: int = 0
    rejected_parts: int = 0
    stages: dict = field(default_factory=dict)
    afresh: bool = False  # rank 0: an earlier run's progress is to be replaced once the models load

    def begin(self) -> None:
        """Rank 0, once every rank has loaded its models: only now remove the progress of the run
        being replaced and record this one (its tables stay until the new ones replace them)."""
        if self.afresh:
            _clear_progress(self.out)
            _write_json(self.work / RECORD, self.record)
            self.store = ScoreStore(self.work / "parts")
            self.afresh = False

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def n_units(self) -> int:
        return self.plan.n_units(self.record["unit_chunks"])

    def run_json(self, ctx: vdist.Context, config: PredictConfig, counts, times) -> dict:
        return {
            "vnp": __version__, "torch": torch.__version__,
            "models": {**asdict(self.pack), "fingerprint": self.record["pack"], "digests": self.record["models"]},
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


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output folder is an existing file")
    try:
        (out / "work").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problem = "output folder is not writable" if out.is_dir() else "cannot create output folder"
        raise InputError(f"{out}: {problem} ({err.strerror})") from None
    probe = out / "work" / f".write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise InputError(f"{out}: output folder is not writable") from None


_LOCKS: list = []  # open lock files, held for the life of the process


def _lock_out(out: Path) -> None:
    """One run at a time per output folder (a second one would mix its progress with ours)."""
    lock = out / "work" / ".lock"
    try:
        handle = open(lock, "a+")
    except OSError as err:
        raise InputError(f"{lock}: cannot open the lock file ({err.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InputError(f"{out}: another vnp run is using this output folder") from None
    _LOCKS.append(handle)


def open_log(out: Path, rank: int) -> Path:
    """This rank's log file, OUT/logs/rankN.log (opened once; later calls return its path)."""
    path = out / "logs" / f"rank{rank}.log"
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


def _quick_checks(ctx, config: PredictConfig, inputs: list[str], out: Path):
    _check_out(out)
    _lock_out(out)
    open_log(out, ctx.rank)  # from here on, an unexpected error has its traceback in the log
    remove_leftovers(out)
    paths = check_inputs(inputs)
    pack = load_pack(config.pack, config.classifier or None, tiny_dir=out / "work" / "tiny_pack",
                     chunk_length=config.chunk_length)
    from vnp.models.classifier import load_classifier

    classifier = load_classifier(pack.classifier, input_dim=pack.embedding_dim)  # refused before any work
    return paths, pack, classifier


def prepare_run(ctx: vdist.Context, config: PredictConfig, inputs: list[str], out: Path, stop=None) -> RunState:
    """Rank 0: check, guard OUT with the run record, pack inputs, find what is left to do.

    `stop` (a StopFlag) is honoured at once: a stop signal raises Stopped wherever rank 0 is.
    """
    nonce = uuid.uuid4().hex[:12]
    t0 = time.time()
    with _stop_at_once(stop):
        try:
            if stop is not None and stop.requested:  # a signal before this point
                raise Stopped("stopped by a signal")
            paths, pack, classifier = _quick_checks(ctx, config, inputs, out)
        except BaseException as err:  # every rank learns it, whatever it is
            vdist.broadcast_object(ctx, {"nonce": nonce, **_failure(err)})
            raise
        vdist.broadcast_object(ctx, {"nonce": nonce, "error": None})
        ready = out / "work" / f"ready-{nonce}.json"
        remove_handshake_files(out / "work")
        beating = _Heartbeat(out / "work" / f"heartbeat-{nonce}", stop_requests=out / "work" / f"stop-{nonce}")
        try:
            state = _prepare_work(ctx, config, paths, pack, out)
        except BaseException as err:
            _write_json(ready, {"ok": False, **_failure(err)})
            raise
        finally:
            beating.stop()
    state.classifier = classifier
    state.stages["prepare_s"] = round(time.time() - t0, 3)
    np.save(out / "work" / f"remaining-{nonce}.npy", np.asarray(state.remaining, dtype=np.int64))
    _write_json(ready, {"ok": True, "pack": asdict(pack), "chunk_length": state.chunk_length,
                        "record": state.record, "precision": state.precision})
    return state


def wait_until_ready(ctx: vdist.Context, config: PredictConfig, out: Path, stop=None) -> RunState:
    """Ranks > 0: wait for rank 0's checks, then for its ready file (heartbeat-guarded); a stop
    signal to this rank ends the wait (exit code 143)."""
    status = vdist.broadcast_object(ctx)
    _raise_failure(status)
    nonce = status["nonce"]
    ready = out / "work" / f"ready-{nonce}.json"
    heartbeat = out / "work" / f"heartbeat-{nonce}"
    last_sign = time.time()
    asked = None
    while not ready.exists():
        if stop is not None and stop.requested and asked is None:  # rank 0 stops and tells every rank
            (out / "work" / f"stop-{nonce}").touch()
            asked = time.time()
        if asked is not None and time.time() - asked > STOP_WAIT_S:
            raise Stopped(f"stopped by a signal; rank 0 did not stop preparing within {STOP_WAIT_S:.0f} s")
        if heartbeat.exists():
            last_sign = max(last_sign, heartbeat.stat().st_mtime)
        if time.time() - last_sign > config.dist.timeout_s:
            raise vdist.PeerFailure(f"rank 0 gave no sign of life for {config.dist.timeout_s:.0f} s while preparing")
        time.sleep(0.2)
    info = json.loads(ready.read_text())
    if not info["ok"]:
        _raise_failure({**info, "error": info["error"] or "rank 0 failed while preparing the inputs"})
    plan = load_plan(out / "work", info["chunk_length"], info["record"]["filters"])
    remaining = np.load(out / "work" / f"remaining-{nonce}.npy").tolist()
    return RunState(out, ModelPack(**info["pack"]), info["chunk_length"], plan, remaining, info["precision"],
                    record=info["record"])


def _failure(err: BaseException) -> dict:
    """What the other ranks are told of rank 0's failure (it reports the failure itself)."""
    if isinstance(err, Stopped):
        return {"error": None, "stopped": True}
    return {"error": str(err) if isinstance(err, InputError) else "rank 0 failed while preparing the inputs"}


def _raise_failure(status: dict) -> None:
    if status.get("stopped"):
        raise Stopped("rank 0 was stopped by a signal while preparing")
    if status.get("error"):
        err = InputError(status["error"])
        err.reported = True  # rank 0 printed it
        raise err


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


def remove_leftovers(out: Path) -> None:
    """Temporary files of a run killed while writing (kill -9, a node lost): they can be large
    (a packed input) and are never resumed from. Called with OUT locked."""
    for path in [*out.glob("*.tmp"), *(out / "work").glob("*.tmp"), *(out / "work").glob("alive-rank*")]:
        if path.is_file():
            path.unlink(missing_ok=True)


def remove_handshake_files(work: Path) -> None:
    """The ready, remaining and heartbeat files of earlier runs (or of this one, once all ranks
    have read them)."""
    for pattern in ("ready-*.json", "remaining-*.npy", "heartbeat-*", "stop-*"):
        for path in work.glob(pattern):
            path.unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# Record keys that change results; a different value means a different run.
RESULT_KEYS = ("inputs", "models", "pack", "chunk_length", "unit_chunks", "precision", "esm_attention", "device",
               "save_embeddings", "filters")


def _run_record(config: PredictConfig, paths, pack: ModelPack, chunk_length: int, precision: str,
                device: torch.device) -> dict:
    inputs = [{"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_sha256(path)}
              for path in paths]
    digests = model_digests(pack)
    return {"inputs": inputs, "models": digests, "pack": fingerprint(pack, digests), "chunk_length": chunk_length,
            "unit_chunks": config.batch.unit_chunks, "precision": precision,
            "esm_attention": config.esm_attention, "device": device.type,
            "save_embeddings": config.save_embeddings, "filters": asdict(config.filter)}


def _differences(old: dict, new: dict) -> list[str]:
    names = []
    for key in RESULT_KEYS:
        if old.get(key) != new.get(key) and not (key == "pack" and "models" in names):
            names.append("inputs (file contents or paths)" if key == "inputs" else key)
    return names


def _changed_model(old: dict, new: dict, pack: ModelPack) -> str | None:
    """One line naming the first model whose content differs from the run recorded in OUT."""
    before = old.get("models")
    if not isinstance(before, dict):
        return None
    for role in ("classifier", "esm", "dnabert"):
        if before.get(role) != new["models"][role]:
            return (f"the {role} model {getattr(pack, role)} is not the one the run there used "
                    f"(it was {before.get(role)}, it is now {new['models'][role]})")
    return None


def _clear_progress(out: Path) -> None:
    """Remove a previous run's progress (committed scores and embeddings, which the new run would
    otherwise mix with its own). Its tables, run.json and config.yaml stay until replaced."""
    shutil.rmtree(out / "work" / "parts", ignore_errors=True)
    shutil.rmtree(out / "embeddings", ignore_errors=True)


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


def alive_file(work: Path, rank: int) -> Path:
    return work / f"alive-rank{rank}"


def show_alive(work: Path, rank: int) -> _Heartbeat:
    """Ranks > 0, from the end of preparation to their exit (removed then, whatever the exit)."""
    return _Heartbeat(alive_file(work, rank))


def silent_ranks(work: Path, world_size: int) -> list[int]:
    """Ranks whose alive file is still there but no longer touched: killed (OOM killer, kill -9)
    or their node lost. A rank that ended by itself removed its file and reported its own error."""
    files = {rank: alive_file(work, rank) for rank in range(1, world_size)}

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


def _prepare_work(ctx, config: PredictConfig, paths, pack: ModelPack, out: Path) -> RunState:
    work = out / "work"
    _fetch_models(pack)
    chunk_length = config.chunk_length or pack.chunk_length
    precision = resolved_precision(config, ctx.device)
    record = _run_record(config, paths, pack, chunk_length, precision, ctx.device)
    old = json.loads((work / RECORD).read_text()) if (work / RECORD).exists() else None
    same = old is not None and not _differences(old, record)
    if old is not None and not same and not config.force:
        changed = _changed_model(old, record, pack)
        problem = changed or f"holds a run with different {', '.join(_differences(old, record))}"
        raise InputError(f"{out}: {problem}; rerun with force=true to start afresh there, "
                         "or choose another output folder")
    fresh = not (same and (work / "index.npz").exists()) or config.force
    if fresh:
        # The old progress can no longer be resumed (the index is about to change), even if this
        # run fails before it starts; the old results themselves stay until replaced.
        (work / RECORD).unlink(missing_ok=True)
        pack_inputs(paths, work)  # validates; replaces the old index only on success
    afresh = fresh or not config.resume
    summaries = _input_summaries(record, work)
    plan = load_plan(work, chunk_length, record["filters"])
    store = None if afresh else ScoreStore(work / "parts")
    done = set() if afresh else store.load_committed()
    remaining = [u for u in range(plan.n_units(config.batch.unit_chunks)) if u not in done]
    return RunState(out, pack, chunk_length, plan, remaining, precision, store=store, record=record,
                    inputs=summaries, resumed_units=len(done), rejected_parts=len(store.rejected) if store else 0,
                    afresh=afresh)


def _input_summaries(record: dict, work: Path) -> list[dict]:
    with np.load(work / "index.npz", allow_pickle=False) as data:
        per_input = data["records_per_input"].tolist()
    return [{**entry, "records": n} for entry, n in zip(record["inputs"], per_input)]
