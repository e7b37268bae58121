"""What every study shares: seeding, stepping any optimizer, summary statistics."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from lossopt_cuda import AdaLo, AdaLoss, AdamL

#: The optimizers of this package read the loss; torch's and the baselines do not.
LOSS_DRIVEN = (AdaLo, AdamL, AdaLoss)


def seed_all(seed: int) -> torch.Generator:
    """Seed torch's global generator (model init) and return a private generator
    for data order, so that two optimizers run with the same seed see the same
    mini-batches."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    """One step; the loss-driven optimizers get the loss of this mini-batch,
    evaluated before the step, through ``step(loss=...)`` (the documented API)."""
    if isinstance(opt, LOSS_DRIVEN):
        opt.step(loss=loss.detach())
    else:
        opt.step()


@contextmanager
def quiet_skip_warnings() -> Iterator[None]:
    """A diverging run produces NaN losses, which the loss-driven optimizers skip
    with a RuntimeWarning. The studies detect divergence themselves and stop, so
    the warning would only clutter the progress bars."""
    with warnings.catch_warnings():
        # Matched on the message: the warning is attributed to the caller's frame
        # (torch's no_grad wrapper), so a module filter would not catch it.
        warnings.filterwarnings("ignore", message=r".*step\(s\) skipped", category=RuntimeWarning)
        yield


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, 0 for a single value) of the
    finite values; NaN, NaN when there are none."""
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def fmt_pm(mean: float, std: float, digits: int = 2) -> str:
    """``mean±std`` as in the seed's tables; ``N/A`` where nothing finite was measured."""
    if not math.isfinite(mean):
        return "N/A"
    return f"{mean:.{digits}f}±{std:.{digits}f}"


def fmt_sci(x: Optional[float], digits: int = 2) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}e}"


def finite_or_none(x: Optional[float]) -> Optional[float]:
    """A float for ``results.json``; None (JSON null) where nothing finite was measured."""
    return float(x) if x is not None and math.isfinite(x) else None
