"""Ranks notice that their launcher is gone (issue 17, item 16): killing only the torchrun agent
(as `kill -9` of its process group leader does) stops the ranks as SIGTERM would, resumable."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import BIN, ROOT, child_env, rank_pid, tables, wait_for_parts, write_long_input

ARGS = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=2", "dist.timeout_s=60",
        "engine.commit_every_steps=2"]


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, whose parent is gone and not reaping, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_ranks_stop_when_the_torchrun_agent_is_killed(tmp_path):
    fasta = write_long_input(tmp_path / "long.fa", n=300)
    out = tmp_path / "out"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "vnp.predict", str(fasta),
               "-o", str(out), *ARGS]
    agent = subprocess.Popen(command, env=child_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    wait_for_parts(out, 1, agent)
    ranks = [rank_pid(out, 0), rank_pid(out, 1)]
    agent.send_signal(signal.SIGKILL)  # the agent alone: its ranks keep running unless they notice
    agent.wait(timeout=30)
    deadline = time.time() + 120
    while any(map(running, ranks)):
        assert time.time() < deadline, "ranks still running after their launcher was killed"
        time.sleep(0.2)
    log = "".join(path.read_text() for path in (out / "logs").glob("rank*.log"))
    assert "the launcher" in log and "is gone" in log
    assert not (out / "run.json").exists()  # stopped, not finished
    rerun = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "vnp.predict",
                            str(fasta), "-o", str(out), *ARGS], env=child_env(), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert tables(out)  # resumed to the end
