"""Stage 1 of training: preparing DIR on rank 0 and embedding every kept frame through the
prediction engine, rank 0 writing checked parts and consolidating them into DIR/features (every
path named by `vnp.run.folder.TrainingFolder` and `FeatureFolder`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from vnp.models import resolve_precision
from vnp.models.pack import ModelPack, load_pack
from vnp.run.engine import RowSink
from vnp.run.folder import FeatureFolder, TrainingFolder, input_entries, keep_unit_size, new_run_record
from vnp.run.plan import load_plan, pack_inputs
from vnp.run.store import part_number, read_checked, write_atomic
from vnp.seq.seqio import record_pieces
from vnp.support import atomic
from vnp.support.errors import InputError
from vnp.training.config import TrainConfig
from vnp.training.inputs import TrainingRecords, read_manifest


class FeatureSink(RowSink):
    """Rank 0's sink: each step's embeddings as one checked part in `parts` (DIR/features')."""

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
    atomic.remove_matching(parts, atomic.is_temporary)
    return done


def compute_features(ctx, state, config: TrainConfig, stop, select_frames, sink) -> None:
    """The one place training meets the distributed engine: every rank embeds its units with the
    pack's models, rank 0's `sink` receives them step by step."""
    from vnp.run.steps import Models, run_steps

    models = Models.load_everywhere(ctx, state, config)
    run_steps(ctx, state, config, models, stop, sink=sink, select_frames=select_frames)


def consolidate(features: FeatureFolder, n_units: int, labels_of_record: np.ndarray, first_chunk: np.ndarray) -> None:
    """Rank 0: the parts into the folder's matrix, keys and labels in frame order (whatever order
    the units arrived in), then the parts are removed."""
    paths = sorted(features.parts.glob("part-*.npz"))
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
    records = np.searchsorted(first_chunk, keys // 6, side="right") - 1
    with atomic.AtomicFiles(fsync=True) as files:  # replaced in order: features.npy last, the commit point
        for path, array in ((features.keys, keys), (features.labels, labels_of_record[records].astype(np.int64))):
            with files.open(path, "wb") as fh:
                np.save(fh, array)
        tmp = files.temporary(features.matrix)  # a memory map needs a file name
        matrix = None
        for path, these in zip(paths, part_keys):  # one part in memory at a time
            embeddings = read_checked(path)["embeddings"]
            if matrix is None:
                matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                   shape=(len(keys), embeddings.shape[1]))
            matrix[np.searchsorted(keys, these)] = embeddings
        matrix.flush()
        del matrix
    shutil.rmtree(features.parts)


def _feature_record(entries, pack: ModelPack, chunk_length: int, precision: str, config: TrainConfig,
                    device: torch.device) -> dict:
    """The run record of DIR's features: predict's, each input with its label (features of other
    inputs, models or settings are never mixed in)."""
    inputs = [{**entry, "label": e.label} for entry, e in zip(input_entries([e.path for e in entries]), entries)]
    return new_run_record(inputs, pack, chunk_length, precision, config, device)


def check(config: TrainConfig, manifest: Path, folder: TrainingFolder):
    """Rank 0, in DIR locked: the manifest's entries and the model pack (quick)."""
    entries = read_manifest(manifest)
    pack = load_pack(config.pack, tiny_dir=folder.tiny_pack, chunk_length=config.chunk_length,
                     require_classifier=False, models_dir=config.models.dir)
    return entries, pack


def prepare(ctx, config: TrainConfig, entries, pack: ModelPack, folder: TrainingFolder):
    """Rank 0: the input pack and CDS table (once), and what feature units are left."""
    from vnp.run.state import RunSpec

    chunk_length = config.chunk_length or pack.chunk_length
    precision = resolve_precision(config.precision, ctx.device)
    features = folder.features
    run_record = _feature_record(entries, pack, chunk_length, precision, config, ctx.device)
    old = features.read_run_record()
    run_record = keep_unit_size(run_record, old, config.batch.unit_chunks)
    if old is not None and old != run_record:
        if not config.force:
            changed = sorted(k for k in run_record if old.get(k) != run_record[k])
            raise InputError(f"{folder.root}: holds features of other {', '.join(changed)}; rerun with force=true "
                             "to start afresh there, or choose another output folder")
        shutil.rmtree(features.root)
        folder.checkpoint.unlink(missing_ok=True)
    if old != run_record or not features.cds_text.exists():
        reader = TrainingRecords({e.path: e.label for e in entries}, features)
        try:
            pack_inputs([e.path for e in entries], features.work, read=lambda path: record_pieces(reader(path)))
        except BaseException:
            reader.discard()
            raise
        reader.finish()
        shutil.rmtree(features.parts, ignore_errors=True)
        for path in features.arrays:
            path.unlink(missing_ok=True)
        features.write_run_record(run_record)
    features.parts.mkdir(parents=True, exist_ok=True)
    plan = load_plan(features.work, chunk_length)
    unit_chunks = run_record["unit_chunks"]  # the unit size, read once, then from the spec
    n_units = plan.n_units(unit_chunks)
    done = set(range(n_units)) if features.matrix.exists() else committed_units(features.parts)
    return RunSpec(pack, chunk_length, precision, unit_chunks,
                   tuple(u for u in range(n_units) if u not in done), run_record, resumed_units=len(done))
