"""matplotlib for vnp's figures (report, learning curve, ROC): the Agg backend, imported only when a
figure is drawn, so commands that draw none never pay for it."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from vnp.support.atomic import AtomicFiles


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 100, files: AtomicFiles | None = None) -> None:
    """Write `fig` as a PNG atomically and close it; within `files` (replaced with the other files
    written there) when given, else on its own."""
    try:
        with AtomicFiles() if files is None else nullcontext(files) as target, target.open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)

