"""Shared fixtures: the reference data beside the checkout (skipped cleanly when absent), one tiny
model pack built once per session (read-only: a test that changes a pack copies it first), a private
digest cache, a guard against a test blocking forever on a read."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


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
    """The tiny randomly initialised pack, built once for the whole session; tests only read it."""
    from vnp.models.pack import build_tiny_pack

    folder = tmp_path_factory.mktemp("pack") / "tiny"
    build_tiny_pack(folder)
    return folder


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
