"""Token batches: the one batching rule of both language models, and batches prepared on the CPU
(a helper thread may do it) for one pass on the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Index batches over length-sorted items so that rows x longest (padding included) <= max_tokens.

    Longest first: the first batch is the most expensive, so memory errors surface at once. An item
    longer than max_tokens gets a batch of its own. `lengths` count every token the model sees
    (special tokens included), so the budget is the padded batch size.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, start = [], 0
    while start < len(order):
        size = max(1, max_tokens // max(1, lengths[order[start]]))  # the first is the longest
        batches.append(order[start:start + size])
        start += size
    return batches


def padded_tokens(lengths: Sequence[int], max_tokens: int) -> int:
    """Tokens (rows x longest, padding included) of the batches `token_batches` makes."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in token_batches(lengths, max_tokens))
