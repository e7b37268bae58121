"""Curves of each task: training loss against steps and against seconds (seed 0)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .study import TaskResult  # noqa: E402


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def curves(result: TaskResult, out: Path) -> str:
    """Write ``<task>.png``; returns its file name."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    shown = []
    for name, records in result.runs.items():
        curve = np.array([(s, t, loss) for s, t, loss in records[0].curve if np.isfinite(loss)])
        if len(curve) == 0:
            continue
        window = max(1, len(curve) // 30)
        loss = _smooth(curve[:, 2], window)
        by_step.plot(curve[window - 1:, 0] if window > 1 else curve[:, 0], loss, label=name)
        by_time.plot(curve[window - 1:, 1] if window > 1 else curve[:, 1], loss, label=name)
        shown.append(loss)
    if shown:  # a diverging run's spike would flatten every other curve
        values = np.concatenate(shown)
        low, high = np.quantile(values, [0.01, 0.97])
        pad = 0.08 * (high - low or 1.0)
        for ax in (by_step, by_time):
            ax.set_ylim(low - pad, high + pad)
    for ax, xlabel in ((by_step, "iteration"), (by_time, "seconds")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss (moving average; y clipped)")
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=7)
    fig.suptitle(result.task.title, fontsize=10)
    fig.tight_layout()
    name = f"{result.task.name}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
