"""The settings of `vnp train`: the head's hyper-parameters (`train.*`) on top of the model-run keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from vnp.support.config import ModelRunConfig, _help

AMBIGUOUS = frozenset("NRYMKSWHBVD")  # the original's training filter (U is not in it)


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

