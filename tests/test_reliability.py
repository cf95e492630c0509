"""Reliability defects from a hostile-input review (issue 8): models identified by content, paths
checked before they are opened, one line instead of a traceback, no silent wrong output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_predict import ROOT, child_env, tables
from vnp.errors import InputError
from vnp.models import identity
from vnp.models.classifier import MLPClassifier, load_classifier, save_classifier
from vnp.models.pack import build_tiny_pack, load_pack, model_digests

TINY_DIM = 48 + 64  # the tiny pack's DNABERT-S + ESM2 widths


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pack") / "tiny"
    build_tiny_pack(folder)
    return folder


@pytest.fixture(autouse=True)
def private_digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def wide_classifiers(folder: Path) -> tuple[Path, Path]:
    """Two classifiers with a 4096-wide hidden layer (a 1.8 MB file) that differ only in the output
    bias, stored after the first MiB: the same size and the same first MiB."""
    torch.manual_seed(0)
    model = MLPClassifier(TINY_DIM, 4096, 2).eval()
    a = save_classifier(model, folder / "a")
    with torch.no_grad():
        model.output_layer.bias += 1.0
    b = save_classifier(model, folder / "b")
    bytes_a = (a / "classifier.safetensors").read_bytes()
    bytes_b = (b / "classifier.safetensors").read_bytes()
    assert len(bytes_a) == len(bytes_b) > 1 << 20 and bytes_a[: 1 << 20] == bytes_b[: 1 << 20] != bytes_b
    return a, b


def copy_folder(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vnp: error")]


# ---------------------------------------------------------------- 1. models identified by content


@pytest.mark.slow
def test_resume_with_a_classifier_changed_beyond_its_first_mib_is_refused(tiny_pack, tmp_path):
    """The issue's scenario: SIGTERM a run using classifier `live` = A, copy B over `live`, rerun."""
    a, b = wide_classifiers(tmp_path)
    live = tmp_path / "live"
    copy_folder(a, live)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n" + "ATGGCCAAAGGCTTC" * 60 + "\n" for i in range(40)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(out), f"pack={tiny_pack}",
            f"classifier={live}", "progress=false", "threads=1", "batch.unit_chunks=2"]
    proc = subprocess.Popen(args, env=child_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((out / "work" / "parts").glob("part-*.npz")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read()
    proc.stderr.close()
    copy_folder(b, live)
    rerun = subprocess.run(args, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    digests = [model_digests(load_pack(str(tiny_pack), str(folder)))["classifier"] for folder in (a, b)]
    assert rerun.returncode == 2, rerun.stderr
    assert error_lines(rerun.stderr) == [rerun.stderr.strip()]
    line = rerun.stderr.strip()
    assert f"classifier model {live}" in line and digests[0] in line and digests[1] in line
    assert "force=true" in line
    assert not (out / "prediction_results.txt").exists()


def test_every_byte_of_a_model_names_it(tiny_pack, tmp_path):
    pack = load_pack(str(tiny_pack))
    before = model_digests(pack)
    assert all(value.startswith("sha256:") and len(value) == 71 for value in before.values())
    esm = Path(pack.esm)
    data = bytearray(esm.read_bytes())
    data[-100] ^= 1
    copy = tmp_path / "esm2_tiny.pt"
    copy.write_bytes(bytes(data))
    pack.esm = str(copy)
    after = model_digests(pack)
    assert after["esm"] != before["esm"] and after["dnabert"] == before["dnabert"]


def test_large_file_digests_are_cached_by_path_size_mtime_and_inode(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(identity, "CACHE_MIN_BYTES", 10)
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 1000)
    first = identity.file_digest(model)
    entries = list(identity.cache_dir().glob("*.json"))
    assert len(entries) == 1 and first in entries[0].read_text()
    calls = []
    monkeypatch.setattr(identity, "_sha256", lambda path, what: calls.append(path) or "hashed")
    assert identity.file_digest(model) == first and not calls  # unchanged: from the cache
    model.write_bytes(b"y" * 1000)  # same size, same inode, a new mtime
    os.utime(model, ns=(1, 1))
    assert identity.file_digest(model) == "hashed" and len(calls) == 1
    replacement = tmp_path / "other.pt"
    replacement.write_bytes(b"x" * 1000)
    os.utime(replacement, ns=(1, 1))
    os.replace(replacement, model)  # same size and mtime, another inode
    assert identity.file_digest(model) == "hashed" and len(calls) == 2


def test_slow_hashing_is_said_in_the_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(identity, "SLOW_HASH_S", -1.0)
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 100)
    with caplog.at_level("INFO", logger="vnp"):
        identity.file_digest(model)
    assert any("hashed" in r.getMessage() and str(model) in r.getMessage() for r in caplog.records)


def test_a_hub_snapshot_is_named_by_its_commit(tiny_pack, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--dnabert" / "snapshots" / commit
    copy_folder(tiny_pack / "dnabert", snapshot)
    import vnp.models.dnabert as dnabert

    monkeypatch.setattr(dnabert, "download_snapshot", lambda repo_id: snapshot)
    pack = load_pack(str(tiny_pack))
    pack.dnabert = "org/dnabert"
    assert model_digests(pack)["dnabert"] == f"git:{commit}"


# ---------------------------------------------------------------- 2. paths checked before opening


@pytest.fixture
def no_hang():
    """A test that would block forever on a read fails after 20 s instead."""
    def expired(signum, frame):
        raise TimeoutError("blocked on a read")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_fifo_as_a_model_file_is_refused_not_read(tiny_pack, tmp_path, no_hang):
    from vnp.models.esm import load_esm

    pack = load_pack(str(tiny_pack))
    pack.esm = str(fifo(tmp_path / "esm.pt"))
    with pytest.raises(InputError, match=r"esm.pt: ESM checkpoint is a FIFO \(named pipe\), not a regular file"):
        model_digests(pack)
    with pytest.raises(InputError, match="is a FIFO"):
        load_esm(pack.esm)
    folder = tmp_path / "classifier"
    folder.mkdir()
    fifo(folder / "classifier.safetensors")
    (folder / "classifier.json").write_text("{}")
    with pytest.raises(InputError, match="classifier.safetensors: classifier file is a FIFO"):
        load_classifier(folder)
    with pytest.raises(InputError, match="classifier checkpoint is a FIFO"):
        load_classifier(fifo(tmp_path / "model.pth"))


def test_a_fifo_in_a_model_folder_is_refused(tiny_pack, tmp_path, no_hang):
    dnabert = tmp_path / "dnabert"
    copy_folder(tiny_pack / "dnabert", dnabert)
    (dnabert / "config.json").unlink()
    fifo(dnabert / "config.json")
    pack = load_pack(str(tiny_pack))
    pack.dnabert = str(dnabert)
    with pytest.raises(InputError, match="config.json: DNABERT model file is a FIFO"):
        model_digests(pack)


@pytest.mark.parametrize("folder", ["/usr", "/proc/self"])
def test_a_system_folder_as_a_model_is_refused_quickly(tiny_pack, folder, no_hang):
    if not Path(folder).is_dir():
        pytest.skip(f"no {folder} here")
    for role in ("dnabert", "classifier"):
        pack = load_pack(str(tiny_pack))
        setattr(pack, role, folder)
        with pytest.raises(InputError, match=f"^{folder}"):
            model_digests(pack)


def test_a_pipe_or_device_as_input_or_config_is_not_a_regular_file(tmp_path, no_hang):
    from vnp.config import load_config
    from vnp.plan import check_inputs

    pipe = fifo(tmp_path / "reads.fa")
    with pytest.raises(InputError, match=r"reads.fa: is a FIFO \(named pipe\), not a regular file; save the input"):
        check_inputs([str(pipe)])
    with pytest.raises(InputError, match="/dev/null: is a device, not a regular file"):
        check_inputs(["/dev/null"])
    with pytest.raises(InputError, match="reads.fa: config file is a FIFO"):
        load_config(str(pipe), [])


@pytest.mark.slow
def test_a_fifo_in_a_pack_ends_the_run_with_one_line(tiny_pack, tmp_path):
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "pack.yaml").write_text((tiny_pack / "pack.yaml").read_text())
    for name in ("dnabert", "classifier"):
        (pack / name).symlink_to(tiny_pack / name)
    fifo(pack / "esm2_tiny.pt")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">s1\n" + "ATGGCC" * 50 + "\n")
    proc = subprocess.run([sys.executable, "-m", "vnp.predict", str(fasta), "-o", str(tmp_path / "out"),
                           f"pack={pack}", "progress=false", "threads=1"],
                          env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr
    assert "esm2_tiny.pt: ESM checkpoint is a FIFO" in proc.stderr
