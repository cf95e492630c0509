"""Stage 1 of training: preparing DIR on rank 0 and embedding every kept frame through the
prediction engine, rank 0 writing checked parts and consolidating them into DIR/features."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from vnp.models.pack import ModelPack, load_pack
from vnp.run import dist as vdist
from vnp.run.folder import RunFolder, input_entries, new_run_record
from vnp.run.plan import load_plan, pack_inputs
from vnp.run.store import part_number, read_checked, write_atomic
from vnp.seq.seqio import record_pieces
from vnp.support.errors import InputError
from vnp.training.config import FEATURES, TrainConfig
from vnp.training.inputs import CDS_TEXT, FEATURE_RECORD, TrainingRecords, read_manifest


class FeatureSink:
    """Rank 0's sink: each step's embeddings as one checked part in DIR/features/parts."""

    def __init__(self, parts: Path, units: int, progress: bool):
        from tqdm import tqdm

        self.parts = parts
        self.next_part = max((part_number(p) + 1 for p in parts.glob("part-*.npz")), default=0)
        self.bar = tqdm(total=units, unit="unit", desc="vnp train: features", disable=not progress,
                        dynamic_ncols=True, mininterval=1.0)

    def consume(self, results) -> None:
        if not results:
            return
        arrays = {"units": np.asarray([r.unit for r in results], dtype=np.int64),
                  "keys": np.concatenate([r.keys for r in results]).astype(np.int64),
                  "embeddings": np.concatenate([r.embeddings for r in results]).astype(np.float32)}
        write_atomic(self.parts, self.next_part, arrays)
        self.next_part += 1
        self.bar.update(len(results))

    def close(self) -> None:
        self.bar.close()


def committed_units(parts: Path) -> set[int]:
    """Units in trustworthy parts; untrustworthy ones (truncated, corrupt) are deleted."""
    done: set[int] = set()
    for path in sorted(parts.glob("part-*.npz")):
        arrays = read_checked(path)
        if arrays is None or done & set(arrays["units"].tolist()):
            path.unlink()
            continue
        done.update(arrays["units"].tolist())
    for stale in parts.glob("*.tmp"):
        stale.unlink()
    return done


def compute_features(ctx, state, config: TrainConfig, stop, select_frames, sink) -> None:
    """The one place training meets the distributed engine: every rank embeds its units with the
    pack's models, rank 0's `sink` receives them step by step."""
    from vnp.run.steps import Models, run_steps

    models = Models.load_everywhere(ctx, state, config)
    run_steps(ctx, state, config, models, stop, sink=sink, select_frames=select_frames)


def consolidate(features: Path, n_units: int, labels_of_record: np.ndarray, first_chunk: np.ndarray) -> None:
    """Rank 0: the parts into features.npy / keys.npy / labels.npy in frame order (whatever order
    the units arrived in), then the parts are removed."""
    paths = sorted(features.joinpath("parts").glob("part-*.npz"))
    units, part_keys = [], []
    for path in paths:
        arrays = read_checked(path)
        if arrays is None:
            raise RuntimeError(f"{path}: feature part failed its checksum after the run")
        units.append(arrays["units"])
        part_keys.append(arrays["keys"])
    done = np.concatenate(units) if units else np.zeros(0, np.int64)
    if len(done) != n_units or set(done.tolist()) != set(range(n_units)):
        raise RuntimeError(f"feature parts hold {len(set(done.tolist()))} of {n_units} work units")
    keys = np.sort(np.concatenate(part_keys)) if part_keys else np.zeros(0, np.int64)
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise RuntimeError("a frame was embedded twice")
    tmp = features / "features.tmp.npy"
    matrix = None
    for path, these in zip(paths, part_keys):  # one part in memory at a time
        embeddings = read_checked(path)["embeddings"]
        if matrix is None:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keys), embeddings.shape[1]))
        matrix[np.searchsorted(keys, these)] = embeddings
    matrix.flush()
    del matrix
    records = np.searchsorted(first_chunk, keys // 6, side="right") - 1
    np.save(features / "keys.npy", keys)
    np.save(features / "labels.npy", labels_of_record[records].astype(np.int64))
    os.replace(tmp, features / "features.npy")  # the commit point of stage 1
    shutil.rmtree(features / "parts")


def _feature_record(entries, pack: ModelPack, chunk_length: int, precision: str, config: TrainConfig,
                    device: torch.device) -> dict:
    """The run record of DIR's features: predict's, each input with its label (features of other
    inputs, models or settings are never mixed in)."""
    inputs = [{**entry, "label": e.label} for entry, e in zip(input_entries([e.path for e in entries]), entries)]
    return new_run_record(inputs, pack, chunk_length, precision, config, device)


def prepare(ctx, config: TrainConfig, manifest: Path, folder: RunFolder):
    """Rank 0: checks, the input pack and CDS table (once), and what feature units are left."""
    from vnp.run.state import RunSpec, resolved_precision

    out = folder.root
    folder.check_usable()
    folder.lock()
    entries = read_manifest(manifest)
    pack = load_pack(config.pack, tiny_dir=out / "tiny_pack", chunk_length=config.chunk_length,
                     require_classifier=False)
    chunk_length = config.chunk_length or pack.chunk_length
    precision = resolved_precision(config, ctx.device)
    features = out / FEATURES
    run_record = _feature_record(entries, pack, chunk_length, precision, config, ctx.device)
    run_record_path = features / FEATURE_RECORD
    old = folder.read_json(run_record_path) if run_record_path.exists() else None
    if old is not None and old != run_record:
        if not config.force:
            changed = sorted(k for k in run_record if old.get(k) != run_record[k])
            raise InputError(f"{out}: holds features of other {', '.join(changed)}; rerun with force=true to "
                             "start afresh there, or choose another output folder")
        shutil.rmtree(features)
        folder.checkpoint.unlink(missing_ok=True)
    work = RunFolder(features).work
    if old != run_record or not (work / CDS_TEXT).exists():
        reader = TrainingRecords({e.path: e.label for e in entries}, work)
        pack_inputs([e.path for e in entries], work, read=lambda path: record_pieces(reader(path)))
        reader.finish()
        shutil.rmtree(features / "parts", ignore_errors=True)
        for name in ("features.npy", "keys.npy", "labels.npy"):
            (features / name).unlink(missing_ok=True)
        folder.write_json(run_record_path, run_record, indent=None)
    (features / "parts").mkdir(parents=True, exist_ok=True)
    plan = load_plan(work, chunk_length)
    unit_chunks = run_record["unit_chunks"]  # the unit size, read once, then from the spec
    n_units = plan.n_units(unit_chunks)
    done = set(range(n_units)) if (features / "features.npy").exists() else committed_units(features / "parts")
    return RunSpec(pack, chunk_length, precision, unit_chunks,
                   tuple(u for u in range(n_units) if u not in done), run_record, resumed_units=len(done))


def shared(ctx, produce):
    """Rank 0 runs `produce()`; every rank gets its result, or stops with rank 0's failure (an
    InputError is said once, by rank 0), so no rank waits for a broadcast that will not come."""
    if ctx.is_main:
        try:
            value = produce()
        except Exception as err:
            vdist.broadcast_object(ctx, {"error": str(err), "input": isinstance(err, InputError)})
            raise
        vdist.broadcast_object(ctx, {"value": value})
        return value
    message = vdist.broadcast_object(ctx)
    if "error" in message:
        if message["input"]:
            raise InputError(message["error"], reported=True)
        raise vdist.PeerFailure("rank 0 failed", reported=True)
    return message["value"]

