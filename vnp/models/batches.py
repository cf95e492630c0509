"""Token batches prepared on the CPU (a helper thread may do it) for one pass on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PreparedBatches:
    """Padded token batches of `rows` sequences, ready for one device pass (see `prepare`)."""

    rows: int
    batches: list[tuple[torch.Tensor, ...]]  # (row indices, tensors the forward needs...)


def pinned(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Page-locked copies when the device is a GPU, so that `.to(non_blocking=True)` is truly async."""
    if device.type != "cuda":
        return tensors
    return tuple(t.pin_memory() for t in tensors)
