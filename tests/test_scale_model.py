"""The scale model of benchmarks/bench_scale.py: its pure projection on hand-made workloads."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_scale import Workload, busiest_rank_share, project, saturation, serial_budget


def workload(**changes) -> Workload:
    # 1,000,000 chunks at 1 ms of device time each; rank 0 takes 10 us a chunk to sink, 20 us of link
    base = dict(chunks=1_000_000, gpu_s=1e-3, sink_s=10e-6, bytes=20_000.0, link_bytes_per_s=1e9,
                serial_s=0.0, prepass_s=0.0, startup_s=0.0)
    return Workload(**{**base, **changes})


def test_rank_0_saturates_where_its_sink_or_ingest_equals_a_gpus_share():
    sat = saturation(workload())
    assert sat == {"sink": 100.0, "ingest": 50.0}  # 1 ms / 10 us; 1 ms x 1 GB/s / 20 kB
    assert project(workload(), 25).limit == "GPUs"
    assert project(workload(), 64).limit == "rank 0's ingest"
    assert project(workload(bytes=1.0), 128).limit == "rank 0's sink"
    assert project(workload(), 50).total_s == 20.0  # 1,000 s of compute over 50 = 20 s = the ingest


def test_efficiency_falls_with_gpus_under_amdahl():
    work = workload(serial_s=10.0, startup_s=5.0, bytes=1.0, sink_s=0.0)
    efficiencies = [project(work, n).efficiency for n in (1, 8, 64, 256)]
    assert efficiencies[0] == 1.0
    assert all(a > b for a, b in zip(efficiencies, efficiencies[1:]))
    # 1,015 s on one GPU; 15 + 1,000 / 64 s on 64
    assert abs(efficiencies[2] - 1015 / (64 * (15 + 1000 / 64))) < 1e-12


def test_uneven_unit_counts_leave_ranks_idle():
    assert busiest_rank_share(np.ones(8), 4) == 0.25
    assert busiest_rank_share(np.ones(9), 4) == 3 / 9  # one rank takes a third unit
    # largest first, snaked: 4,3 | 2,1 on 2 ranks -> rank 0: 4+1, rank 1: 3+2
    assert busiest_rank_share(np.array([1.0, 2.0, 3.0, 4.0]), 2) == 0.5


def test_serial_budget_is_the_most_serial_time_that_meets_the_goal():
    work = workload(bytes=1.0, sink_s=0.0)
    budget = serial_budget(work, 64, 0.9)
    # E = (S + 1000) / (64 S + 1000) = 0.9  ->  S = 100 / 56.6
    exact = (1000 - 0.9 * 1000) / (0.9 * 64 - 1)
    assert abs(budget - exact) < 1e-6
