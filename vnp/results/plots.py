"""matplotlib for vnp's figures (report, learning curve, ROC): the Agg backend, imported only when a
figure is drawn, so commands that draw none never pay for it."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 100) -> None:
    """Write `fig` as a PNG atomically (a temporary name, then a rename) and close it."""
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)
