"""Shared fixtures: the reference data beside the checkout (skipped cleanly when absent), one tiny
model pack built once per session (read-only: a test that changes a pack copies it first), a private
digest cache, a guard against a test blocking forever on a read."""

from __future__ import annotations

import contextlib
import io
import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_configure(config):
    """Under pytest-xdist (`make test`: several workers on few cores) each worker computes on one
    thread: the workers, not torch's threads, use the cores. Serial runs keep torch's default."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def vanilla() -> Path:
    """The original VirNucPro's inputs and outputs (../shared/reference/virnucpro-vanilla)."""
    path = SHARED / "reference" / "virnucpro-vanilla"
    if not path.is_dir():
        pytest.skip("../shared/reference/virnucpro-vanilla is not available")
    return path


@pytest.fixture
def dnabert_reference() -> Path:
    """The real DNABERT-S config and tokenizer (../shared/reference/dnabert-s)."""
    path = SHARED / "reference" / "dnabert-s"
    if not path.is_dir():
        pytest.skip("../shared/reference/dnabert-s is not available")
    return path


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory) -> Path:
    """The tiny randomly initialised pack, built once per test run (`built_once`: shared by the
    xdist workers); tests only read it."""
    from tests.helpers import built_once
    from vnp.models.pack import build_tiny_pack

    return built_once(tmp_path_factory, "pack", lambda folder: build_tiny_pack(folder / "tiny")) / "tiny"


@pytest.fixture
def private_digest_cache(tmp_path, monkeypatch):
    """Model digests cached in this test's own folder (XDG_CACHE_HOME), not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """`vnp demo` run once (its OUT, and what it printed): test_demo checks the run, test_report the
    report it wrote. Read-only: a test that reruns the demo copies it first (the trained head lies
    beside OUT, in OUT_model). Under pytest-xdist the workers share one run: the first to need it
    runs it under a lock in the run's common temporary folder, the others wait and read it."""
    from tests.helpers import built_once
    from vnp.demo import main as demo_main

    def build(folder: Path) -> None:
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            assert demo_main([str(folder / "demo")]) == 0
        (folder / "printed.txt").write_text(text.getvalue())

    folder = built_once(tmp_path_factory, "demo", build)
    return folder / "demo", (folder / "printed.txt").read_text()
