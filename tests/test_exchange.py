"""The exchange and rank 0's sink stage: real rows only (exact bytes on the wire), every unit's
keys and rows delivered in order, nothing read back before the window is full, one forward per
step whose scores do not depend on which units share the step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import free_port
from vnp.run import dist as vdist
from vnp.run.engine import MIN_BATCH_ROWS, RowSink, StopFlag, run_units
from vnp.support.config import EngineConfig
from vnp.run.exchange import HEADER, NO_UNIT, CollectiveFailed, Computed, Exchange, decode_keys, encode_header

SINGLE = vdist.Context(vdist.Env(0, 0, 1, 1, "single"), torch.device("cpu"), None)
DIM, ROWS = 8, 12  # ROWS: a unit of 2 chunks, 6 frames each


def test_header_round_trip_and_its_limits():
    rng = np.random.default_rng(0)
    for _ in range(50):
        first = int(rng.integers(0, 10**9))
        keys = first + np.flatnonzero(rng.random(ROWS) < 0.4).astype(np.int64)
        header = encode_header(7, keys, True, words=1)
        assert header.shape == (HEADER + 1,) and list(header[:3]) == [7, len(keys), 1]
        assert np.array_equal(decode_keys(header), keys)
    assert len(decode_keys(encode_header(NO_UNIT, np.zeros(0, np.int64), False, 1))) == 0
    with pytest.raises(RuntimeError, match="ascend"):
        encode_header(1, np.asarray([5, 3], np.int64), False, 1)
    with pytest.raises(RuntimeError, match="span at most 64"):
        encode_header(1, np.asarray([0, 64], np.int64), False, 1)
    with pytest.raises(RuntimeError, match=r"span at most 128 keys"):  # words of 64 bits each
        encode_header(1, np.asarray([0, 128], np.int64), False, 2)
    assert np.array_equal(decode_keys(encode_header(1, np.asarray([0, 127], np.int64), False, 2)), [0, 127])
    header = encode_header(7, np.asarray([4, 5, 9], np.int64), False, 1)
    header[1] = 2  # a count that disagrees with the mask
    with pytest.raises(RuntimeError, match=r"^unit 7: header says 2 frames, its key mask 3$"):
        decode_keys(header)
    many = np.arange(10_000, 10_600, 2, dtype=np.int64)  # 300 frames: counts beyond Python's small ints
    assert np.array_equal(decode_keys(encode_header(3, many, False, 10)), many)


@pytest.mark.parametrize("rows, words", [(0, 1), (1, 1), (64, 1), (65, 2), (6 * 128, 12)])
def test_the_key_mask_has_a_bit_a_row_in_64_bit_words(rows, words):
    assert Exchange(1, 0, torch.device("cpu"), rows, 8).words == words


def test_rows_computed_on_another_device_travel_on_the_exchanges():
    """A GPU rank exchanging over gloo sends every row it computed, moved to the exchange's device
    (here: rows on the CPU, the exchange on the meta device); a unit without rows sends none."""
    exchange = Exchange(1, 0, torch.device("meta"), ROWS, DIM)
    exchange.post(Computed(4, np.asarray([3, 5, 8], np.int64), torch.ones((3, DIM))), False)
    exchange.post(Computed(NO_UNIT, np.zeros(0, np.int64), torch.zeros((0, DIM))), False)
    for frames in (3, 0):
        delivery, _ = exchange.complete_oldest()
        assert delivery.rows.shape == (frames, DIM) and delivery.rows.device.type == "meta"


GLOO_ERROR = "[gloo] Connection closed by peer [127.0.0.1]:4242\nException raised from recv at gloo/pair.cc:42"


class FailedWork:
    """A collective's handle that is done and fails when waited for."""

    def is_completed(self):
        return True

    def wait(self):
        raise RuntimeError(GLOO_ERROR)


def test_a_failed_collective_is_named_by_the_first_line_of_its_error(monkeypatch):
    """A peer that died is reported as the backend's message, not where in C++ it was raised;
    whether posting the header fails or waiting for it."""
    def all_gather(outputs, header, group, async_op):
        raise RuntimeError(GLOO_ERROR)

    monkeypatch.setattr(dist, "new_group", lambda backend: None)
    computed = Computed(0, np.asarray([1], np.int64), torch.ones((1, DIM)))
    for gather in (all_gather, lambda *args, **kwargs: FailedWork()):
        monkeypatch.setattr(dist, "all_gather", gather)
        with pytest.raises(CollectiveFailed, match=r"^\[gloo\] Connection closed by peer \[127.0.0.1\]:4242$"):
            Exchange(2, 1, torch.device("cpu"), ROWS, DIM).post(computed, False)


class SparseWork:
    """Unit u keeps the frames whose bit is set in a pseudo-random mask (often none); its rows are
    filled with key + column / 100, so every row says where it belongs."""

    dim, rows = DIM, ROWS

    def __init__(self, n: int):
        self.n = n

    def units(self):
        return list(range(self.n))

    def costs(self, units):
        return np.asarray([len(self.keys(u)) for u in units], dtype=np.float64)

    def keys(self, unit: int) -> np.ndarray:
        rng = np.random.default_rng(unit)
        keep = rng.random(ROWS) < (0.0 if unit % 5 == 0 else 0.3)
        return unit * ROWS + np.flatnonzero(keep).astype(np.int64)

    def prepare(self, unit):
        return self.keys(unit)

    def compute(self, unit, keys):
        rows = torch.from_numpy(keys[:, None] + np.arange(DIM)[None] / 100).float()
        return Computed(unit, keys, rows)


class ScoringSink(RowSink):
    """Scores each row with a full-width linear map; keeps what it receives."""

    def __init__(self, keep_rows: bool = True):
        self.keep_rows = keep_rows
        self.batches: list[int] = []
        self.results: dict[int, tuple] = {}
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.randn(DIM, 2, generator=gen)

    def score(self, rows):
        self.batches.append(rows.shape[0])
        return rows @ self.weight

    def consume(self, results):
        units = [r.unit for r in results]
        assert units == sorted(units)
        for r in results:
            assert r.unit not in self.results
            self.results[r.unit] = (r.keys, r.embeddings, r.scores)

    def close(self):
        pass


def check_delivered(work: SparseWork, sink: ScoringSink) -> None:
    assert sorted(sink.results) == list(range(work.n))
    for unit, (keys, rows, scores) in sink.results.items():
        assert np.array_equal(keys, work.keys(unit))
        want = work.compute(unit, keys).embeddings
        if sink.keep_rows:
            assert np.array_equal(rows, want.numpy())
        else:
            assert rows is None
        assert scores.shape == (len(keys), 2)
        assert np.allclose(scores, (want @ sink.weight).numpy(), atol=1e-5)


@pytest.mark.parametrize("window", [1, 3])
def test_single_rank_delivers_rows_and_scores_and_reads_nothing_early(window):
    events: list[tuple[str, int]] = []
    work, sink = SparseWork(13), ScoringSink()
    stats = run_units(SINGLE, work, sink, StopFlag(), EngineConfig(window=window),
                      recorder=lambda event, step: events.append((event, step)))
    check_delivered(work, sink)
    assert_posted_ahead(events, window, 13)
    assert all(n >= MIN_BATCH_ROWS for n in sink.batches)  # one forward per step with rows
    assert stats.frames == sum(len(work.keys(u)) for u in range(13))
    assert stats.exchange_bytes == 0  # one rank sends nothing
    mine = stats.per_rank[0]
    assert mine["frames"] == stats.frames and mine["sink_forward_s"] > 0 and mine["sink_other_s"] > 0


def test_sink_without_rows_gets_scores_only():
    work, sink = SparseWork(7), ScoringSink(keep_rows=False)
    run_units(SINGLE, work, sink, StopFlag(), EngineConfig(window=2))
    check_delivered(work, sink)


def assert_posted_ahead(events: list[tuple[str, int]], window: int, steps: int) -> None:
    """Nothing of step k is waited for (or read back) before step k + window - 1 was posted."""
    at = {event: i for i, event in enumerate(events)}
    for k in range(steps):
        posted = at[("post", min(k + window - 1, steps - 1))]
        assert at[("wait", k)] > posted, (k, events)
        assert at[("post", k)] < at.get(("header", k), len(events))  # a header is a host read of a
        # gloo message already here (polled, never waited for): it may come before that post


# ----------------------------------------------------------------------------- several ranks (gloo)


def _rank(rank: int, world: int, port: int, units: int, window: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = vdist.Context(vdist.Env(rank, rank, world, world, "torchrun"), torch.device("cpu"), "gloo")
    events: list = []
    work = SparseWork(units)
    sink = ScoringSink() if rank == 0 else None
    stats = run_units(ctx, work, sink, StopFlag(), EngineConfig(window=window),
                      recorder=lambda event, step: events.append((event, step)))
    if rank == 0:
        check_delivered(work, sink)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"events": events, "per_rank": stats.per_rank,
                                                         "steps": stats.steps}))
    dist.destroy_process_group()


@pytest.mark.slow  # three processes (mp.spawn)
@pytest.mark.parametrize("world", [3])
def test_ranks_send_only_real_rows(tmp_path, world):
    units, window = 23, 3
    mp.spawn(_rank, args=(world, free_port(), units, window, str(tmp_path)), nprocs=world)
    work = SparseWork(units)
    header = 8 * (HEADER + 1)
    for rank in range(world):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert_posted_ahead([tuple(e) for e in record["events"]], window, record["steps"])
        mine = record["per_rank"][rank]
        rows = 0 if rank == 0 else mine["frames"]
        assert mine["exchange_bytes"] == record["steps"] * header + rows * DIM * 4  # not a byte of padding
    assert sum(r["frames"] for r in record["per_rank"]) == sum(len(work.keys(u)) for u in range(units))


# ----------------------------------------------------------------------------- one forward per step


def test_the_classifier_scores_a_row_the_same_in_any_batch_of_at_least_min_rows():
    """Which units share a step depends on the world size; the tables stay byte-identical only
    because a row's score does not depend on the other rows of its forward (threads=1, full size)."""
    from vnp.models.classifier import MLPClassifier, score

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = MLPClassifier()
        with torch.no_grad():
            model.bn1.running_mean.uniform_(-1, 1)
            model.bn1.running_var.uniform_(0.5, 2)
        x = torch.randn(300, 3328)
        whole = score(model, x)
        for start, n in [(0, MIN_BATCH_ROWS), (3, MIN_BATCH_ROWS + 1), (17, 9), (40, 64), (1, 130), (100, 200)]:
            assert torch.equal(score(model, x[start:start + n]), whole[start:start + n]), (start, n)
    finally:
        torch.set_num_threads(before)
