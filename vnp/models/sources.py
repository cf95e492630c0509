"""Where the published models come from, and whether this process may use the network for them.

The sources of the built-in packs (the Hugging Face hub repository of DNABERT-S, fair-esm's URL of
ESM2-3B, the VirNucPro authors' classifiers with their published git blob ids) are named here once;
`vnp models fetch` downloads them, and `vnp predict pack=500` resolves them at run time when no
fetched pack is found.

The network policy is one per process, set from the configuration by each command that loads models
(`offline`, `models.timeout_s`): offline (also when `HF_HUB_OFFLINE=1`), nothing opens a connection
and a model not on disk is one line naming it and the `vnp models fetch` command that gets it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HF_ENDPOINT = "https://huggingface.co"
ESM_MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"  # fair-esm's own URL
CLASSIFIER_URL = "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/main/{name}_model.pth"
# The published tree of Li-Jing-1997/VirNucPro: git blob id = sha1(b"blob <size>\0" + bytes).
CLASSIFIER_BLOBS = {"300": "a0b5b85e7c1e44f00cde146d091beb82b2c8e855",
                    "500": "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d"}
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ModelNetwork:
    offline: bool = False
    """never open a connection: models come from disk or not at all"""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """seconds a server may stay silent before a request fails"""


_policy = ModelNetwork()


def env_offline() -> bool:
    """`HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to a true value, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def configure(offline: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> ModelNetwork:
    """Set this process's policy (`offline` or HF_HUB_OFFLINE makes it offline)."""
    global _policy
    _policy = ModelNetwork(offline=offline or env_offline(), timeout_s=timeout_s)
    return _policy


def network() -> ModelNetwork:
    """This process's policy; HF_HUB_OFFLINE counts even before `configure` is called."""
    return ModelNetwork(True, _policy.timeout_s) if env_offline() else _policy


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")


def models_dir() -> str:
    """The shared folder of fetched packs (`VNP_MODELS`), or ''."""
    return os.environ.get("VNP_MODELS", "")


def fetch_hint(pack_name: str | None) -> str:
    """The command that gets a pack's models onto a machine without internet."""
    name = pack_name if pack_name in CLASSIFIER_BLOBS else "500"
    return (f"get it with `vnp models fetch {name} -o DIR` on a machine with internet, copy DIR here and "
            f"use pack=DIR/pack.yaml (or put it in $VNP_MODELS/{name})")
