"""What training leaves in DIR (rank 0): the classifier, pack.yaml, metrics.json and the learning curve."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from vnp.models.pack import ModelPack
from vnp.results.plots import pyplot, save_png
from vnp.run.folder import FeatureFolder, TrainingFolder
from vnp.run.plan import load_plan
from vnp.training.config import TrainConfig
from vnp.training.head import Trainer
from vnp.models import CLASSES


def frame_ids(features: FeatureFolder, chunk_length: int, keys: np.ndarray) -> list[str]:
    """The frame IDs of these frame keys of DIR/features (packed in its work folder)."""
    from vnp.run.steps import IdLookup

    return IdLookup(load_plan(features.work, chunk_length), features.ids).frame_ids(keys)


def write_outputs(folder: TrainingFolder, spec, config: TrainConfig, trainer: Trainer, world_size: int) -> None:
    from vnp.models.classifier import MLPClassifier, save_classifier

    pack = spec.pack
    features = folder.features
    keys = np.load(features.keys)
    labels = np.load(features.labels)
    dim = pack.embedding_dim
    model = MLPClassifier(dim, config.train.hidden, len(CLASSES))
    state, split = trainer.state, trainer.split
    model.load_state_dict(state["best"])
    save_classifier(model.eval(), folder.classifier,
                    provenance={"trained_by": "vnp train", "best_epoch": state["best_epoch"],
                                "chunk_length": spec.chunk_length})
    _write_pack_yaml(folder, pack, spec.chunk_length)
    metrics = {"epochs": state["history"], "best_epoch": state["best_epoch"],
               "stopped_early": state["epoch"] < config.train.max_epochs,
               "frames": {"train": int(len(split.train)), "val": int(len(split.val)),
                          "virus": int((labels == 1).sum()), "others": int((labels == 0).sum())},
               "settings": asdict(config.train), "world_size": world_size, "chunk_length": spec.chunk_length,
               "held_out": frame_ids(features, spec.chunk_length, keys[split.val])}
    folder.write_json(folder.metrics_json, metrics, indent=None)
    plot_learning_curve(state["history"], folder.learning_curve)


def _write_pack_yaml(folder: TrainingFolder, pack: ModelPack, chunk_length: int) -> None:
    from omegaconf import OmegaConf

    out = folder.root

    def local(value: str) -> str:  # paths inside DIR relative to it, so DIR can move
        path = Path(value)
        if path.exists() and path.resolve().is_relative_to(out.resolve()):
            return str(path.resolve().relative_to(out.resolve()))
        return value

    data = dict(name=f"trained_{chunk_length}", chunk_length=chunk_length, dnabert=local(pack.dnabert),
                esm=local(pack.esm), esm_layer=pack.esm_layer, classifier="classifier",
                dnabert_dim=pack.dnabert_dim, esm_dim=pack.esm_dim)
    folder.write_text(folder.pack_yaml, OmegaConf.to_yaml(OmegaConf.create(data)))


def plot_learning_curve(history: list[dict], path: Path) -> None:
    save_png(learning_curve_figure(history), path)


def learning_curve_figure(history: list[dict]):
    """Losses (left) and validation metrics (right) by epoch; lines that coincide (accuracy, F1 and
    AUROC of a separable task) stay told apart by their marker and line style."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style, marker in (("train_loss", "train loss", "-", "o"),
                                      ("val_loss", "validation loss", "--", "s")):
        left.plot(epochs, [h[key] for h in history], label=label, linestyle=style, marker=marker, markersize=4)
    left.set_xlabel("epoch")
    left.set_ylabel("cross entropy")
    left.legend(frameon=False)
    for name, label, style, marker, size in (("accuracy", "accuracy", "-", "o", 7), ("f1", "F1 (virus)", "--", "s", 5),
                                             ("auroc", "AUROC", ":", "^", 4)):
        right.plot(epochs, [h[name] if h[name] is not None else float("nan") for h in history], label=label,
                   linestyle=style, marker=marker, markersize=size, alpha=0.8,
                   markerfacecolor="none" if name != "auroc" else None)  # hollow: the smaller shows inside
    right.set_xlabel("epoch")
    right.set_ylabel("validation score")
    right.set_ylim(0, 1.02)
    right.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return fig
