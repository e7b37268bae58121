"""What the studies' figures share: matplotlib on the file-only Agg backend, and
saving a figure into the output folder. Each study module draws its own figures;
each such function returns the file name it wrote (relative to the output folder)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
