"""Stage 2 of training: the original's MLP head trained with DistributedDataParallel (batch
statistics synchronised across ranks, per-frame dropout masks), checkpointed every epoch."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vnp.run import dist as vdist
from vnp.run.folder import FeatureFolder, TrainingFolder
from vnp.models import CLASSES
from vnp.support.atomic import open_atomic
from vnp.training.config import TrainConfig, TrainParams


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
        model = MLPClassifier(input_dim, params.hidden, len(CLASSES))
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
    with open_atomic(path, "wb", fsync=True) as fh:
        torch.save(data, fh)


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


def new_trainer(ctx, params: TrainParams, features: FeatureFolder, settings: dict) -> Trainer:
    feats = np.load(features.matrix, mmap_mode="r")
    labels = np.load(features.labels)
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


def train_head(ctx, config: TrainConfig, folder: TrainingFolder, settings: dict, stop) -> Trainer:
    """Every rank: DDP training from the cached features, a checkpoint after each epoch, until
    early stopping, the last epoch or a stop signal."""
    from tqdm import tqdm

    trainer = new_trainer(ctx, config.train, folder.features, settings)
    checkpoint = folder.checkpoint
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

