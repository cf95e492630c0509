"""The unit engine's parts: dealing order, the loop's stop rule and delivery, background commits,
compaction of progress parts, frame IDs in any order, progress samples."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vnp.run import dist as vdist
from vnp.support.config import EngineConfig
from vnp.run import engine
from vnp.run.engine import Prefetcher, RowSink, StopFlag, run_units, snake
from vnp.run.exchange import NO_UNIT, Computed, Delivery, UnitRows
from vnp.run.plan import IDS, iter_ids, load_plan, pack_inputs
from vnp.run.steps import IdLookup, Progress
from vnp.run import store as store_module
from vnp.run.store import COMPACT_ABOVE, PART_GLOB, PartWriter, ScoreStore, part_number
from vnp.seq.frames import FRAME_NAMES

SINGLE = vdist.Context(vdist.Env(0, 0, 1, 1, "single"), torch.device("cpu"), None)


class CountingWork:
    """Unit u has u % 3 frames with embedding rows filled with u; asks to stop at `stop_at`."""

    dim, rows = 4, 2

    def __init__(self, n: int, stop: StopFlag | None = None, stop_at: int = -1):
        self.n, self.stop, self.stop_at = n, stop, stop_at
        self.prepared: list[int] = []

    def units(self):
        return list(range(self.n))

    def costs(self, units):
        return np.asarray([u % 3 for u in units], dtype=np.float64)

    def prepare(self, unit):
        self.prepared.append(unit)
        return unit % 3

    def compute(self, unit, frames):
        if unit == self.stop_at:
            self.stop.requested = True
        keys = np.arange(frames, dtype=np.int64) + 6 * unit
        return Computed(unit, keys, torch.full((frames, self.dim), float(unit)))


class ListSink(RowSink):
    def __init__(self):
        self.calls: list[list[int]] = []
        self.rows: dict[int, np.ndarray] = {}
        self.closed = False

    def consume(self, results):
        self.calls.append([r.unit for r in results])
        for r in results:
            self.rows[r.unit] = r.embeddings

    def close(self):
        self.closed = True


@pytest.mark.parametrize("prefetch, window", [(0, 1), (1, 4), (2, 3)])
def test_every_unit_delivered_once_in_order(prefetch, window):
    work, sink = CountingWork(11), ListSink()
    stats = run_units(SINGLE, work, sink, StopFlag(), EngineConfig(prefetch=prefetch, window=window))
    assert [u for call in sink.calls for u in call] == list(range(11))
    assert work.prepared == list(range(11))  # each unit prepared once
    assert all(np.array_equal(sink.rows[u], np.full((u % 3, 4), float(u), np.float32)) for u in range(11))
    assert stats.steps == stats.units == 11 and not stats.stopped and stats.per_rank[0]["rank"] == 0
    assert sink.closed


@pytest.mark.parametrize("window", [1, 4])
def test_stop_leaves_after_the_step_that_completes_it(window, caplog):
    """A stop asked for in step s is seen when step s completes, right after step s + window - 1
    was posted (the same step on every rank); everything posted is still delivered, and the log
    names the last step."""
    stop = StopFlag()
    work, sink = CountingWork(20, stop, stop_at=5), ListSink()
    with caplog.at_level("INFO", logger="vnp"):
        stats = run_units(SINGLE, work, sink, stop, EngineConfig(window=window))
    assert stats.stopped and stop.requested
    assert stats.steps == 5 + window
    assert f"stop requested: left after step {5 + window - 1}" in caplog.messages
    assert [u for call in sink.calls for u in call] == list(range(5 + window))


def test_a_unit_that_never_reaches_the_sink_fails_the_run():
    """A unit lost on the way (here: computed but posted as padding) is never silently missing
    from the tables: the run fails naming it, after the sink was closed on what did arrive."""

    class LosingWork(CountingWork):
        def compute(self, unit, frames):
            if unit == 4:
                return Computed(NO_UNIT, np.zeros(0, np.int64), torch.zeros((0, self.dim)))
            return super().compute(unit, frames)

    sink = ListSink()
    with pytest.raises(RuntimeError, match=r"work units missing after the last step: \[4\]\.\.\. \(1 in all\)"):
        run_units(SINGLE, LosingWork(9), sink, StopFlag(), EngineConfig(window=2))
    assert sorted(sink.rows) == [0, 1, 2, 3, 5, 6, 7, 8] and sink.closed


class PairedExchange:
    """Stands in for the exchange of two ranks: each step delivers two units, in rank order, the
    larger unit first (as the snake deals every other step), each unit's rows where its header says."""

    def __init__(self, world_size, rank, device, rows, dim, stream=None, recorder=None):
        self.posted: list[Computed] = []
        self.decode_s, self.sent_bytes, self.frames = 0.0, 0, 0

    def post(self, computed, stop):
        self.posted.append(computed)

    def __len__(self):
        return (len(self.posted) + 1) // 2

    def complete_oldest(self):
        step, self.posted = self.posted[:2][::-1], self.posted[2:]
        starts = np.cumsum([0] + [len(c.keys) for c in step])
        units = [UnitRows(c.unit, c.keys, int(start)) for c, start in zip(step, starts)]
        return Delivery(units, torch.cat([c.embeddings for c in step])), False


def test_several_units_of_a_step_reach_the_sink_in_ascending_order(monkeypatch):
    monkeypatch.setattr(engine, "Exchange", PairedExchange)
    work, sink = CountingWork(9), ListSink()
    run_units(SINGLE, work, sink, StopFlag(), EngineConfig(window=2))
    assert sink.calls == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert all(np.array_equal(sink.rows[u], np.full((u % 3, 4), float(u), np.float32)) for u in range(9))


def test_snake_deals_largest_units_evenly():
    order = list(range(8))  # cost descending
    assert snake(order, 2) == [0, 1, 3, 2, 4, 5, 7, 6]
    dealt = snake(list(range(16)), 4)
    per_rank = [sum(dealt[r::4]) for r in range(4)]  # rank r gets positions r, r + 4, ...
    assert max(per_rank) - min(per_rank) == 0


def test_part_writer_raises_a_failed_write():
    writer = PartWriter()
    done = []
    writer.submit(done.append, 1)
    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.close()
    assert done == [1]


def test_a_failed_write_is_raised_by_the_next_submit_though_others_were_submitted_meanwhile():
    """A write that fails while later ones are queued is not lost: the first submit after it ends
    raises it."""
    writer = PartWriter()
    gate, ran = threading.Event(), threading.Event()
    writer.submit(lambda: gate.wait() and 1 / 0)  # fails once let through
    writer.submit(ran.set)  # submitted while the first write still waits
    gate.set()
    ran.wait()  # one thread, in order: the first write has failed by now
    with pytest.raises(ZeroDivisionError):
        writer.submit(print)
    writer.close()


def fill_store(folder: Path, parts: int) -> ScoreStore:
    store = ScoreStore(folder)
    for unit in range(parts):
        store.add(unit, np.asarray([6 * unit, 6 * unit + 3], np.int64), np.full((2, 2), unit, np.float32))
        store.commit()
    return store


def test_resume_compacts_parts_and_survives_a_crash_in_between(tmp_path):
    parts = tmp_path / "parts"
    fill_store(parts, COMPACT_ABOVE + 4)
    store = ScoreStore(parts)
    assert store.load_committed() == set(range(COMPACT_ABOVE + 4))
    before = store.sorted_scores()
    old = sorted(parts.glob(PART_GLOB))
    saved = {path: path.read_bytes() for path in old}
    assert store.compact() == len(old)
    assert len(list(parts.glob(PART_GLOB))) == 1
    for path, data in list(saved.items())[:5]:  # a crash after the compacted part, before every delete
        path.write_bytes(data)
    again = ScoreStore(parts)
    assert again.load_committed() == set(range(COMPACT_ABOVE + 4))
    assert again.rejected == []  # superseded parts are dropped, not counted as corrupt
    assert len(list(parts.glob(PART_GLOB))) == 1
    for got, want in zip(again.sorted_scores(), before):
        assert np.array_equal(got, want)
    small = ScoreStore(tmp_path / "few")
    fill_store(tmp_path / "few", 3)
    small.load_committed()
    assert small.compact() == 0


def test_parts_are_numbered_in_turn_fsynced_and_read_back_in_key_order(tmp_path, monkeypatch):
    synced = []
    original = store_module.atomic.write_bytes
    monkeypatch.setattr(store_module.atomic, "write_bytes",
                        lambda path, data, fsync=False: synced.append(fsync) or original(path, data, fsync=fsync))
    store = ScoreStore(tmp_path)
    assert store.sorted_scores()[0].shape == (0,) and store.sorted_scores()[1].shape == (0, 2)
    assert store.commit() is None  # nothing pending
    for unit in (2, 0, 1):  # a resumed run: units arrive in any order
        store.add(unit, np.asarray([6 * unit, 6 * unit + 4], np.int64), np.full((2, 2), unit, np.float32))
        assert store.pending_units == 1
        assert store.commit() == [2, 0, 1].index(unit)
    assert synced == [True, True, True]
    assert sorted(part_number(path) for path in tmp_path.glob(PART_GLOB)) == [0, 1, 2]
    again = ScoreStore(tmp_path)
    assert again.load_committed() == {0, 1, 2} and again.next_part == 3
    keys, scores = again.sorted_scores()
    assert keys.tolist() == [0, 4, 6, 10, 12, 16]
    assert scores[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    two = ScoreStore(tmp_path / "two")
    for unit in (1, 0):
        two.add(unit, np.asarray([unit], np.int64), np.full((1, 2), unit, np.float32))
    two.commit()
    assert two.sorted_scores()[0].tolist() == [0, 1]
    three = ScoreStore(tmp_path / "three")  # the first unit smallest, the later ones out of order
    for unit in (0, 2, 1):
        three.add(unit, np.asarray([6 * unit, 6 * unit + 4], np.int64), np.full((2, 2), unit, np.float32))
    three.commit()
    assert three.sorted_scores()[0].tolist() == [0, 4, 6, 10, 12, 16]


def test_a_resumed_store_numbers_its_next_part_above_every_committed_one(tmp_path):
    """Whatever the highest part number found (here odd), the next part is numbered above it: the
    newest part, a compacted one included, sorts first when parts are read back."""
    fill_store(tmp_path, 4)  # parts 0 to 3
    store = ScoreStore(tmp_path)
    store.load_committed()
    store.add(4, np.asarray([24], np.int64), np.zeros((1, 2), np.float32))
    assert store.commit() == 4


def test_a_part_whose_bytes_match_its_name_but_are_no_npz_is_rejected(tmp_path):
    data = b"not an npz file"
    bad = tmp_path / f"part-000000-{hashlib.sha256(data).hexdigest()[:32]}.npz"
    bad.write_bytes(data)
    store = ScoreStore(tmp_path)
    assert store.load_committed() == set() and store.rejected == [bad] and not bad.exists()


def test_background_commit_is_whole_after_close(tmp_path):
    store = ScoreStore(tmp_path)
    writer = PartWriter()
    store.add(0, np.asarray([1], np.int64), np.zeros((1, 2), np.float32))
    assert store.commit(writer) == 0
    writer.close()
    assert ScoreStore(tmp_path).load_committed() == {0}


def test_frame_ids_in_any_order(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\n" + "A" * 1200 + "\n>b\nACGT\n>c\n" + "C" * 600 + "\n")
    work = tmp_path / "work"
    pack_inputs([fasta], work)
    plan = load_plan(work, 500)
    lookup = IdLookup(plan, work / IDS)
    keys = np.asarray([6 * 5 + 5, 0, 6 * 2 + 3, 6 * 3 + 1], np.int64)  # chunks: c2, a1, a3, b1
    ids = list(iter_ids(work))
    assert ids == ["a", "b", "c"]
    assert lookup.frame_ids(keys) == ["c_chunk_2R3", "a_chunk_1F1", "a_chunk_3R1", "b_chunk_1F2"]
    assert FRAME_NAMES[5] == "R3"


def test_progress_samples_stay_bounded():
    progress = Progress()
    progress.MAX = 10
    for i in range(100):
        progress.sample(i, 2 * i, force=True)
    assert len(progress.samples) <= 10
    assert progress.samples[0]["chunks"] == 0 and progress.samples[-1]["chunks"] <= 99
    assert json.dumps(progress.samples)


def test_a_failing_sink_or_unit_is_raised_not_swallowed():
    class FailingSink(ListSink):
        def consume(self, results):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_units(SINGLE, CountingWork(9), FailingSink(), StopFlag(), EngineConfig())

    class FailingWork(CountingWork):
        def compute(self, unit, frames):
            if unit == 6:
                raise RuntimeError("unit 6 broke")
            return super().compute(unit, frames)

    sink = ListSink()
    with pytest.raises(RuntimeError, match="unit 6 broke"):
        run_units(SINGLE, FailingWork(9), sink, StopFlag(), EngineConfig(window=2))
    assert [u for call in sink.calls for u in call] == list(range(5))  # what completed was delivered
    assert sink.closed  # and committed


def test_a_sink_failing_on_the_last_step_is_raised_at_the_end():
    class LateFailingSink(ListSink):
        def consume(self, results):
            if 8 in [r.unit for r in results]:
                raise OSError("disk full at the end")
            super().consume(results)

    sink = LateFailingSink()
    with pytest.raises(OSError, match="disk full at the end"):
        run_units(SINGLE, CountingWork(9), sink, StopFlag(), EngineConfig(window=3))
    assert sorted(sink.rows) == list(range(8))
    assert sink.closed  # what arrived before the failure is committed, as after any failure


def test_the_loops_times_are_parts_of_its_whole_time():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = run_units(SINGLE, CountingWork(11), ListSink(), StopFlag(), EngineConfig(window=2, prefetch=1))
    parts = ("busy_s", "wait_s", "prepare_wait_s", "sink_wait_s", "sink_forward_s", "sink_other_s")
    assert all(0 <= getattr(stats, name) <= stats.loop_s for name in parts), {n: getattr(stats, n) for n in parts}
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert round(before, 1) <= stats.per_rank[0]["peak_rss_mib"] <= round(after, 1)


def test_per_rank_seconds_are_reported_to_the_millisecond():
    """run.json's per-rank times: milliseconds; rank 0's sink stage, which is short a step, microseconds."""
    names = ("busy_s", "wait_s", "prepare_wait_s", "cost_s", "sink_wait_s", "loop_s")
    stats = engine.EngineStats(**dict.fromkeys(names + ("sink_forward_s", "sink_other_s"), 1.23456789))
    mine = stats.mine(0)
    assert [mine[name] for name in names] == [1.235] * len(names)
    assert mine["sink_forward_s"] == mine["sink_other_s"] == 1.234568
    assert "sink_forward_s" not in stats.mine(1)


def test_a_rank_whose_launcher_is_gone_stops():
    flag = StopFlag(parent=os.getppid() + 1_000_000)  # not this process's parent
    assert flag.requested and "launcher" in flag.reason
    watched = StopFlag(parent=os.getppid())
    assert not watched.requested and watched.reason == "signal"
    watched.requested = True
    assert watched.requested


def test_the_parent_is_watched_under_a_torchrun_agent_unless_told(monkeypatch):
    """By default a rank watches its parent only when a torchrun agent started it; `watch_parent`
    says so either way."""
    import signal

    monkeypatch.setattr(signal, "signal", lambda *args: None)  # no handler installed in the test process
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert StopFlag.install().parent is None
    assert StopFlag.install(watch_parent=True).parent == os.getppid()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert StopFlag.install().parent == os.getppid()
    assert StopFlag.install(watch_parent=False).parent is None


def test_a_rank_without_a_sink_reports_no_sink_time():
    """Rank 0's stats always carry the sink's seconds: a run that hands nothing to a sink spent none."""
    stats = run_units(SINGLE, CountingWork(5), None, StopFlag(), EngineConfig(window=2))
    assert stats.per_rank[0]["sink_forward_s"] == stats.per_rank[0]["sink_other_s"] == 0


def test_helper_threads_compute_with_the_ranks_thread_count():
    """OpenMP's thread count is per thread; the sink classifies on a helper thread, and another
    count there would change the scores' last digits between launchers."""
    seen = []

    class ThreadsSink(ListSink):
        def consume(self, results):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_units(SINGLE, CountingWork(3), ThreadsSink(), StopFlag(), EngineConfig())
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_predict_costs_are_the_translated_frames_tokens(tmp_path):
    """FrameWork.costs scans the units' letters for stops: the same numbers, unit for unit, as
    translating every unit's frames (the estimate before, still training's)."""
    from types import SimpleNamespace

    from tests.test_sequence import frame_token_records
    from vnp.run.steps import FrameWork

    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in frame_token_records(random.Random(3))))
    pack_inputs([fasta], tmp_path / "work")
    models = SimpleNamespace(budgets={"dnabert": 1000, "esm": 1000})
    state = SimpleNamespace(plan=load_plan(tmp_path / "work", 300), folder=SimpleNamespace(
        sequences=tmp_path / "work" / "sequences.bin"), spec=SimpleNamespace(unit_chunks=7, pack=SimpleNamespace(
            embedding_dim=8)))
    units = list(range(state.plan.n_units(7)))[::-1]
    translated = FrameWork(state, None, models, select_frames=lambda chunk, frames: frames).costs(units)
    assert FrameWork(state, None, models).costs(units).tolist() == translated.tolist()
    assert translated.sum() > 0


def test_the_prefetcher_prepares_depth_units_ahead_and_skips_empty_slots():
    prepared = []
    fetcher = Prefetcher(lambda unit: prepared.append(unit) or unit * 10, [5, 6, None, 7, 8], depth=2)
    try:
        assert fetcher.get(0) == 50
        assert sorted(fetcher.futures) == [1]  # slot 2 holds no unit; slot 3 is 3 ahead
        assert fetcher.get(1) == 60 and sorted(fetcher.futures) == [3]
        assert fetcher.get(2) is None and fetcher.get(3) == 70 and fetcher.get(4) == 80
    finally:
        fetcher.close()
    assert prepared == [5, 6, 7, 8]
