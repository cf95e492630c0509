"""Setting up a run in OUT: checks, the run record that guards OUT, input packing, resume.

Rank 0 does the work; the other ranks learn the outcome in two stages: a quick broadcast after the
cheap checks (OUT usable, inputs present, model pack resolved), then a ready file in OUT/work once
the inputs are validated and packed, which may take long: they wait on the file, not on a
collective, while rank 0 touches a heartbeat, so a large input cannot trip `dist.timeout_s`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vnp import __version__
from vnp import dist as vdist
from vnp.config import PredictConfig
from vnp.errors import InputError
from vnp.models.pack import ModelPack, fingerprint, load_pack
from vnp.plan import ChunkPlan, check_inputs, file_sha256, load_plan, pack_inputs
from vnp.store import ScoreStore

RECORD = "record.json"
HEARTBEAT_EVERY_S = 2.0


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

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def n_units(self) -> int:
        return self.plan.n_units(self.record["unit_chunks"])

    def run_json(self, ctx: vdist.Context, config: PredictConfig, counts, times) -> dict:
        return {
            "vnp": __version__, "torch": torch.__version__,
            "models": {**asdict(self.pack), "fingerprint": self.record["pack"]},
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
    handle = open(out / "work" / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InputError(f"{out}: another vnp run is using this output folder") from None
    _LOCKS.append(handle)


def _quick_checks(ctx, config: PredictConfig, inputs: list[str], out: Path):
    _check_out(out)
    _lock_out(out)
    paths = check_inputs(inputs)
    pack = load_pack(config.pack, config.classifier or None, tiny_dir=out / "work" / "tiny_pack",
                     chunk_length=config.chunk_length)
    from vnp.models.classifier import load_classifier

    classifier = load_classifier(pack.classifier, input_dim=pack.embedding_dim)  # refused before any work
    return paths, pack, classifier


def prepare_run(ctx: vdist.Context, config: PredictConfig, inputs: list[str], out: Path) -> RunState:
    """Rank 0: check, guard OUT with the run record, pack inputs, find what is left to do."""
    nonce = uuid.uuid4().hex[:12]
    t0 = time.time()
    try:
        paths, pack, classifier = _quick_checks(ctx, config, inputs, out)
    except InputError as err:
        vdist.broadcast_object(ctx, {"nonce": nonce, "error": str(err)})
        raise
    vdist.broadcast_object(ctx, {"nonce": nonce, "error": None})
    ready = out / "work" / f"ready-{nonce}.json"
    remove_handshake_files(out / "work")
    beating = _Heartbeat(out / "work" / f"heartbeat-{nonce}")
    try:
        state = _prepare_work(ctx, config, paths, pack, out)
    except BaseException as err:
        _write_json(ready, {"ok": False, "error": str(err) if isinstance(err, InputError) else None})
        raise
    finally:
        beating.stop()
    state.classifier = classifier
    state.stages["prepare_s"] = round(time.time() - t0, 3)
    np.save(out / "work" / f"remaining-{nonce}.npy", np.asarray(state.remaining, dtype=np.int64))
    _write_json(ready, {"ok": True, "pack": asdict(pack), "chunk_length": state.chunk_length,
                        "record": state.record, "precision": state.precision})
    return state


def wait_until_ready(ctx: vdist.Context, config: PredictConfig, out: Path) -> RunState:
    """Ranks > 0: wait for rank 0's checks, then for its ready file (heartbeat-guarded)."""
    status = vdist.broadcast_object(ctx)
    if status["error"]:
        raise InputError(status["error"], reported=True)  # rank 0 printed it
    nonce = status["nonce"]
    ready = out / "work" / f"ready-{nonce}.json"
    heartbeat = out / "work" / f"heartbeat-{nonce}"
    last_sign = time.time()
    while not ready.exists():
        if heartbeat.exists():
            last_sign = max(last_sign, heartbeat.stat().st_mtime)
        if time.time() - last_sign > config.dist.timeout_s:
            raise vdist.PeerFailure(f"rank 0 gave no sign of life for {config.dist.timeout_s:.0f} s while preparing")
        time.sleep(0.2)
    info = json.loads(ready.read_text())
    if not info["ok"]:
        raise InputError(info["error"] or "rank 0 failed while preparing the inputs", reported=True)
    plan = load_plan(out / "work", info["chunk_length"], info["record"]["filters"])
    remaining = np.load(out / "work" / f"remaining-{nonce}.npy").tolist()
    return RunState(out, ModelPack(**info["pack"]), info["chunk_length"], plan, remaining, info["precision"],
                    record=info["record"])


def remove_handshake_files(work: Path) -> None:
    """The ready, remaining and heartbeat files of earlier runs (or of this one, once all ranks
    have read them)."""
    for pattern in ("ready-*.json", "remaining-*.npy", "heartbeat-*"):
        for path in work.glob(pattern):
            path.unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# Record keys that change results; a different value means a different run.
RESULT_KEYS = ("inputs", "pack", "chunk_length", "unit_chunks", "precision", "esm_attention", "device",
               "save_embeddings", "filters")


def _run_record(config: PredictConfig, paths, pack: ModelPack, chunk_length: int, precision: str,
                device: torch.device) -> dict:
    inputs = [{"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_sha256(path)}
              for path in paths]
    return {"inputs": inputs, "pack": fingerprint(pack), "chunk_length": chunk_length,
            "unit_chunks": config.batch.unit_chunks, "precision": precision,
            "esm_attention": config.esm_attention, "device": device.type,
            "save_embeddings": config.save_embeddings, "filters": asdict(config.filter)}


def _differences(old: dict, new: dict) -> list[str]:
    names = []
    for key in RESULT_KEYS:
        if old.get(key) != new.get(key):
            names.append("inputs (file contents or paths)" if key == "inputs" else key)
    return names


def _clear_results(out: Path) -> None:
    """Remove a previous run's progress and results (after the new inputs proved valid)."""
    shutil.rmtree(out / "work" / "parts", ignore_errors=True)
    shutil.rmtree(out / "embeddings", ignore_errors=True)
    from vnp.outputs import FILES

    for name in (*FILES, "run.json", "config.yaml", "report.html"):
        (out / name).unlink(missing_ok=True)


class _Heartbeat:
    """Rank 0 touches a file every few seconds while it prepares; the other ranks watch it."""

    def __init__(self, path: Path):
        self.path = path
        self._done = threading.Event()
        path.touch()
        self._thread = threading.Thread(target=self._run, name="vnp-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(HEARTBEAT_EVERY_S):
            self.path.touch()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


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
        raise InputError(f"{out}: holds a run with different {', '.join(_differences(old, record))}; "
                         "rerun with force=true to start afresh there, or choose another output folder")
    if not (same and (work / "index.npz").exists()) or config.force:
        pack_inputs(paths, work)  # validates; replaces the old index only on success
        _clear_results(out)
        _write_json(work / RECORD, record)
    elif not config.resume:
        _clear_results(out)
    summaries = _input_summaries(record, work)
    plan = load_plan(work, chunk_length, record["filters"])
    store = ScoreStore(work / "parts")
    done = store.load_committed()
    remaining = [u for u in range(plan.n_units(config.batch.unit_chunks)) if u not in done]
    state = RunState(out, pack, chunk_length, plan, remaining, precision, store=store, record=record,
                     inputs=summaries, resumed_units=len(done), rejected_parts=len(store.rejected))
    return state


def _input_summaries(record: dict, work: Path) -> list[dict]:
    with np.load(work / "index.npz", allow_pickle=False) as data:
        per_input = data["records_per_input"].tolist()
    return [{**entry, "records": n} for entry, n in zip(record["inputs"], per_input)]
