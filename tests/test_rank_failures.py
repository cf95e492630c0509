"""How a multi-rank run ends when something goes wrong while preparing or running: an unexpected error
names a log that exists, SIGTERM stops every rank at once, a killed rank is named by rank 0, and the
rendezvous respects the timeout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, child_env, error_lines, rank_pid, slurm_job_id, write_long_input

pytestmark = pytest.mark.usefixtures("private_digest_cache")


FAILING_PACKING = """
import sys
import vnp.run.state as run_state

def failing(paths, work):
    raise OSError(28, "No space left on device")

run_state.pack_inputs = failing
from vnp.predict import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_unexpected_error_while_preparing_names_a_log_that_exists(tiny_pack, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_PACKING)
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGTACGT\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(fasta), "-o", str(out), f"pack={tiny_pack}",
                           "progress=false"], env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr
    log = re.search(r"\(log: (.*)\)$", proc.stderr.strip()).group(1)
    assert "No space left on device" in proc.stderr and "Traceback" in Path(log).read_text()


SLOW_PACKING = """
import sys, time
import vnp.run.plan as plan

original = plan._pack

def slow_pack(*args):
    *rest, read = args
    def slow_pieces(path):
        for piece in read(path):
            time.sleep(0.5)  # a long packing pass
            yield piece
    return original(*rest, slow_pieces)

plan._pack = slow_pack  # (pack_inputs binds its reader as a default: patching plan.iter_pieces is too late)
from vnp.predict import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [0, 1])
def test_sigterm_while_preparing_stops_every_rank_at_once(tiny_pack, tmp_path, signalled):
    """Processes started by hand (SLURM variables): SIGTERM to one rank while rank 0 packs the inputs."""

    script = tmp_path / "slow.py"
    script.write_text(SLOW_PACKING)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\nACGTACGT\n" for i in range(200)))
    out = tmp_path / "out"
    job_id = slurm_job_id()
    procs = []
    for rank in range(2):
        env = {**child_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2",
               "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": job_id}
        procs.append(subprocess.Popen([sys.executable, str(script), str(fasta), "-o", str(out), f"pack={tiny_pack}",
                                       "progress=false", "threads=1", "dist.timeout_s=120"], env=env, cwd=ROOT,
                                      stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 120
    while not list((out / "work").glob("sequences.bin.vnp-*.tmp")):
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.05)
    procs[signalled].send_signal(signal.SIGTERM)
    stopped = time.time()
    codes = [p.wait(timeout=60) for p in procs]
    assert time.time() - stopped < 30  # not the 100 s the packing would take, nor dist.timeout_s
    stderr = [p.stderr.read() for p in procs]
    assert codes == [143, 143], stderr
    assert stderr[0].strip() == (f"vnp: stopped by signal while preparing the run in {out}; nothing was lost. "
                                 "Run the same command again to start it.") and not stderr[1].strip()
    assert not list(out.rglob("*.tmp"))


def hand_started_ranks(args: list[str], ranks: int = 2, **extra_env) -> list[subprocess.Popen]:
    """`vnp.predict` processes started by hand with SLURM variables (no agent watching them)."""

    job_id = slurm_job_id()
    procs = []
    for rank in range(ranks):
        env = {**child_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": str(ranks),
               "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": job_id, **extra_env}
        procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.slow
def test_a_killed_rank_is_named_by_rank_0(tiny_pack, tmp_path):
    fasta = write_long_input(tmp_path / "long.fa", n=200)
    out = tmp_path / "out"
    procs = hand_started_ranks(["-m", "vnp.predict", str(fasta), "-o", str(out), f"pack={tiny_pack}",
                                "progress=false", "threads=1", "batch.unit_chunks=2", "dist.timeout_s=60",
                                "engine.commit_every_steps=4"])
    deadline = time.time() + 120
    while not list((out / "work" / "parts").glob("part-*.npz")):
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.05)
    os.kill(rank_pid(out, 1), signal.SIGKILL)  # as the OOM killer does
    assert procs[0].wait(timeout=90) == 1
    procs[1].wait(timeout=30)
    stderr = procs[0].stderr.read()
    procs[1].stderr.close()
    assert error_lines(stderr) == [stderr.strip()], stderr
    assert stderr.startswith("vnp: error: rank 1 stopped answering (killed, out of memory, or its node lost?)")


@pytest.mark.slow
def test_the_rendezvous_respects_the_timeout_with_a_foreign_program_on_master_port(tmp_path):
    import socket

    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\nACGT\n")
    with socket.socket() as foreign:  # accepts connections and never answers
        foreign.bind(("127.0.0.1", 0))
        foreign.listen(8)
        port = foreign.getsockname()[1]
        env = {**child_env(), "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(tmp_path / "out"),
                               "pack=tiny", "dist.timeout_s=3"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 1 and time.time() - started < 60
    assert proc.stderr.strip() == (f"vnp: error: rank 1: no rendezvous with the other ranks at 127.0.0.1:{port} "
                                   "within dist.timeout_s=3 s (is another program listening on MASTER_PORT?)")
