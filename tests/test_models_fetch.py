"""`vnp models fetch / verify / list`, offline mode and shared packs, against a model mirror on
127.0.0.1 (tests/model_server.py): the real huggingface_hub and download code paths run, no internet.

The mirror serves a tiny pack's files the way the real sources do: DNABERT as a hub repository, the
ESM checkpoint and a `.pth` classifier (saved the original's way: `torch.save` of a whole module of a
script's class) as plain files under their original paths.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import ROOT, child_env, one_error_line, tables, write_mixed_input
from tests.model_server import Blackhole, Mirror, MirrorServer, git_blob_id
from vnp.models.pack import build_tiny_pack
from vnp.cli import main as vnp_main
from vnp.predict import main as predict_main

REPO = "vnp-test/tiny-dnabert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PACK_YAML = textwrap.dedent(f"""\
    name: tiny500
    chunk_length: 500
    dnabert: {REPO}
    dnabert_revision: main
    esm: esm2_tiny
    esm_layer: null
    classifier: null
    dnabert_dim: 48
    esm_dim: 64
    """)
ESM_PATH = "/fair-esm/models/esm2_tiny.pt"
PTH_PATH = "/Li-Jing-1997/VirNucPro/main/tiny500_model.pth"
COMMON = ["progress=false", "threads=1", "batch.unit_chunks=2", "dist.timeout_s=60"]

# The original's way: a script-level MLPClassifier, `torch.save(model, path)`.
SAVE_PTH = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file
    from torch import nn

    class MLPClassifier(nn.Module):
        def __init__(self, input_dim, hidden_dim, num_class):
            super().__init__()
            self.hidden_layer = nn.Linear(input_dim, hidden_dim)
            self.bn1 = nn.BatchNorm1d(hidden_dim)
            self.output_layer = nn.Linear(hidden_dim, num_class)
            self.dropout = nn.Dropout(0.5)

    state = load_file(sys.argv[1])
    hidden, inputs = state["hidden_layer.weight"].shape
    model = MLPClassifier(inputs, hidden, state["output_layer.weight"].shape[0])
    model.load_state_dict(state)
    model.eval()
    torch.save(model, sys.argv[2])
    """)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """The tiny pack, its pack definition for fetching, and the bytes a mirror serves."""
    base = tmp_path_factory.mktemp("sources")
    tiny = base / "tiny"
    build_tiny_pack(tiny)
    (base / "save.py").write_text(SAVE_PTH)
    pth = base / "tiny500_model.pth"
    subprocess.run([sys.executable, str(base / "save.py"), str(tiny / "classifier" / "classifier.safetensors"),
                    str(pth)], check=True, cwd=base)
    (base / "tiny500.yaml").write_text(PACK_YAML)
    dnabert = {n: (tiny / "dnabert" / n).read_bytes() for n in ("config.json", "tokenizer.json", "model.safetensors")}
    return {"tiny": tiny, "yaml": base / "tiny500.yaml", "pth": pth.read_bytes(), "dnabert": dnabert,
            "esm": (tiny / "esm2_tiny.pt").read_bytes()}


def published_size_classifier(folder: Path) -> Path:
    """A random classifier of the published pack's input width (3328), so that the models are
    what a run with pack=500 reaches next."""
    from vnp.models.classifier import build_tiny_classifier, save_classifier

    return save_classifier(build_tiny_classifier(3328, seed=0), folder)


def mirror_of(sources: dict) -> Mirror:
    return Mirror(files={ESM_PATH: sources["esm"], PTH_PATH: sources["pth"]},
                  repos={REPO: (COMMIT, dict(sources["dnabert"]))})


def vnp(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vnp.cli", *args], capture_output=True, text=True,
                          env={**child_env(), **(env or {})}, timeout=timeout, cwd=ROOT)


def fetch(sources: dict, url: str, out: Path, *more: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return vnp("models", "fetch", str(sources["yaml"]), "-o", str(out), "--mirror", url,
               "--classifier-blob", git_blob_id(sources["pth"]), "--no-progress", *more, env=env)


@pytest.fixture(scope="module")
def fetched(sources, tmp_path_factory) -> tuple[Path, Mirror]:
    out = tmp_path_factory.mktemp("fetched") / "pack"
    mirror = mirror_of(sources)
    mirror.drop_once.add(ESM_PATH)  # the connection breaks in the middle of the checkpoint once
    with MirrorServer(mirror) as url:
        proc = fetch(sources, url, out, "--keep-pth")
    assert proc.returncode == 0, proc.stderr
    return out, mirror


def test_fetch_writes_a_self_contained_pack(fetched, sources):
    out, mirror = fetched
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "SHA256SUMS", "classifier/classifier.json", "classifier/classifier.safetensors", "dnabert/config.json",
        "dnabert/model.safetensors", "dnabert/tokenizer.json", "esm2_tiny.pt", "pack.yaml", "sources.json",
        "tiny500_model.pth"]
    pack = (out / "pack.yaml").read_text()
    assert f"dnabert_revision: {COMMIT}" in pack and "dnabert: dnabert\n" in pack and "esm: esm2_tiny.pt" in pack
    record = json.loads((out / "sources.json").read_text())
    assert record["files"]["dnabert/model.safetensors"]["revision"] == COMMIT
    assert record["files"]["esm2_tiny.pt"]["size"] == len(sources["esm"])
    assert record["files"]["tiny500_model.pth"]["git_blob"] == git_blob_id(sources["pth"])
    assert (out / "esm2_tiny.pt").read_bytes() == sources["esm"]
    tiny_state = load_file(sources["tiny"] / "classifier" / "classifier.safetensors")
    fetched_state = load_file(out / "classifier" / "classifier.safetensors")
    assert all((tiny_state[k] == fetched_state[k]).all() for k in tiny_state)
    # through the hub API, at the commit `main` named
    assert ("GET", f"/api/models/{REPO}/revision/main", None) in mirror.requests
    assert any(path == f"/{REPO}/resolve/{COMMIT}/model.safetensors" for _, path, _ in mirror.requests)


def test_interrupted_download_resumes_with_a_range_request(fetched, sources):
    _, mirror = fetched
    esm_gets = [rng for method, path, rng in mirror.requests if method == "GET" and path == ESM_PATH]
    assert esm_gets == [None, f"bytes={len(sources['esm']) // 2}-"]


def test_verify_passes_then_fails_on_one_changed_byte(fetched, tmp_path, capsys):
    out, _ = fetched
    assert vnp_main(["models", "verify", str(out)]) == 0
    assert f"{out}: verified: 7 of 7 files" in capsys.readouterr().out
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    weights = copy / "classifier" / "classifier.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1
    weights.write_bytes(bytes(data))
    assert vnp_main(["models", "verify", str(copy)]) == 1
    said = capsys.readouterr().out
    assert f"FAILED {weights}: sha256" in said and f"{copy}: FAILED: 6 of 7" in said


def test_fetched_pack_predicts_as_the_tiny_pack(fetched, sources, tmp_path, private_digest_cache):
    """Byte-identical tables (the tiny pack's run in this process); the fetched pack folder may be
    read-only."""
    out, _ = fetched
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    direct, via_fetch = tmp_path / "direct", tmp_path / "fetched"
    assert predict_main([str(fasta), "-o", str(direct), f"pack={sources['tiny'] / 'pack.yaml'}", *COMMON]) == 0
    proc = vnp("predict", str(fasta), "-o", str(via_fetch), f"pack={out / 'pack.yaml'}", "offline=true", *COMMON)
    assert proc.returncode == 0, proc.stderr
    assert tables(direct) == tables(via_fetch)


def test_corrupt_pack_fails_predict_with_one_line(fetched, tmp_path, capsys, private_digest_cache):
    out, _ = fetched
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    checkpoint = copy / "esm2_tiny.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    capsys.readouterr()
    assert predict_main([str(fasta), "-o", str(tmp_path / "out"), f"pack={copy / 'pack.yaml'}", *COMMON]) == 2
    line = one_error_line(capsys.readouterr().err, f"vnp: error: {checkpoint}: ")
    assert "corrupt or changed" in line and f"vnp models verify {copy}" in line
    (copy / "esm2_tiny.pt").unlink()
    assert predict_main([str(fasta), "-o", str(tmp_path / "out"), f"pack={copy / 'pack.yaml'}", *COMMON]) == 2
    one_error_line(capsys.readouterr().err,
                   f"{checkpoint}: missing from the model pack; get it with `vnp models fetch 500 -o DIR`")


def test_shared_models_folder_read_only(fetched, tmp_path, monkeypatch, capsys):
    """pack=<name> is found in VNP_MODELS/<name>/pack.yaml first; a read-only copy works (in this
    process)."""
    out, _ = fetched
    shared = tmp_path / "models"
    shared.mkdir()
    subprocess.run(["cp", "-a", str(out), str(shared / "500")], check=True)
    for path in [shared, *shared.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        fasta = write_mixed_input(tmp_path / "mixed.fa")
        for name, value in {"VNP_MODELS": str(shared), "HF_HUB_OFFLINE": "1",
                            "XDG_CACHE_HOME": str(tmp_path / "cache")}.items():
            monkeypatch.setenv(name, value)
        assert predict_main([str(fasta), "-o", str(tmp_path / "out"), "pack=500", *COMMON]) == 0
        record = json.loads((tmp_path / "out" / "run.json").read_text())
        assert record["models"]["name"] == "tiny500"
        capsys.readouterr()
        assert vnp_main(["models", "list"]) == 0
        assert f"500: {shared / '500' / 'pack.yaml'} (verified)" in capsys.readouterr().out
    finally:
        for path in [shared, *shared.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


NO_NETWORK = textwrap.dedent("""
    import socket, sys
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a network connection was opened: {args}")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    from vnp.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


@pytest.mark.parametrize("how", ["offline=true", "HF_HUB_OFFLINE=1"])
def test_offline_opens_no_connection(tmp_path, how):
    """The built-in pack with empty caches: one line naming what is missing and the fetch command."""
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    env = {**child_env(), "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_ENDPOINT": "http://127.0.0.1:9", "VNP_MODELS": ""}
    classifier = published_size_classifier(tmp_path / "classifier")
    items = [str(fasta), "-o", str(tmp_path / "out"), "pack=500", f"classifier={classifier}", *COMMON]
    if how == "offline=true":
        items.append(how)
    else:
        env["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK, "predict", *items], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert time.monotonic() - started < 60  # a liveness bound, not a timing
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "network connection" not in proc.stderr, proc.stderr
    assert "offline mode" in lines[0] and "vnp models fetch 500 -o DIR" in lines[0]


def test_blackhole_hub_is_one_line_within_the_timeout(tmp_path):
    """A server that accepts and never answers: predict (pack=500, nothing cached) and fetch end
    with one line each, after about models.timeout_s, not a hang."""
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    classifier = published_size_classifier(tmp_path / "classifier")
    with Blackhole() as url:
        env = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), "HF_ENDPOINT": url,
               "VNP_MODELS": ""}
        proc = vnp("predict", str(fasta), "-o", str(tmp_path / "out"), "pack=500",
                   f"classifier={classifier}", "models.timeout_s=1", *COMMON, env=env, timeout=60)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "no answer within 1 s (models.timeout_s)" in proc.stderr
        proc = vnp("models", "fetch", "500", "-o", str(tmp_path / "pack"), "--mirror", url, "--timeout", "1",
                   env=env, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "no answer within 1 s" in proc.stderr


def test_wrong_classifier_blob_is_refused(sources, tmp_path):
    with MirrorServer(mirror_of(sources)) as url:
        proc = vnp("models", "fetch", str(sources["yaml"]), "-o", str(tmp_path / "pack"), "--mirror", url,
                   "--classifier-blob", "f" * 40, "--no-progress")
    assert proc.returncode == 2
    assert f"not the published {'f' * 40}" in proc.stderr
    assert not (tmp_path / "pack" / "pack.yaml").exists() and not list((tmp_path / "pack").glob("*.pth*"))


def test_fetch_refuses_without_the_free_space(tmp_path, monkeypatch):
    from vnp.models import fetch as fetch_module

    usage = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(fetch_module.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(fetch_module.InputError, match="GB free, the pack needs"):
        fetch_module._check_free_space(tmp_path, {"big.pt": 10 ** 9})


@pytest.mark.slow
def test_one_download_per_node(sources, tmp_path):
    """Two ranks under torchrun, DNABERT by hub id (HF_ENDPOINT = the mirror), nothing cached: each
    file is downloaded once; the tables equal the tiny pack's. (On one node rank 0 resolves the
    models during its checks, before the others load; the leader step for further nodes,
    vnp.run.steps._resolve_once_per_node, is not separately exercised here.)"""
    torch_home = tmp_path / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "esm2_tiny.pt").write_bytes(sources["esm"])
    pack = tmp_path / "hub_pack.yaml"
    pack.write_text(PACK_YAML.replace("classifier: null", f"classifier: {sources['tiny'] / 'classifier'}"))
    fasta = write_mixed_input(tmp_path / "mixed.fa")
    mirror = mirror_of(sources)
    with MirrorServer(mirror) as url:
        env = {**child_env(), "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(torch_home),
               "VNP_MODELS": ""}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "vnp.predict", str(fasta), "-o", str(tmp_path / "hub"), f"pack={pack}", *COMMON],
                              capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    gets = [path for method, path, _ in mirror.requests if method == "GET" and "/resolve/" in path]
    assert sorted(gets) == sorted(f"/{REPO}/resolve/{COMMIT}/{name}" for name in sources["dnabert"])
    assert predict_main([str(fasta), "-o", str(tmp_path / "direct"), f"pack={sources['tiny'] / 'pack.yaml'}",
                         *COMMON]) == 0  # the reference, in this process
    assert tables(tmp_path / "hub") == tables(tmp_path / "direct")
