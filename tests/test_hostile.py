"""Hostile input to `vnp predict`: one clear line, exit code 2, no traceback, and nothing already
written in OUT destroyed. Every case runs in one process (the error's words); under torchrun with
2 ranks one case of each place an error is found (rank 0's quick checks, its long input pass, the
configuration every rank reads, the model files, the output folder) shows that exactly one rank
says it and no rank prints a traceback or waits."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import BIN, ROOT, child_env, error_lines, one_error_line, tables
from vnp.predict import main as predict_main

ARGS = ["pack=tiny", "progress=false", "threads=1", "dist.timeout_s=60"]
GOOD = ">g1\n" + "ATGGCCAAAGGC" * 40 + "\n>g2\n" + "ACGT" * 130 + "\n"


def torchrun(*items: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "vnp.predict", *items]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=180)


def rank_tracebacks(stderr: str) -> list[str]:
    """Tracebacks printed by ranks; torchrun's own failure report (ChildFailedError, raised in the
    launcher after a rank exits non-zero) is the launcher's, not a rank's."""
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if "bin/torchrun" not in b.split("\n", 2)[1]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """An OUT holding a finished run, and its input (this worker's own: the torchrun cases write
    into it)."""
    base = tmp_path_factory.mktemp("finished")
    good = base / "good.fa"
    good.write_text(GOOD)
    out = base / "out"
    assert predict_main([str(good), "-o", str(out), *ARGS]) == 0  # in this process: any launcher's tables
    return good, out


class Evil:
    """Unpickling it runs `touch PWNED`: a checkpoint that must be refused, never loaded."""

    def __reduce__(self):
        return os.system, ("touch PWNED",)


def malicious_pickle(path: Path) -> Path:
    import torch

    torch.save({"model": Evil()}, path)
    return path


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, expected words in the one error line)."""
    def file(name: str, data: bytes) -> str:
        (tmp / name).write_bytes(data)
        return str(tmp / name)

    blob = gzip.compress(b">s1\n" + b"ACGT" * 50000 + b"\n")
    good = file("good.fa", GOOD.encode())
    return {
        "missing": ([str(tmp / "nope.fa")], "no such file"),
        "directory": ([str(tmp)], "is a directory"),
        "empty": ([file("empty.fa", b"")], "empty file"),
        "blank": ([file("blank.fa", b"\n\n")], "no records"),
        "binary": ([file("junk.fa", bytes(range(256)) * 8)], "binary data"),
        "truncated_gzip": ([file("cut.fa.gz", blob[: len(blob) // 2])], "truncated or corrupt gzip"),
        "fastq_quality": ([file("q.fq", b"@r1\nACGT\n+\nIII\n")], "quality length 3 differs"),
        "digit": ([file("d.fa", b">s1\nAC1T\n")], "record 's1' (line 2): invalid character '1'"),
        "star": ([file("st.fa", b">s1\nACGT*\n")], "invalid character '*'"),
        "dash": ([file("da.fa", b">s1\nAC-GT\n")], "invalid character '-'"),
        "protein": ([file("p.fa", b">p1\nMEFILPQ\n")], "invalid character 'E'"),
        "duplicate": ([file("dup.fa", b">s1\nACGT\n>s1\nAC\n")], "duplicate record ID"),
        "same_twice": ([good, good], "given twice"),
        "id_in_two_files": ([good, file("other.fa", b">g1\nACGT\n")], "IDs must be unique across inputs"),
        "evil_classifier": ([good, f"classifier={malicious_pickle(tmp / 'evil.pth')}"], "refusing to load"),
        "bad_key": ([good, "batch.unit_chunks=-3"], "batch.unit_chunks must be positive"),
    }


CASES = ["missing", "directory", "empty", "blank", "binary", "truncated_gzip", "fastq_quality", "digit", "star",
         "dash", "protein", "duplicate", "same_twice", "id_in_two_files", "evil_classifier", "bad_key"]

# one case of each place an error is found: rank 0's quick checks (missing), its long input pass
# (truncated_gzip: the other rank waits on the ready file), the configuration every rank reads
# (bad_key: only rank 0 says it). How an error reaches the other rank depends on where it is
# raised, not on which input raised it: the other inputs of each place run in one process above.
UNDER_TORCHRUN = ["missing", "truncated_gzip", "bad_key"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2(case, tmp_path, capsys):
    items, expected = bad_inputs(tmp_path)[case]
    capsys.readouterr()  # what building the inputs printed
    assert predict_main([*items, "-o", str(tmp_path / "fresh"), *ARGS]) == 2
    one_error_line(capsys.readouterr().err, expected)  # no traceback: one line is all there is
    assert not (ROOT / "PWNED").exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", UNDER_TORCHRUN)
def test_bad_input_under_torchrun_keeps_a_finished_run(case, finished, tmp_path):
    """Even with force=true, a bad rerun over a finished OUT leaves its tables as they were."""
    _, out = finished
    before = tables(out)
    items, expected = bad_inputs(tmp_path)[case]
    proc = torchrun(*items, "-o", str(out), *ARGS, "force=true")
    errors = error_lines(proc.stderr)
    assert proc.returncode != 0 and not rank_tracebacks(proc.stderr), proc.stderr
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert proc.returncode == 1 and "exitcode  : 2" in proc.stderr  # torchrun reports the ranks' exit 2
    assert tables(out) == before
    assert not (ROOT / "PWNED").exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_out_is_a_file(tmp_path, finished):
    good, _ = finished
    target = tmp_path / "out"
    target.write_text("precious")
    proc = torchrun(str(good), "-o", str(target), *ARGS)
    assert "output folder is an existing file" in proc.stderr and proc.returncode != 0
    assert target.read_text() == "precious"


def test_out_not_writable(tmp_path, finished, capsys):
    """In one process: test_out_is_a_file shows an output-folder error under torchrun."""
    good, _ = finished
    target = Path("/sys/fs")  # not writable even for root
    if not target.is_dir():
        pytest.skip("no read-only folder to try")
    assert predict_main([str(good), "-o", str(target), *ARGS]) == 2
    line = one_error_line(capsys.readouterr().err)
    # /sys/fs holds other files: refused as not vnp's before its permissions matter (issue 17, item 1)
    assert "output folder is not writable" in line or "not empty and not one vnp made" in line


@pytest.mark.slow
def test_corrupt_model_file_is_refused_before_any_work(tmp_path, finished):
    good, _ = finished
    from vnp.models.pack import build_tiny_pack

    build_tiny_pack(tmp_path / "pack")
    model = tmp_path / "pack" / "esm2_tiny.pt"
    model.write_bytes(model.read_bytes()[:1000])
    out = tmp_path / "out"
    proc = torchrun(str(good), "-o", str(out), "pack=" + str(tmp_path / "pack"), "progress=false", "threads=1")
    errors = error_lines(proc.stderr)
    assert proc.returncode != 0 and not rank_tracebacks(proc.stderr), proc.stderr
    assert len(errors) == 1 and "esm2_tiny.pt" in errors[0], proc.stderr
    assert not list((out / "work" / "parts").glob("part-*"))  # no unit was embedded
