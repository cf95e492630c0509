"""Models are identified by their content: every byte of a model names it, large digests are cached,
a hub snapshot is named by its commit."""

from __future__ import annotations

import hashlib
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_DIM, ROOT, child_env, copy_folder, error_lines
from vnp.models import identity
from vnp.models.classifier import MLPClassifier, save_classifier
from vnp.models.pack import load_pack, model_digests

pytestmark = pytest.mark.usefixtures("private_digest_cache")


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
            f"classifier={live}", "progress=false", "threads=1", "batch.unit_chunks=2",
            "engine.commit_every_steps=1"]  # a part early, so the signal lands mid-run
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


def test_a_file_of_several_read_blocks_is_hashed_to_its_last_byte(tmp_path):
    """The digest reads a file in 4 MiB blocks: a file of more than two blocks is named by all of them."""
    data = bytearray(os.urandom((9 << 20) + 123))
    model, other = tmp_path / "model.pt", tmp_path / "other.pt"
    model.write_bytes(bytes(data))
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    assert identity.file_digest(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    assert identity.file_digest(other) == hashlib.sha256(bytes(data)).hexdigest() != identity.file_digest(model)


def test_large_file_digests_are_cached_by_path_size_mtime_and_inode(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(identity, "CACHE_MIN_BYTES", 10)
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 1000)
    first = identity.file_digest(model)
    entries = list(identity.cache_dir().glob("*.json"))
    assert len(entries) == 1 and first in entries[0].read_text()
    calls = []
    monkeypatch.setattr(identity, "file_sha256", lambda path, what: calls.append(path) or "hashed")
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


def test_fast_hashing_is_not_logged_and_the_size_is_said_in_gb(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(identity, "SLOW_HASH_S", 0.5)
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 100)
    with caplog.at_level("INFO", logger="vnp"):
        identity.file_digest(model)
        assert not caplog.records
        monkeypatch.setattr(identity, "SLOW_HASH_S", -1.0)
        identity.file_digest(model)
    assert "(0.0 GB)" in caplog.records[0].getMessage()


def test_the_digest_cache_lies_under_xdg_cache_home_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert identity.cache_dir() == tmp_path / "xdg" / "vnp" / "digests"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert identity.cache_dir() == tmp_path / "home" / ".cache" / "vnp" / "digests"


def test_a_cache_entry_for_another_key_is_not_trusted(tmp_path, monkeypatch):
    """An entry is found by a hash of its key; one whose key differs (a collision, an entry edited
    by hand) is hashed again, whichever way the keys compare."""
    monkeypatch.setattr(identity, "CACHE_MIN_BYTES", 10)
    model = tmp_path / "model.pt"
    model.write_bytes(b"x" * 1000)
    digest = identity.file_digest(model)
    (entry,) = identity.cache_dir().glob("*.json")
    for key in ("~", "", "[0]"):
        entry.write_text(json.dumps({"key": key, "sha256": "forged"}))
        assert identity.file_digest(model) == digest


def test_a_folder_digest_names_every_file_and_its_name(tmp_path):
    for name, data in (("a.bin", b"a"), ("b.bin", b"b"), ("c.bin", b"a")):
        (tmp_path / name).write_bytes(data)
    digest = identity.folder_digest(tmp_path, ["a.bin", "b.bin"], "model")
    assert digest != identity.folder_digest(tmp_path, ["a.bin"], "model")
    assert digest != identity.folder_digest(tmp_path, ["c.bin", "b.bin"], "model")  # same bytes, another name
    assert digest != identity.folder_digest(tmp_path, [], "model")
    assert identity.folder_digest(tmp_path, ["a.bin", "b.bin"], "model") == digest


def test_a_hub_snapshot_is_named_by_its_commit(tiny_pack, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--dnabert" / "snapshots" / commit
    copy_folder(tiny_pack / "dnabert", snapshot)
    import vnp.models.dnabert as dnabert

    monkeypatch.setattr(dnabert, "download_snapshot", lambda repo_id, revision, pack_name: snapshot)
    pack = load_pack(str(tiny_pack))
    pack.dnabert = "org/dnabert"
    assert model_digests(pack)["dnabert"] == f"git:{commit}"


def test_only_files_from_64_mib_are_cached_each_under_its_own_entry(tmp_path, monkeypatch):
    small = tmp_path / "small.pt"
    small.write_bytes(b"s" * 100_000)  # far under 64 MiB: hashed every time, no entry
    identity.file_digest(small)
    assert not identity.cache_dir().exists() or not list(identity.cache_dir().iterdir())
    monkeypatch.setattr(identity, "CACHE_MIN_BYTES", 1000)
    for name in ("a.pt", "b.pt", "c.pt"):
        (tmp_path / name).write_bytes(name[0].encode() * 1000)  # exactly 1,000 bytes each
        identity.file_digest(tmp_path / name)
    entries = sorted(p.name for p in identity.cache_dir().iterdir())
    assert len(entries) == 3 and all(re.fullmatch(r"[0-9a-f]{40}\.json", e) for e in entries), entries


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def test_files_of_64_mib_and_more_are_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "file_sha256", lambda path, what: "hashed")  # the size is what counts
    identity.file_digest(sparse_file(tmp_path / "under.pt", (64 << 20) - 1))
    assert not identity.cache_dir().exists() or not list(identity.cache_dir().iterdir())
    identity.file_digest(sparse_file(tmp_path / "at.pt", 64 << 20))
    assert len(list(identity.cache_dir().iterdir())) == 1


def test_the_size_of_a_slow_hashing_is_said_in_gb_of_a_billion_bytes(tmp_path, monkeypatch, caplog):
    """1,249,999,999 bytes are 1.2 GB: not 1.0 (whole GB), not 1.3 (a GB of fewer bytes)."""
    monkeypatch.setattr(identity, "file_sha256", lambda path, what: "hashed")
    monkeypatch.setattr(identity, "SLOW_HASH_S", -1.0)
    with caplog.at_level("INFO", logger="vnp"):
        identity.file_digest(sparse_file(tmp_path / "model.pt", 1_249_999_999))
    assert "(1.2 GB)" in caplog.records[0].getMessage()


def test_only_a_folder_under_snapshots_named_by_a_commit_is_a_hub_snapshot(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert identity.hub_snapshot_commit(tmp_path / "snapshots" / commit) == commit
    for parent in ("blobs", "trees", "snapshot"):  # before and after "snapshots" in any order
        assert identity.hub_snapshot_commit(tmp_path / parent / commit) is None
    assert identity.hub_snapshot_commit(tmp_path / "snapshots" / commit.upper()) is None
    assert identity.hub_snapshot_commit(tmp_path / "snapshots" / "main") is None

