"""Fault tolerance with real processes: kill -9, SIGTERM, corrupt progress, changed inputs, a
failing rank. Every resumed run must give tables byte-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (
    BIN,
    ROOT,
    built_once,
    child_env,
    error_lines,
    one_error_line,
    predict_ok,
    rank_pid,
    run,
    slurm_job_id,
    tables,
    wait_for_parts,
    write_long_input,
    write_mixed_input,
)
from vnp.predict import main as predict_main

pytestmark = pytest.mark.slow
# Frequent commits, so that runs of a few seconds leave several parts to kill and resume between.
ARGS = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=2", "engine.commit_every_steps=4",
        "dist.timeout_s=60"]


@pytest.fixture(scope="module")
def long_input(tmp_path_factory) -> Path:
    """Shared read-only by the test run's workers (`built_once`), like the uninterrupted run."""
    return built_once(tmp_path_factory, "resume-input", lambda folder: write_long_input(folder / "long.fa")) / "long.fa"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, long_input) -> Path:
    """The uninterrupted run, in this process (one rank: its tables are any world size's)."""
    def build(folder: Path) -> None:
        assert predict_main([str(long_input), "-o", str(folder / "out"), *ARGS]) == 0
    return built_once(tmp_path_factory, "resume-reference", build) / "out"


def start_torchrun(long_input: Path, out: Path, ranks: int = 2, extra: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m", "vnp.predict",
                             str(long_input), "-o", str(out), *ARGS, *extra],
                            env=child_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_every_rank(out: Path, proc: subprocess.Popen, ranks: int) -> None:
    """kill -9 of all ranks and the launcher (torchrun starts its workers in sessions of their own)."""
    for rank in range(ranks):
        try:
            os.kill(rank_pid(out, rank), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()
    proc.wait(timeout=60)


def resume(long_input: Path, out: Path, ranks: int) -> dict:
    """The same command again, on `ranks` ranks (one: in this process); returns its run.json."""
    if ranks > 1:
        return predict_ok(ranks, long_input, out, ARGS)
    assert predict_main([str(long_input), "-o", str(out), *ARGS]) == 0
    return json.loads((out / "run.json").read_text())


def test_kill_one_rank_then_resume_with_1_and_3_ranks(long_input, reference, tmp_path):
    out = tmp_path / "out"
    proc = start_torchrun(long_input, out)
    wait_for_parts(out, 5, proc)
    os.kill(rank_pid(out, 1), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert not (out / "prediction_results.txt").exists()
    committed = len(list((out / "work" / "parts").glob("part-*.npz")))
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for target, ranks in ((out, 1), (copy, 3)):
        record = resume(long_input, target, ranks)
        assert tables(target) == tables(reference)
        assert record["resumed_units"] >= committed  # finished work was not recomputed
        assert record["world_size"] == ranks


def test_sigterm_mid_run_then_resume(long_input, reference, tmp_path):
    """SIGTERM to the launcher once progress is committed: the ranks stop after their step (torchrun
    passes the signal on), leave partial progress and no tables; the resumed run keeps that work."""
    out = tmp_path / "out"
    proc = start_torchrun(long_input, out)
    wait_for_parts(out, 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert "vnp: stopped by signal" in proc.stderr.read()
    assert not (out / "prediction_results.txt").exists()
    assert "unit_chunks: 2" in (out / "config.yaml").read_text()  # written when the run started
    committed = len(list((out / "work" / "parts").glob("part-*.npz")))
    assert committed >= 1
    record = resume(long_input, out, 2)
    assert committed <= record["resumed_units"] < record["work_units"]  # partial, and kept
    assert tables(out) == tables(reference)


def test_signal_ahead_of_time_stops_every_rank_cleanly(long_input, reference, tmp_path):
    """SIGUSR1 to one rank (SLURM --signal=USR1@120): all ranks stop after the same step."""
    out = tmp_path / "out"
    proc = start_torchrun(long_input, out)
    wait_for_parts(out, 3, proc)
    os.kill(rank_pid(out, 1), signal.SIGUSR1)
    assert proc.wait(timeout=120) != 0
    assert "Run the same command again to resume" in proc.stderr.read()
    record = resume(long_input, out, 1)  # test_sigterm_mid_run_then_resume resumes on 2 ranks
    assert record["resumed_units"] >= 3
    assert tables(out) == tables(reference)


def test_corrupt_progress_is_recomputed(long_input, reference, tmp_path):
    out = tmp_path / "out"
    proc = start_torchrun(long_input, out)
    wait_for_parts(out, 6, proc)
    kill_every_rank(out, proc, 2)  # as when a node dies
    parts = sorted((out / "work" / "parts").glob("part-*.npz"))
    parts[0].write_bytes(parts[0].read_bytes()[:100])  # truncated
    data = bytearray(parts[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    parts[1].write_bytes(bytes(data))
    record = resume(long_input, out, 1)
    assert record["rejected_progress_parts"] >= 2
    assert tables(out) == tables(reference)


def test_changed_input_is_refused_unless_forced(tmp_path, capsys):
    fasta, out = write_mixed_input(tmp_path / "in.fa"), tmp_path / "out"
    assert predict_main([str(fasta), "-o", str(out), *ARGS]) == 0
    finished = tables(out)
    fasta.write_bytes(fasta.read_bytes().replace(b"len=500\n", b"len=500\nACGT", 1))
    capsys.readouterr()
    assert predict_main([str(fasta), "-o", str(out), *ARGS]) == 2
    one_error_line(capsys.readouterr().err, "different inputs")
    assert tables(out) == finished  # nothing written in OUT was destroyed
    assert predict_main([str(fasta), "-o", str(out), *ARGS, "force=true"]) == 0
    assert tables(out) != finished


def test_settings_that_do_not_change_results_may_differ(long_input, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    assert predict_main([str(long_input), "-o", str(out), *ARGS, "batch.esm_tokens=2048", "progress=true"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["resumed_units"] == record["work_units"]  # nothing recomputed
    assert tables(out) == tables(reference)


FAILING = """
import sys
import vnp.run.steps as steps

original = steps.FrameWork.compute

def failing(self, unit, prepared):
    import torch.distributed as dist
    if dist.is_initialized() and dist.get_rank() == 1 and unit >= 6:
        raise RuntimeError("injected failure")
    return original(self, unit, prepared)

steps.FrameWork.compute = failing
from vnp.predict import main
sys.exit(main(sys.argv[1:]))
"""


def test_failing_rank_ends_the_job_quickly_under_torchrun(long_input, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    out = tmp_path / "out"
    started = time.time()
    proc = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(script), str(long_input),
                "-o", str(out), *ARGS[:-1], "dist.timeout_s=20"], timeout=120)
    assert proc.returncode != 0
    assert time.time() - started < 60
    lines = error_lines(proc.stderr)
    assert lines == [f"vnp: error: rank 1 failed: RuntimeError: injected failure (log: {out}/logs/rank1.log)"]
    assert "injected failure" in (out / "logs" / "rank1.log").read_text()


def test_failing_rank_without_torchrun_does_not_hang(long_input, tmp_path):
    """Processes started by hand (SLURM variables, no agent to kill the others): bounded by the timeout."""
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    out = tmp_path / "out"
    job_id = slurm_job_id()
    procs = []
    started = time.time()
    for rank in range(2):
        env = child_env()
        env.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2", SLURM_NODELIST="localhost",
                   SLURM_JOB_ID=job_id)
        procs.append(subprocess.Popen([sys.executable, str(script), str(long_input), "-o", str(out), *ARGS[:-1],
                                       "dist.timeout_s=15"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    codes = [p.wait(timeout=90) for p in procs]
    assert all(code != 0 for code in codes)
    assert time.time() - started < 60
    stderr = "".join(p.stderr.read() for p in procs)
    assert stderr.count("vnp: error") == 1 and "injected failure" in stderr


SLOW_RANK0 = """
import sys, time
import vnp.run.plan as plan
import vnp.predict as predict_module
import vnp.results.tables as outputs

original_iter = plan.iter_pieces

def slow_pieces(path):
    for piece in original_iter(path):
        if not isinstance(piece, bytes):
            time.sleep(0.4)  # a long validation pass on rank 0
        yield piece

plan.iter_pieces = slow_pieces
original_write = outputs.write_tables

def slow_write(*args, **kwargs):
    time.sleep(8)  # long final writes on rank 0
    return original_write(*args, **kwargs)

outputs.write_tables = slow_write
from vnp.predict import main
sys.exit(main(sys.argv[1:]))
"""


def test_rank0_long_preparation_and_writes_do_not_trip_the_timeout(tmp_path):
    """dist.timeout_s=3 while rank 0 spends ~8 s validating and 8 s writing: the others wait on a
    heartbeat, not a collective, and do not wait for the final writes at all."""
    small = tmp_path / "small.fa"
    small.write_text("".join(f">s{i}\n" + "ATGGCCAAAGGC" * 30 + "\n" for i in range(20)))
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RANK0)
    out = tmp_path / "out"
    proc = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(script), str(small), "-o", str(out),
                "pack=tiny", "progress=false", "threads=1", "dist.timeout_s=3"], timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert (out / "prediction_results.txt").exists()
