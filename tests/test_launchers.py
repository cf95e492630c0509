"""Which launcher started a rank, and what a rank says when a launcher starts several on a CPU."""

from __future__ import annotations

import pytest

from vnp.run import dist as vdist


@pytest.mark.parametrize("environ, launcher", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "torchrun"),
    ({"RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "no"}, "accelerate"),
    ({"ACCELERATE_MIXED_PRECISION": "no"}, "accelerate"),  # accelerate launch with one process
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2"}, "slurm"),
    ({}, "single"),
])
def test_launcher_is_named_for_run_json(environ, launcher):
    assert vdist.detect_env(environ).launcher == launcher


def test_several_cpu_ranks_on_a_node_are_said_once_by_rank_0(monkeypatch, capsys):
    monkeypatch.setattr(vdist.torch.cuda, "is_available", lambda: False)
    for rank in (0, 1):
        env = vdist.Env(rank, rank, 1, 8, "accelerate")  # world 1: no process group is started
        monkeypatch.setattr(vdist, "detect_env", lambda env=env: env)
        vdist.init(device="auto")
    err = capsys.readouterr().err
    assert err.count("warning: no GPU found: 8 ranks") == 1, err
    vdist.init(device="cpu")  # asked for on purpose: nothing to say
    assert capsys.readouterr().err == ""
