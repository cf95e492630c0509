"""The three models of VirNucPro: DNABERT-S (`dnabert`), ESM2 (`esm`), the MLP (`classifier`)."""

# The classifier's two classes, by softmax column: column 1 is P(virus), as published. Training
# labels, `vnp evaluate`'s truth and the classifier's width all read it from here.
CLASSES = ("others", "virus")

# Padded tokens per forward pass when not configured. On CPU a forward is bound by matrix products
# that already run near peak at ~2k rows, and bigger batches only spill activations out of cache
# (benchmarks/bench_embed.py: 2048 beats 16384 by 1.3x for DNABERT-S); on GPU bigger batches keep
# the device busy (not yet tuned on hardware).
TOKEN_BUDGETS = {
    "dnabert": {"cpu": 2048, "cuda": 16384},
    "esm": {"cpu": 2048, "cuda": 8192},
}


def token_budget(model: str, device_type: str, configured: int = 0) -> int:
    """The configured budget, or the default for this model on this kind of device."""
    if configured > 0:
        return configured
    return TOKEN_BUDGETS[model]["cuda" if device_type == "cuda" else "cpu"]


PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # name -> torch dtype


def resolve_precision(precision: str, device_type: str) -> str:
    """`auto` is bf16 on GPU and fp32 on CPU (for `vnp predict`, `vnp train` and `vnp embed`
    alike); any other name is itself."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" else "fp32"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision name (fp32, bf16, fp16)."""
    import torch

    return getattr(torch, PRECISIONS[precision])
