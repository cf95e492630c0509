"""Shared fixtures: the reference data beside the checkout (skipped cleanly when absent)."""

from __future__ import annotations

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
