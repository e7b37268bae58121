"""The objectives and data sets of the studies. Nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

ToyFn = Callable[[Tensor], Tensor]


def three_hump_camel(x: Tensor) -> Tensor:
    """2 x^2 - 1.05 x^4 + x^6 / 6 + x y + y^2: global minimum 0 at (0, 0), two
    local minima of value ~0.2986 at about (+-1.7476, -+0.8738)."""
    a, b = x[0], x[1]
    return 2 * a**2 - 1.05 * a**4 + a**6 / 6 + a * b + b**2


def rosenbrock(x: Tensor) -> Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2: minimum 0 at (1, 1), at the end of a narrow curved valley."""
    a, b = x[0], x[1]
    return (1 - a) ** 2 + 100 * (b - a**2) ** 2


@dataclass(frozen=True)
class ToyProblem:
    name: str
    fn: ToyFn
    x0: Tuple[float, float]
    minimum: float  # f*, which AdamL needs as ``min_loss``
    why_x0: str


TOY_PROBLEMS = (
    ToyProblem("Three-Hump Camel", three_hump_camel, (0.0, -4.0), 0.0,
               "x0 = (0, -4), as in the AdamL paper (seed 001)"),
    ToyProblem("Rosenbrock", rosenbrock, (-1.2, 1.0), 0.0,
               "x0 = (-1.2, 1), Rosenbrock's classical start (the seeds give none)"),
)

#: Local minima of the Three-Hump Camel (for saying which basin a run ended in).
THC_LOCAL_MINIMA = ((1.7476, -0.8738), (-1.7476, 0.8738))


def thc_basin(x: Tuple[float, float], f: float) -> str:
    """Which minimum of the Three-Hump Camel a final point is at (or near)."""
    if np.hypot(*x) < 0.05 and f < 1e-3:
        return "global (0, 0)"
    for lx, ly in THC_LOCAL_MINIMA:
        if np.hypot(x[0] - lx, x[1] - ly) < 0.05:
            return f"local ({lx:+.2f}, {ly:+.2f})"
    return "neither (still moving)"


# --------------------------------------------------------------------------- least squares


@dataclass(frozen=True)
class LinReg:
    """Realisable (noiseless) least squares: y = X w*, loss 0.5 * mean((X w - y)^2)."""

    x: Tensor
    y: Tensor
    w_star: Tensor


LINREG_N, LINREG_D, LINREG_BATCH = 512, 20, 32


def make_linreg(gen: torch.Generator, n: int = LINREG_N, d: int = LINREG_D) -> LinReg:
    """Gaussian design, w* ~ N(0, I/d) so that the initial loss (w = 0) is about 0.5.
    float64: the point is the rate down to small losses, which float32 would floor."""
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64) / d**0.5
    return LinReg(x=x, y=x @ w_star, w_star=w_star)


def linreg_loss(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return 0.5 * ((x @ w - y) ** 2).mean()


# --------------------------------------------------------------------------- digits


@dataclass(frozen=True)
class Digits:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_split() -> Digits:
    """scikit-learn's bundled digits (no download), the split of examples/train_digits.py:
    stratified 75/25 with random_state=0, standardised with the training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std == 0] = 1.0  # border pixels that are always 0
    return Digits(
        x_train=torch.from_numpy((x_tr - mean) / std), y_train=torch.from_numpy(y_tr),
        x_test=torch.from_numpy((x_te - mean) / std), y_test=torch.from_numpy(y_te),
    )


DIGITS_HIDDEN, DIGITS_BATCH = 128, 32


def make_mlp(hidden: int = DIGITS_HIDDEN) -> nn.Module:
    """The example's classifier: 64 -> hidden -> ReLU -> 10 (init from torch's global seed)."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> Tuple[float, float]:
    """Cross-entropy and accuracy on a whole split."""
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).double().mean().item()
    return loss, acc
