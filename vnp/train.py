"""Training a VirNucPro classifier head on labelled sequences (`vnp train`), under any launcher.

    vnp train MANIFEST.tsv -o DIR [-c CONFIG.yaml] [key=value ...]
    torchrun --standalone --nproc_per_node=4 -m vnp.train MANIFEST.tsv -o DIR pack=500 chunk_length=150

MANIFEST.tsv has one input file per line, `path<TAB>label` with label `virus` or `others` (paths
relative to the manifest's folder; blank lines and `#` comments are skipped). A GenBank file
(`.gbff`, plain or compressed) selects frames by the original's training rule; a FASTA/FASTQ file
keeps every stop-free frame:

  * a chunk with any ambiguous base (N R Y M K S W H B V D) is dropped;
  * GenBank: a frame is kept when it has no stop codon and its protein is a substring of one of
    the record's CDS `translation` qualifiers (the original's `identify_seq(..., istraindata=True)`);
  * FASTA: every stop-free frame is kept (as prediction does).

Two stages, both resumable:
  1. features: the prediction engine (`vnp.steps.run_steps`) embeds every kept frame with the
     pack's DNABERT-S and ESM2 (each rank its work units, rows gathered to rank 0), rank 0 writes
     them in checked parts to DIR/features and at the end into DIR/features/features.npy. They
     are cached: a rerun with other `train.*` values trains again without embedding again.
  2. head: the original's MLP trained with DistributedDataParallel: batch statistics synchronised
     across ranks, a DistributedSampler over frames, a global batch of `train.batch` whatever the
     world size, dropout masks drawn per frame (not per rank). Checkpointed after every epoch;
     the same command resumes after a kill with the same final weights.

DIR gets `classifier/` (safetensors + json, as `vnp pack convert` writes), `pack.yaml` (use it as
`vnp predict pack=DIR/pack.yaml`), `metrics.json` (per epoch losses and validation metrics, the
held-out frame IDs) and `learning_curve.png`.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vnp import dist as vdist
from vnp.config import ModelRunConfig, _help, help_text
from vnp.errors import InputError, where
from vnp.models.pack import ModelPack, load_pack
from vnp.plan import ChunkPlan, check_inputs, iter_ids, load_plan, pack_inputs
from vnp.plots import pyplot, save_png
from vnp.run_folder import RunFolder, input_entries, new_run_record
from vnp.seqio import NUCLEOTIDE_LETTERS, Record, check_readable, iter_records, open_binary, record_pieces
from vnp.store import part_number, read_checked, write_atomic
from vnp.translate import FRAME_NAMES, Chunk, Frame


LABELS = {"others": 0, "virus": 1}  # column 1 of the classifier's softmax is P(virus), as published
AMBIGUOUS = frozenset("NRYMKSWHBVD")  # the original's training filter (U is not in it)
FEATURES = "features"


@dataclass
class TrainParams:
    lr: float = _help("SGD learning rate (the original's 2e-4)", 2e-4)
    momentum: float = _help("SGD momentum", 0.9)
    step_size: int = _help("StepLR: epochs between learning-rate decays", 10)
    gamma: float = _help("StepLR: decay factor", 0.85)
    batch: int = _help("global batch size (frames per optimiser step, split evenly over the ranks)", 32)
    holdout: float = _help("fraction of frames held out for validation", 0.1)
    seed: int = _help("seed of the held-out split (the original's random.seed(42)), the initial weights, "
                      "the shuffling and the dropout masks", 42)
    patience: int = _help("early stopping: epochs without a lower validation loss before stopping", 5)
    max_epochs: int = _help("most epochs", 200)
    dropout: float = _help("dropout probability after the hidden layer", 0.5)
    hidden: int = _help("hidden units", 512)

    def __post_init__(self) -> None:
        for name in ("step_size", "batch", "patience", "max_epochs", "hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"train.holdout must be between 0 and 1, got {self.holdout}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"train.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")


@dataclass
class TrainConfig(ModelRunConfig):
    """`vnp train`: the model keys mean what they mean for `vnp predict` (the same engine reads
    them), plus the head's training settings."""

    train: TrainParams = field(default_factory=TrainParams)


# ---------------------------------------------------------------------------------------------
# The manifest and the inputs


@dataclass
class ManifestEntry:
    path: Path
    label: str


def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """`path<TAB>label` lines; every file readable, every label known, both classes present."""
    check_readable(manifest)
    entries = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r").split("\t")
        if number == 1 and fields == ["path", "label"]:
            continue  # a header line
        if len(fields) != 2 or not fields[0]:
            raise InputError(f"{where(manifest, line=number)}: expected 'path<TAB>label', got {line!r}")
        name, label = fields
        if label not in LABELS:
            raise InputError(f"{where(manifest, line=number)}: unknown label {label!r} (expected virus or others)")
        path = Path(name) if Path(name).is_absolute() else manifest.parent / name
        try:
            check_readable(path)
        except InputError as err:
            raise InputError(f"{where(manifest, line=number)}: {err}") from None
        entries.append(ManifestEntry(path, label))
    check_inputs([str(e.path) for e in entries])
    missing = [name for name in LABELS if name not in {e.label for e in entries}]
    if missing:
        raise InputError(f"{manifest}: no file labelled {' or '.join(missing)}; training needs both virus and others")
    return entries


def is_genbank(path: Path) -> bool:
    with open_binary(path) as fh:
        return fh.read(4096).lstrip().startswith(b"LOCUS")


def genbank_records(path: Path) -> Iterator[tuple[Record, list[str]]]:
    """Each GenBank record (Biopython's parser) with its CDS `translation` qualifiers, in order."""
    from Bio import BiopythonParserWarning, SeqIO
    from Bio.Seq import UndefinedSequenceError

    with io.TextIOWrapper(open_binary(path), encoding="ascii", errors="replace") as text, warnings.catch_warnings():
        warnings.simplefilter("ignore", BiopythonParserWarning)  # odd layouts parse; broken ones raise below
        try:
            for record in SeqIO.parse(text, "genbank"):
                try:
                    seq = str(record.seq)
                except UndefinedSequenceError:
                    raise InputError(f"{where(path, record.id)}: GenBank record without a sequence "
                                     "(no ORIGIN)") from None
                bad = seq.encode("ascii", "replace").translate(None, NUCLEOTIDE_LETTERS)
                if bad:
                    raise InputError(f"{where(path, record.id)}: invalid character {chr(bad[0])!r} in the sequence")
                proteins = [f.qualifiers.get("translation", [""])[0] for f in record.features if f.type == "CDS"]
                yield Record(record.id, seq, None), proteins  # GenBank: no line numbers
        except ValueError as err:  # Biopython's parse errors
            raise InputError(f"{path}: not a readable GenBank file ({str(err).splitlines()[0]})") from None


CDS_TEXT = "cds.bin"  # per record: its CDS translations joined by newlines, records back to back
CDS_INDEX = "cds_index.npy"  # per record: offset and length in cds.bin; length -1 = keep every frame
RECORD_LABELS = "record_labels.npy"
FEATURE_RECORD = "record.json"  # DIR/features/record.json: the run record of the cached features


class TrainingRecords:
    """The record reader handed to `pack_inputs`: GenBank or FASTA/FASTQ by content. Streams each
    record's CDS translations into `work/cds.bin` (none for FASTA: every stop-free frame is kept)
    and notes its label; `finish()` commits both after the packing succeeded."""

    def __init__(self, labels: dict[Path, str], work: Path):
        self.labels_of_path, self.work = labels, work
        work.mkdir(parents=True, exist_ok=True)
        self.text = open(work / (CDS_TEXT + ".tmp"), "wb")
        self.index: list[tuple[int, int]] = []
        self.labels: list[int] = []

    def __call__(self, path: Path) -> Iterator[Record]:
        label = LABELS[self.labels_of_path[path]]
        if is_genbank(path):
            for record, proteins in genbank_records(path):
                # One string per record: a frame's protein is in it iff it is in one of the
                # translations (the newline is no amino acid, so a match cannot span two).
                self._note(label, "\n".join(proteins).encode("ascii", "replace"))
                yield record
        else:
            for record in iter_records(path):
                self._note(label, None)
                yield record

    def _note(self, label: int, proteins: bytes | None) -> None:
        self.labels.append(label)
        self.index.append((self.text.tell(), -1 if proteins is None else len(proteins)))
        if proteins:
            self.text.write(proteins)

    def finish(self) -> None:
        self.text.close()
        np.save(self.work / RECORD_LABELS, np.asarray(self.labels, dtype=np.int64))
        np.save(self.work / CDS_INDEX, np.asarray(self.index, dtype=np.int64).reshape(-1, 2))
        os.replace(self.work / (CDS_TEXT + ".tmp"), self.work / CDS_TEXT)  # the commit point


class TrainingFrames:
    """The `select_frames(chunk, frames)` hook: the original's training rule (module docstring).
    Each rank reads a record's translations from `work/cds.bin` when its chunks come up (a unit's
    chunks are consecutive, so one record is read once a unit), not the whole table."""

    def __init__(self, work: Path, plan: ChunkPlan):
        self.path = work / CDS_TEXT
        self.index = np.load(work / CDS_INDEX)
        self.plan = plan
        self.record, self.proteins = -1, None

    def _proteins(self, record: int) -> str | None:
        if record != self.record:
            offset, length = (int(v) for v in self.index[record])
            if length < 0:
                self.proteins = None
            else:
                with open(self.path, "rb") as fh:
                    fh.seek(offset)
                    self.proteins = fh.read(length).decode("ascii", "replace")
            self.record = record
        return self.proteins

    def __call__(self, chunk: Chunk, frames: list[Frame]) -> list[Frame]:
        if not AMBIGUOUS.isdisjoint(chunk.seq.upper()):
            return []
        proteins = self._proteins(int(self.plan.record_of(np.asarray(chunk.index))))
        if proteins is None:
            return frames
        return [frame for frame in frames if frame.protein in proteins]


# ---------------------------------------------------------------------------------------------
# Stage 1: features through the distributed engine


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
    from vnp.steps import Models, run_steps

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


# ---------------------------------------------------------------------------------------------
# Preparing DIR (rank 0), shared with the other ranks


def _feature_record(entries, pack: ModelPack, chunk_length: int, precision: str, config: TrainConfig,
                    device: torch.device) -> dict:
    """The run record of DIR's features: predict's, each input with its label (features of other
    inputs, models or settings are never mixed in)."""
    inputs = [{**entry, "label": e.label} for entry, e in zip(input_entries([e.path for e in entries]), entries)]
    return new_run_record(inputs, pack, chunk_length, precision, config, device)


def prepare(ctx, config: TrainConfig, manifest: Path, folder: RunFolder):
    """Rank 0: checks, the input pack and CDS table (once), and what feature units are left."""
    from vnp.run_state import RunSpec, resolved_precision

    out = folder.root
    folder.check_usable()
    folder.lock()
    entries = read_manifest(manifest)
    pack = load_pack(config.pack, tiny_dir=out / "tiny_pack", chunk_length=config.chunk_length,
                     require_classifier=False, models_dir=config.models.dir)
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


# ---------------------------------------------------------------------------------------------
# Stage 2: the head, with DistributedDataParallel


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """A differentiable all_reduce (its backward sums the gradients of every rank)."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated for a private module, yet still the public API
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the global batch of all ranks on CPU (gloo), where nn.SyncBatchNorm refuses
    to run under DDP. The statistics go through differentiable all_reduces, so each rank's
    gradients include the other ranks' share, exactly as nn.SyncBatchNorm does on GPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        count = x.shape[0] * world  # every rank holds the same number of rows
        total = x.sum(0)
        total = _global_sum(total) if world > 1 else total
        mean = total / count
        centred = x - mean
        squares = (centred * centred).sum(0)
        squares = _global_sum(squares) if world > 1 else squares
        var = squares / count
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * count / max(count - 1, 1))
            self.num_batches_tracked += 1
        return centred / torch.sqrt(var + self.eps) * self.weight + self.bias


_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensors holding values < 2**32; no overflow)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def dropout_keep(rows: torch.Tensor, epoch: int, seed: int, width: int, p: float) -> torch.Tensor:
    """Dropout's keep mask (B, width) drawn from (seed, epoch, frame row) alone: the same for a
    frame whatever rank or batch position it lands on, and after a resume."""
    base = _hash32(torch.tensor((seed * 1_000_003 + epoch * 7919) & _M32, dtype=torch.int64))
    per_row = _hash32((rows.to(torch.int64) ^ base) & _M32)
    cells = _hash32((per_row[:, None] + torch.arange(width, dtype=torch.int64) * 0x9E3779B1) & _M32)
    return cells.to(torch.float64) / 2.0 ** 32 >= p


class TrainingHead(nn.Module):
    """The classifier in training: its own layers, but per-frame dropout masks (see dropout_keep)."""

    def __init__(self, classifier, dropout: float, seed: int):
        super().__init__()
        self.classifier, self.p, self.seed = classifier, dropout, seed

    def forward(self, x: torch.Tensor, rows: torch.Tensor, epoch: int) -> torch.Tensor:
        c = self.classifier
        hidden = F.relu(c.bn1(c.hidden_layer(x)))
        if self.training and self.p > 0:
            keep = dropout_keep(rows, epoch, self.seed, hidden.shape[1], self.p).to(hidden.device)
            hidden = hidden * keep.to(hidden.dtype) / (1 - self.p)
        return c.output_layer(hidden)


def new_classifier(input_dim: int, params: TrainParams, device: torch.device):
    """The original's MLP and initialisation (Xavier-uniform weights), with batch statistics
    synchronised across ranks."""
    from vnp.models.classifier import MLPClassifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = MLPClassifier(input_dim, params.hidden, len(LABELS))
        nn.init.xavier_uniform_(model.hidden_layer.weight)
        nn.init.xavier_uniform_(model.output_layer.weight)
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        synced = GlobalBatchNorm1d(params.hidden)
        synced.load_state_dict(model.bn1.state_dict())
        model.bn1 = synced
    return model.to(device)


@dataclass
class Split:
    train: np.ndarray  # rows of features.npy
    val: np.ndarray


def split_rows(n: int, holdout: float, seed: int) -> Split:
    """The original's split: random.seed(42), shuffle the indices, the first 10% held out."""
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    cut = int(n * holdout)
    return Split(np.asarray(sorted(indices[cut:]), dtype=np.int64), np.asarray(sorted(indices[:cut]), dtype=np.int64))


def validation_metrics(model, feats, labels: np.ndarray, rows: np.ndarray, device) -> dict:
    """Loss and the original's metrics (scikit-learn) on the held-out rows."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    model.eval()
    probs, loss = [], 0.0
    with torch.no_grad():
        for start in range(0, len(rows), 4096):
            part = rows[start:start + 4096]
            x = torch.from_numpy(np.asarray(feats[part], dtype=np.float32)).to(device)
            y = torch.from_numpy(labels[part]).to(device)
            logits = model(x, torch.from_numpy(part), 0)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
    p = np.concatenate(probs)
    truth = labels[rows]
    pred = (p >= 0.5).astype(np.int64)
    both = len(np.unique(truth)) == 2
    return {"val_loss": loss / len(rows), "accuracy": float(accuracy_score(truth, pred)),
            "precision": float(precision_score(truth, pred, zero_division=0)),
            "recall": float(recall_score(truth, pred, zero_division=0)),
            "f1": float(f1_score(truth, pred, zero_division=0)),
            "auroc": float(roc_auc_score(truth, p)) if both else None}


def _state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_checkpoint(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class Trainer:
    """One rank's share of the training: the model (wrapped in DDP over several ranks), its
    optimiser and schedule, the cached features, and the progress of the run."""

    ctx: object
    params: TrainParams
    feats: np.ndarray  # memory-mapped features.npy
    labels: np.ndarray
    split: Split
    model: nn.Module  # the MLPClassifier being trained
    head: TrainingHead
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: torch.utils.data.DistributedSampler
    state: dict  # epoch, history, best_loss, best_epoch, best (weights), counter, finished, settings

    @property
    def steps(self) -> int:
        """Optimiser steps per epoch; the last incomplete global batch is left out, so every step
        has the same global batch whatever the world size."""
        return len(self.split.train) // self.params.batch

    def train_epoch(self, epoch: int, bar) -> float:
        """One epoch of DDP steps; the mean training loss over all ranks' batches."""
        local = self.params.batch // self.ctx.world_size
        self.sampler.set_epoch(epoch)
        order = np.asarray(list(self.sampler), dtype=np.int64)[: self.steps * local]
        self.ddp.train()
        running = 0.0
        for step in range(self.steps):
            rows = self.split.train[order[step * local:(step + 1) * local]]
            x = torch.from_numpy(np.asarray(self.feats[rows], dtype=np.float32)).to(self.ctx.device)
            y = torch.from_numpy(self.labels[rows]).to(self.ctx.device)
            loss = F.cross_entropy(self.ddp(x, torch.from_numpy(rows), epoch), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / (step + 1):.4f}", refresh=False)
        return sum(vdist.all_gather_object(self.ctx, running)) / max(1, self.steps * self.ctx.world_size)

    def end_epoch(self, epoch: int, train_loss: float) -> dict:
        """Validation, early stopping (the original's rule) and the learning-rate schedule."""
        state = self.state
        metrics = validation_metrics(self.head, self.feats, self.labels, self.split.val, self.ctx.device)
        metrics = vdist.broadcast_object(self.ctx, metrics)  # rank 0's numbers decide, on every rank
        entry = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": self.optimizer.param_groups[0]["lr"]}
        state["history"].append(entry)
        if state["best_loss"] is None or metrics["val_loss"] < state["best_loss"]:
            state.update(best_loss=metrics["val_loss"], best_epoch=epoch + 1, best=_state(self.model), counter=0)
        else:
            state["counter"] += 1
            state["finished"] = state["counter"] >= self.params.patience
        if not state["finished"]:
            self.scheduler.step()
        state["epoch"] = epoch + 1
        state["finished"] = state["finished"] or state["epoch"] >= self.params.max_epochs
        return entry

    def checkpoint(self) -> dict:
        return {**self.state, "model": _state(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint when it was made with the same settings and features."""
        if not path.exists():
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("settings") != self.state["settings"]:
            vdist.print0(self.ctx, "vnp: training settings changed: training starts again (features are reused)")
            return
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = {k: saved[k] for k in self.state}
        vdist.print0(self.ctx, f"vnp: resuming training after epoch {self.state['epoch']}")


def new_trainer(ctx, params: TrainParams, features: Path, settings: dict) -> Trainer:
    feats = np.load(features / "features.npy", mmap_mode="r")
    labels = np.load(features / "labels.npy")
    split = split_rows(len(labels), params.holdout, params.seed)
    model = new_classifier(feats.shape[1], params, ctx.device)
    head = TrainingHead(model, params.dropout, params.seed)
    ddp = head
    if ctx.world_size > 1:
        devices = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(head, device_ids=devices)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=params.step_size, gamma=params.gamma)
    sampler = torch.utils.data.DistributedSampler(range(len(split.train)), num_replicas=ctx.world_size,
                                                  rank=ctx.rank, shuffle=True, seed=params.seed, drop_last=True)
    state = {"epoch": 0, "history": [], "best_loss": None, "best_epoch": 0, "best": _state(model),
             "counter": 0, "finished": False, "settings": settings}
    return Trainer(ctx, params, feats, labels, split, model, head, ddp, optimizer, scheduler, sampler, state)


def train_head(ctx, config: TrainConfig, out: Path, settings: dict, stop) -> Trainer:
    """Every rank: DDP training from the cached features, a checkpoint after each epoch, until
    early stopping, the last epoch or a stop signal."""
    from tqdm import tqdm

    trainer = new_trainer(ctx, config.train, out / FEATURES, settings)
    checkpoint = RunFolder(out).checkpoint
    trainer.resume(checkpoint)
    left = 0 if trainer.state["finished"] else config.train.max_epochs - trainer.state["epoch"]
    bar = tqdm(total=left * trainer.steps, unit="batch", desc="vnp train", dynamic_ncols=True, mininterval=1.0,
               disable=not (config.progress and ctx.is_main))
    try:
        for epoch in range(trainer.state["epoch"], trainer.state["epoch"] + left):
            entry = trainer.end_epoch(epoch, trainer.train_epoch(epoch, bar))
            bar.set_postfix(epoch=epoch + 1, loss=f"{entry['train_loss']:.4f}", val_loss=f"{entry['val_loss']:.4f}",
                            val_acc=f"{entry['accuracy']:.3f}", val_f1=f"{entry['f1']:.3f}")
            if ctx.is_main:
                save_checkpoint(checkpoint, trainer.checkpoint())
            # No rank runs ahead of the checkpoint; a signal on any rank stops all after it.
            if any(vdist.all_gather_object(ctx, stop.requested)):
                stop.requested = True
            if stop.requested or trainer.state["finished"]:
                break
    finally:
        bar.close()
    return trainer


# ---------------------------------------------------------------------------------------------
# Outputs (rank 0)


def frame_ids(work: Path, chunk_length: int, keys: np.ndarray) -> list[str]:
    plan = load_plan(work, chunk_length)
    ids = list(iter_ids(work))
    chunks = keys // 6
    records = plan.record_of(chunks)
    return [f"{ids[r]}_chunk_{c - int(plan.first_chunk[r]) + 1}{FRAME_NAMES[k % 6]}"
            for k, c, r in zip(keys.tolist(), chunks.tolist(), records.tolist())]


def write_outputs(out: Path, spec, config: TrainConfig, trainer: Trainer, world_size: int) -> None:
    from vnp.models.classifier import MLPClassifier, save_classifier

    pack = spec.pack
    features = out / FEATURES
    keys = np.load(features / "keys.npy")
    labels = np.load(features / "labels.npy")
    dim = pack.embedding_dim
    model = MLPClassifier(dim, config.train.hidden, len(LABELS))
    state, split = trainer.state, trainer.split
    model.load_state_dict(state["best"])
    save_classifier(model.eval(), out / "classifier",
                    provenance={"trained_by": "vnp train", "best_epoch": state["best_epoch"],
                                "chunk_length": spec.chunk_length})
    _write_pack_yaml(out, pack, spec.chunk_length)
    metrics = {"epochs": state["history"], "best_epoch": state["best_epoch"],
               "stopped_early": state["epoch"] < config.train.max_epochs,
               "frames": {"train": int(len(split.train)), "val": int(len(split.val)),
                          "virus": int((labels == 1).sum()), "others": int((labels == 0).sum())},
               "settings": asdict(config.train), "world_size": world_size, "chunk_length": spec.chunk_length,
               "held_out": frame_ids(RunFolder(features).work, spec.chunk_length, keys[split.val])}
    RunFolder.write_json(out / "metrics.json", metrics, indent=None)
    plot_learning_curve(state["history"], out / "learning_curve.png")


def _write_pack_yaml(out: Path, pack: ModelPack, chunk_length: int) -> None:
    from omegaconf import OmegaConf

    def local(value: str) -> str:  # paths inside DIR relative to it, so DIR can move
        path = Path(value)
        if path.exists() and path.resolve().is_relative_to(out.resolve()):
            return str(path.resolve().relative_to(out.resolve()))
        return value

    data = dict(name=f"trained_{chunk_length}", chunk_length=chunk_length, dnabert=local(pack.dnabert),
                esm=local(pack.esm), esm_layer=pack.esm_layer, classifier="classifier",
                dnabert_dim=pack.dnabert_dim, esm_dim=pack.esm_dim)
    RunFolder.write_text(out / "pack.yaml", OmegaConf.to_yaml(OmegaConf.create(data)))


def plot_learning_curve(history: list[dict], path: Path) -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("cross entropy")
    left.legend()
    for name in ("accuracy", "f1", "auroc"):
        right.plot(epochs, [h[name] if h[name] is not None else float("nan") for h in history], label=name)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1.02)
    right.legend()
    fig.tight_layout()
    save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="*", metavar="MANIFEST|key=value",
                        help="MANIFEST.tsv (path<TAB>label lines) and configuration overrides")
    parser.add_argument("-o", "--out", help="output folder (created; an interrupted run there is resumed)")
    parser.add_argument("-c", "--config", help="YAML file of configuration keys (overridden by key=value)")
    parser.epilog = help_text(TrainConfig)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    from vnp.cli import rank_command

    command = rank_command(args, TrainConfig, lambda inputs: None if len(inputs) == 1 else
                           "expected one manifest (vnp train MANIFEST.tsv -o DIR)", "-o DIR")
    if command == 2:
        return 2
    (manifest,), config = command
    return train(config, Path(manifest), Path(args.out))


def train(config: TrainConfig, manifest: Path, out: Path) -> int:
    """One rank's whole job: features (engine), head (DDP), outputs (rank 0)."""
    from vnp.run_state import RunState
    from vnp.engine import StopFlag

    folder = RunFolder(out)  # rank 0 holds DIR's lock from its checks to the end of this function

    stop = StopFlag.install()
    try:
        ctx = vdist.init(config.device, config.dist.backend, config.dist.timeout_s)
    except Exception as err:
        print(f"vnp: error: rank {vdist.detect_env().rank}: cannot start: {err}", file=sys.stderr)
        return 1
    try:
        if ctx.device.type == "cpu":
            vdist.set_cpu_threads(config.threads, ctx.env)
        if config.train.batch % ctx.world_size:
            raise InputError(f"train.batch={config.train.batch} cannot be split evenly over {ctx.world_size} ranks",
                             reported=not ctx.is_main)  # every rank finds it; rank 0 says it
        spec = shared(ctx, lambda: prepare(ctx, config, manifest, folder))
        features = out / FEATURES
        feature_folder = RunFolder(features)  # DIR/features: a run folder of its own (its parts are not in work)
        work = feature_folder.work
        if not (features / "features.npy").exists():
            plan = load_plan(work, spec.chunk_length)
            state = RunState(feature_folder, spec, plan)
            sink = FeatureSink(features / "parts", len(spec.remaining), config.progress) if ctx.is_main else None
            compute_features(ctx, state, config, stop, TrainingFrames(work, plan), sink)
            if stop.requested:
                vdist.print0(ctx, f"vnp: stopped by signal; progress is committed in {out}. "
                                  "Run the same command again to resume.")
                return 143
            if ctx.is_main:
                consolidate(features, plan.n_units(spec.unit_chunks), np.load(work / RECORD_LABELS),
                            plan.first_chunk)
        shared(ctx, lambda: check_classes(manifest, features, config.train))
        settings = {"train": asdict(config.train), "features": spec.run_record}
        trainer = train_head(ctx, config, out, settings, stop)
        state = trainer.state
        if stop.requested:
            vdist.print0(ctx, f"vnp: stopped by signal after epoch {state['epoch']}; the checkpoint is in {out}/work. "
                              "Run the same command again to resume.")
            return 143
        if ctx.is_main:
            write_outputs(out, spec, config, trainer, ctx.world_size)
            last = state["history"][-1] if state["history"] else {}
            print(f"vnp: trained {state['epoch']} epochs (best {state['best_epoch']}, validation accuracy "
                  f"{last.get('accuracy', float('nan')):.3f}); classifier and pack.yaml in {out}", file=sys.stderr)
        if ctx.world_size > 1:  # leave the group together: a rank tearing gloo down early aborted its peer
            dist.barrier()
        return 0
    except InputError as err:
        if not err.reported:
            print(f"vnp: error: {err}", file=sys.stderr)
        return 2
    except vdist.PeerFailure as err:
        if not err.reported:  # rank 0 reports its own failure
            print(f"vnp: error: rank {ctx.rank}: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        log_path = folder.train_log(ctx.rank)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(traceback.format_exc())
        except OSError:
            pass
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"vnp: error: rank {ctx.rank} failed: {type(err).__name__}: {first} (log: {log_path})", file=sys.stderr)
        return 1
    finally:
        vdist.cleanup()
        folder.close()


def check_classes(manifest: Path, features: Path, params: TrainParams) -> None:
    """Both classes must have kept frames, and enough frames for one batch and a validation set."""
    labels = np.load(features / "labels.npy")
    for name, value in LABELS.items():
        if not (labels == value).any():
            raise InputError(f"{manifest}: no frame of class '{name}' was kept (training keeps stop-free frames of "
                             "chunks without ambiguous bases, from GenBank only those within a CDS translation)")
    split = split_rows(len(labels), params.holdout, params.seed)
    if len(split.train) < params.batch or len(split.val) == 0:
        raise InputError(f"{manifest}: {len(labels)} kept frames are too few for train.batch={params.batch} "
                         f"and train.holdout={params.holdout}")


def main(argv: list[str] | None = None) -> int:
    from vnp.cli import module_main

    return module_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
