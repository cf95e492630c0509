"""The three models of VirNucPro: DNABERT-S (`dnabert`), ESM2 (`esm`), the MLP (`classifier`).

Token budgets and the GPU work-unit size come from `vnp.models.memory` (2,048 tokens on the CPU;
on a GPU sized to its free memory by an activation model of each architecture)."""

# The classifier's two classes, by softmax column: column 1 is P(virus), as published. Training
# labels, `vnp evaluate`'s truth and the classifier's width all read it from here.
CLASSES = ("others", "virus")

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # name -> torch dtype


def resolve_precision(precision: str, device) -> str:
    """`precision=auto` (for `vnp predict`, `vnp train` and `vnp embed` alike): bf16 where the GPU
    computes it natively (compute capability 8.0 and later: A100, H100, L4, RTX 30xx...), fp16 on
    older GPUs (V100, T4: no native bf16, and fp16 tensor cores), fp32 on the CPU. `device`: a
    torch.device or a device type name. Any other precision is itself."""
    if precision != "auto":
        return precision
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision name (fp32, bf16, fp16)."""
    import torch

    return getattr(torch, PRECISIONS[precision])
