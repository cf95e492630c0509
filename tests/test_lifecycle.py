"""One rank lifecycle (vnp.run.lifecycle.run_rank) for predict, train and embed: one mapping from
how a rank ended to its exit code, one log per rank (OUT/logs/rankN.log), one preparation handshake
(a ready file and a heartbeat) for every command that prepares on rank 0."""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

import pytest

from tests.helpers import BIN, ROOT, run
from vnp.demo import coding_like
from vnp.support.command import exit_code
from vnp.support.errors import InputError, PeerFailure, Stopped

TRAIN = ["pack=tiny", "progress=false", "threads=1", "batch.unit_chunks=8", "chunk_length=150",
         "train.max_epochs=2", "train.batch=8"]


def write_manifest(folder: Path) -> Path:
    rng = random.Random(5)
    for label in ("virus", "others"):
        (folder / f"{label}.fa").write_text("".join(f">{label}{i}\n{coding_like(rng, 450)}\n" for i in range(12)))
    (folder / "manifest.tsv").write_text("virus.fa\tvirus\nothers.fa\tothers\n")
    return folder / "manifest.tsv"


@pytest.mark.parametrize("err, rank, code, said", [
    (InputError("in.fa: empty file"), None, 2, "vnp: error: in.fa: empty file\n"),
    (InputError("in.fa: empty file", reported=True), 1, 2, ""),
    (Stopped("stopped by SIGTERM"), 0, 143, "vnp: stopped by signal while preparing the run in OUT; nothing was "
                                             "lost. Run the same command again to start it.\n"),
    (Stopped("stopped by SIGTERM"), 1, 143, ""),
    (PeerFailure("all_gather failed", reported=True), 0, 1, ""),
    (PeerFailure("rank 1: rank 0 gave no sign of life"), 1, 1, "vnp: error: rank 1: rank 0 gave no sign of life\n"),
])
def test_one_mapping_from_errors_to_exit_codes(capsys, err, rank, code, said):
    assert exit_code(err, rank, "OUT") == code
    assert capsys.readouterr().err == said


def test_an_unexpected_error_says_where_its_traceback_went(capsys):
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as err:
        assert exit_code(err, 3, "OUT", lambda: " (log: OUT/logs/rank3.log)") == 1
    assert capsys.readouterr().err == "vnp: error: rank 3 failed: ValueError: boom (log: OUT/logs/rank3.log)\n"


def test_only_the_mapping_says_vnp_error():
    """Every 'vnp: error' line comes from vnp.support.command (the rendezvous watchdog, which ends
    the process from a thread, is the one exception)."""
    allowed = {"vnp/support/command.py", "vnp/run/dist.py"}
    for path in sorted((ROOT / "vnp").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.startswith("vnp: error") and name not in allowed:
                pytest.fail(f"{name}:{node.lineno} says 'vnp: error' itself")


def test_train_logs_like_predict(tmp_path, capsys, monkeypatch):
    """An unexpected failure of `vnp train` names OUT/logs/rank0.log, which holds the traceback and
    the rank's log (the engine's lines), as for `vnp predict`."""
    import vnp.train as train_command

    def failing(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(train_command, "write_outputs", failing)
    out = tmp_path / "out"
    in_process = [a for a in TRAIN if not a.startswith("threads=")]
    assert train_command.main([str(write_manifest(tmp_path)), "-o", str(out), *in_process]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"vnp: error: rank 0 failed: RuntimeError: injected failure (log: {out / 'logs' / 'rank0.log'})"
    text = (out / "logs" / "rank0.log").read_text()
    assert "Traceback" in text and "units to do" in text
    assert not list((out / "logs").glob("train-*"))


SLOW_TRAIN_PREPARATION = """
import sys, time
import vnp.training.features as features

original = features.pack_inputs

def slow_pack(*args, **kwargs):
    time.sleep(8)  # a long input pass on rank 0, longer than dist.timeout_s
    return original(*args, **kwargs)

features.pack_inputs = slow_pack
from vnp.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_train_ranks_wait_for_a_long_preparation_on_the_heartbeat(tmp_path):
    """dist.timeout_s=4 while rank 0 spends 8 s packing: the other rank waits on the ready file
    and rank 0's heartbeat, not in a collective the timeout cuts."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_TRAIN_PREPARATION)
    out = tmp_path / "out"
    proc = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(script),
                str(write_manifest(tmp_path)), "-o", str(out), *TRAIN, "dist.timeout_s=4"], timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert (out / "pack.yaml").exists()
    assert not [p for p in (out / "work").iterdir() if re.match(r"(ready|remaining|heartbeat)-", p.name)]


@pytest.mark.parametrize("job_code", [0, "raises"])
def test_a_rank_gives_back_the_torch_threads_it_set(job_code):
    """run_rank sets torch's CPU threads for its job (threads=1) and restores them when the job ends,
    however it ends: a command run in a process that goes on (a test, a notebook, a workflow step
    in Python) leaves that process's threads as they were."""
    import torch

    from vnp.run.lifecycle import run_rank

    seen = []

    def job(rank) -> int:
        seen.append(torch.get_num_threads())
        if job_code == "raises":
            raise InputError("in.fa: empty file")
        return job_code

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = run_rank(job, "cpu", "gloo", 30, threads=1, stoppable=False)
        assert (seen, code) == ([1], 0 if job_code == 0 else 2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
