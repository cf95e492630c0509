"""Helpers shared by the test modules (imported as `tests.helpers`; test modules import nothing
from each other): real processes with a clean environment, launchers, inputs."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from vnp.demo import coding_like, random_dna
from vnp.results.tables import FILES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TABLES = FILES  # every result file: the original's tables, chunks, contigs, regions, FASTA, summary
TINY_DIM = 48 + 64  # the tiny pack's DNABERT-S + ESM2 widths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_job_id() -> str:
    """A SLURM_JOB_ID whose derived MASTER_PORT (15000 + id % 20000) is free right now."""
    rng = random.Random()
    while True:
        port = rng.randrange(15000, 35000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return str(port - 15000)


def write_mixed_input(path: Path, seed: int = 5) -> Path:
    """Sequences shorter than L, longer ones (uneven chunks), no-frame ones, N and lower case."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i, length in enumerate([90, 500, 1001, 2, 640, 1500, 333, 2100, 45, 777]):
            if i in (3, 6):  # stop codons in all six frames (TAA forward, TTA = TAA reverse)
                seq = ("TAACTAACTAACTTAGTTAGTTAG" * (length // 24 + 1))[:length]
            elif i % 2:
                seq = coding_like(rng, length)
            else:
                seq = random_dna(rng, length)
            if i == 5:
                seq = seq[:100] + "NNNN" + seq[104:400].lower() + seq[400:]
            fh.write(f">read{i} len={length}\n{seq}\n")
    return path


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "SLURM_", "MASTER_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(cmd: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or child_env(), timeout=timeout, cwd=ROOT)
    return proc


def launcher(ranks: int) -> list[str]:
    """A plain process for 1 rank, torchrun for more, each ending where `vnp.predict` follows."""
    if ranks == 1:
        return [sys.executable, "-m"]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m"]


def predict_ok(ranks: int, fasta: Path, out: Path, args: list[str]) -> dict:
    """Run `vnp.predict` on `ranks` ranks; it must succeed. Returns its run.json."""
    proc = run([*launcher(ranks), "vnp.predict", str(fasta), "-o", str(out), *args])
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "run.json").read_text())


def tables(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in TABLES}


# What VirNucPro's train.py does: a script-level class, trained, then `torch.save(model, path)`.
# Expected scores are computed in the same process, with the script's own class.
ORIGINAL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MLPClassifier(nn.Module):
        def __init__(self, input_dim, hidden_dim, num_class):
            super(MLPClassifier, self).__init__()
            self.hidden_layer = nn.Linear(input_dim, hidden_dim)
            self.bn1 = nn.BatchNorm1d(hidden_dim)
            self.output_layer = nn.Linear(hidden_dim, num_class)
            self.dropout = nn.Dropout(0.5)
            self.init_weights()

        def init_weights(self):
            nn.init.xavier_uniform_(self.hidden_layer.weight)
            nn.init.xavier_uniform_(self.output_layer.weight)

        def forward(self, x):
            x = self.hidden_layer(x)
            x = self.bn1(x)
            x = F.relu(x)
            x = self.dropout(x)
            x = self.output_layer(x)
            return x

    torch.manual_seed(0)
    model = MLPClassifier(int(sys.argv[1]), 8, 2)
    model.train()
    for _ in range(3):  # move BatchNorm's running statistics away from (0, 1)
        model(torch.randn(32, int(sys.argv[1])) * 3 + 1)
    model.eval()
    torch.save(model, "model.pth")
    x = torch.randn(10, int(sys.argv[1]))
    with torch.no_grad():
        probs = F.softmax(model(x), dim=1)
    np.save("x.npy", x.numpy())
    np.save("expected.npy", probs.numpy())
    """
)


def write_long_input(path: Path, n: int = 250, seed: int = 9) -> Path:
    """Coding-like sequences of 500-1400 bp: many frames, a run of a few seconds (~4 s of CPU on one
    rank with the tiny pack at `batch.unit_chunks=2`)."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            length = rng.choice([500, 700, 1400])
            fh.write(f">s{i}\n{coding_like(rng, length)}\n")
    return path


def wait_for_parts(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(list((out / "work" / "parts").glob("part-*.npz"))) < count:
        assert proc.poll() is None, f"run ended before {count} parts: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.02)


def rank_pid(out: Path, rank: int) -> int:
    text = (out / "logs" / f"rank{rank}.log").read_text()
    return int(re.findall(r"pid (\d+)", text)[-1])


def copy_folder(source: Path, target: Path) -> None:
    """A plain copy of a folder's files (so a test may change the copy, never the source)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vnp: error")]


def one_error_line(stderr: str, message: str = "") -> str:
    """What a command printed is exactly one `vnp: error: ` line (no traceback, no second rank's
    word), holding `message`; returns it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vnp: error: ") and message in lines[0], stderr
    return lines[0]


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that `build(folder)` fills once per test run, shared read-only. Under pytest-xdist
    the first worker to need it builds it under a lock in the run's common temporary folder; the
    others wait for it and read it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder common to this run's workers
    folder = base / f"shared-{name}"
    folder.mkdir(exist_ok=True)
    done = folder / ".built"  # made last: a build that failed half-way is redone by the next test
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            build(folder)
            done.touch()
    return folder
