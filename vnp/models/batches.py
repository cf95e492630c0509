"""Token batches: the one batching rule of both language models, batches prepared on the CPU (a
helper thread may do it) for one pass on the device, and the out-of-memory back-off of that pass."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

log = logging.getLogger("vnp")

# What one more batch costs in `token_batches`, as a share of the budget: fewer, fuller batches are
# worth a little padding (0.1 x the budget of padded tokens per batch saved, 0.15 x when the batch
# would be under half full). benchmarks/bench_batches.py chose them on a metagenome-like mix: fill
# >= 90%, < 5% of batches under half the budget and < 1% padding, both at 2,048 tokens x 128-chunk
# units (the CPU default) and at 65,536 tokens x the GPU default unit.
BATCH_PENALTY = 0.1
UNDER_HALF_PENALTY = 0.05


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
    """Index batches over length-sorted items, each with rows x longest (padding included) <= max_tokens.

    Longest first: the first batch is the most expensive, so memory errors surface at once. An item
    longer than max_tokens gets a batch of its own. `lengths` count every token the model sees
    (special tokens included), so the budget is the padded batch size.

    Among all ways to cut the sorted items into consecutive batches, the one with the fewest padded
    tokens plus BATCH_PENALTY x max_tokens per batch and UNDER_HALF_PENALTY x max_tokens more per
    batch under half the budget (a shortest path over the cut points, exact): few, full batches with
    little padding. Ties go to the earliest cut, so the same lengths always give the same batches.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    count = len(order)
    if count == 0:
        return []
    longest = np.asarray([max(1, lengths[i]) for i in order], dtype=np.int64)
    rows = np.maximum(1, max_tokens // longest)  # most rows a batch starting at each item may hold
    penalty, under_half = int(BATCH_PENALTY * max_tokens), int(UNDER_HALF_PENALTY * max_tokens)
    cost = np.full(count + 1, np.iinfo(np.int64).max, dtype=np.int64)  # best cost of the first b items
    cost[0] = 0
    start = np.zeros(count + 1, dtype=np.int64)  # where the last batch of that best cut starts
    for a in range(count):
        stop = min(count, a + int(rows[a]))
        ends = np.arange(a + 1, stop + 1)
        tokens = (ends - a) * longest[a]
        candidate = cost[a] + penalty + tokens + np.where(2 * tokens < max_tokens, under_half, 0)
        better = candidate < cost[a + 1:stop + 1]
        cost[a + 1:stop + 1][better] = candidate[better]
        start[a + 1:stop + 1][better] = a
    cuts, end = [], count
    while end > 0:
        cuts.append((int(start[end]), end))
        end = int(start[end])
    return [order[a:b] for a, b in reversed(cuts)]


def padded_tokens(lengths: Sequence[int], max_tokens: int) -> int:
    """Tokens (rows x longest, padding included) of the batches `token_batches` makes."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in token_batches(lengths, max_tokens))


# ----------------------------------------------------------------------------- out-of-memory back-off


def is_out_of_memory(err: BaseException) -> bool:
    """A device (torch.cuda.OutOfMemoryError) or host allocation failure of a forward."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "DefaultCPUAllocator" in text)


class FrameTooLarge(Exception):
    """One sequence alone does not fit in memory: `row` (its index in the embedder's input) and its
    `tokens`; the caller names the frame."""

    def __init__(self, model: str, row: int, tokens: int):
        super().__init__(f"{model}: one sequence of {tokens} tokens does not fit in memory even alone")
        self.model, self.row, self.tokens = model, row, tokens


@dataclass
class Budget:
    """The token budget of one model for a run, lowered for the rest of the run when a batch runs out
    of memory (the back-off of `run_batch`), with what that took, for run.json.

    `prepare` reads `tokens` on the helper thread; the main thread lowers it: a plain int, so the
    units prepared ahead keep the budget they were prepared with and are split only if they fail.
    """

    model: str  # "esm" or "dnabert", for the log and run.json
    tokens: int
    initial: int = 0
    retries: int = 0  # batches that ran out of memory and were split
    logged: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.initial = self.initial or self.tokens

    def lower(self, failed_tokens: int) -> None:
        """A batch of `failed_tokens` padded tokens ran out of memory: later batches get at most half."""
        self.retries += 1
        self.tokens = max(1, min(self.tokens, failed_tokens // 2))
        if not self.logged:  # the log says it once; run.json has the counts
            self.logged = True
            log.warning("%s: out of memory on a batch of %d tokens: split in two and retried; the budget "
                        "for the rest of the run is now %d tokens (later retries are counted in run.json)",
                        self.model, failed_tokens, self.tokens)

    def summary(self) -> dict:
        return {"tokens": self.initial, "final_tokens": self.tokens, "oom_retries": self.retries}


def run_batch(forward: Callable[[tuple[torch.Tensor, ...]], torch.Tensor], batch: tuple[torch.Tensor, ...],
              split: Callable[[tuple[torch.Tensor, ...]], tuple[tuple[torch.Tensor, ...], ...]],
              tokens: Callable[[tuple[torch.Tensor, ...]], int], budget: Budget | None,
              out: torch.Tensor) -> None:
    """`forward(batch)` -> (rows, dim) written into `out` at the batch's row indices (its first
    tensor, on the host). On an out-of-memory error the batch is split in two (`split`) and each
    half run the same way, recursively down to one sequence; the budget is lowered for the rest of
    the run. One sequence that still fails raises FrameTooLarge. Without a `budget`, errors pass."""
    rows = batch[0]
    failed = False
    try:
        values = forward(batch)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        if budget is None or not is_out_of_memory(err):
            raise
        failed = True  # retried below, once the error and the failed forward's tensors are gone
    if not failed:
        out.index_copy_(0, rows.to(out.device, non_blocking=True), values)
        return
    size = tokens(batch)
    if len(rows) == 1:
        raise FrameTooLarge(budget.model, int(rows[0]), size)
    budget.lower(size)
    if out.device.type == "cuda":
        torch.cuda.empty_cache()  # hand the failed batch's cached blocks back before retrying
    for half in split(batch):
        run_batch(forward, half, split, tokens, budget, out)


def batch_tokens(batch: tuple) -> int:
    """Padded tokens of a prepared batch of either language model (its second tensor: rows x longest)."""
    return int(batch[1].numel())
