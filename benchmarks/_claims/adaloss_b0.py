"""Study 2: AdaLoss's robustness to the initial ``b0``, in the shape of seed 002's table.

Four step-size rules, each ``eta / b_t`` with ``b`` starting at ``b0``:

* AdaLoss       ``b^2 += |L|`` (this package's ``AdaLoss``, alpha=1, c=0);
* AdaGrad-Norm  ``b^2 += ||g||^2`` (:class:`~.baselines.AdaGradNorm`);
* SGD_Constant  ``b = b0`` (``torch.optim.SGD``, lr = eta / b0);
* SGD_DecaySqrt ``b = sqrt(b0^2 + t)`` (``torch.optim.SGD``, lr set every step).

on two problems: realisable least squares (where the AdaLoss paper proves linear
convergence) and the digits MLP (a small stand-in for the seed's CIFAR-100
fine-tuning). ``b0`` in {0.01, 0.1, 1, 10, 100}, several seeds each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from tqdm import tqdm

from lossopt_cuda import AdaLoss

from .baselines import AdaGradNorm, sqrt_decay_lr
from .budget import Budget
from .common import optimizer_step, quiet_skip_warnings, seed_all
from .problems import (
    DIGITS_BATCH, LINREG_BATCH, LINREG_D, LINREG_N, Digits, evaluate, linreg_loss,
    load_digits_split, make_linreg, make_mlp,
)

B0S = (0.01, 0.1, 1.0, 10.0, 100.0)
METHODS = ("AdaLoss", "AdaGrad-Norm", "SGD_Constant", "SGD_DecaySqrt")
#: eta per problem. The seed's eta (0.1) is for fine-tuning a pretrained model,
#: where b0 = 10 (a constant step of 0.01) is SGD_Constant's best cell. These
#: models train from scratch and take larger steps: with eta = 1 the constant
#: step eta/b0 runs from 100 down to 0.01 and again has its best cell near
#: b0 = 10 (a step of 0.1), so the b0 axis means what it means in the seed.
ETA = {"linreg": 1.0, "digits": 1.0}
#: Relative losses below this count as solved (float64 residuals floor near 1e-32;
#: differences down there are rounding, not optimisation).
LINREG_FLOOR = 1e-20
#: The speed measure on least squares: steps until the loss is this fraction of its start.
LINREG_TARGET = 1e-10

Schedule = Optional[Callable[[int], None]]


def implementations() -> Dict[str, str]:
    return {
        "AdaLoss": "`lossopt_cuda.AdaLoss` (this package; default foreach/fused choice), alpha=1, c=0, no momentum",
        "AdaGrad-Norm": "written here (Ward et al. 2019): one scalar b per group, b^2 += ||g||^2, step eta/b "
                        "(the official AdaLoss code uses a per-row variant whose accumulator starts at b0^4)",
        "SGD_Constant": "`torch.optim.SGD`, lr = eta/b0",
        "SGD_DecaySqrt": "`torch.optim.SGD`, lr = eta/sqrt(b0^2 + t) set before step t (official AdaLoss code's schedule)",
    }


def make_method(method: str, params: List[torch.Tensor], eta: float, b0: float) -> Tuple[Optimizer, Schedule]:
    """The optimizer of ``method`` and, for SGD_DecaySqrt, the per-step lr setter."""
    if method == "AdaLoss":
        return AdaLoss(params, lr=eta, b0=b0, alpha=1.0, c=0.0), None
    if method == "AdaGrad-Norm":
        return AdaGradNorm(params, lr=eta, b0=b0), None
    if method == "SGD_Constant":
        return torch.optim.SGD(params, lr=eta / b0), None
    if method == "SGD_DecaySqrt":
        opt = torch.optim.SGD(params, lr=eta / b0)

        def schedule(t: int) -> None:
            for group in opt.param_groups:
                group["lr"] = sqrt_decay_lr(eta, b0, t)

        return opt, schedule
    raise ValueError(f"unknown method {method!r}")


@dataclass
class B0Run:
    problem: str
    method: str
    b0: float
    seed: int
    score: float  # linreg: log10(final / initial full loss), clipped at the floor; digits: test accuracy %
    diverged: bool
    curve: Optional[np.ndarray] = None  # linreg only: full loss / initial, per step

    @property
    def steps_to_target(self) -> Optional[int]:
        """Least squares: first step with loss <= LINREG_TARGET x initial (None if never)."""
        if self.curve is None or self.diverged:
            return None
        hits = np.flatnonzero(self.curve <= LINREG_TARGET)
        return int(hits[0]) if hits.size else None


def run_linreg(method: str, b0: float, seed: int, steps: int) -> B0Run:
    """Mini-batch SGD-type training of w (from 0) on realisable least squares."""
    gen = seed_all(seed)
    data = make_linreg(gen)
    w = torch.zeros(LINREG_D, dtype=torch.float64, requires_grad=True)
    opt, schedule = make_method(method, [w], ETA["linreg"], b0)
    with torch.no_grad():
        loss0 = linreg_loss(w, data.x, data.y).item()
    curve = np.full(steps + 1, np.inf)
    curve[0] = 1.0
    diverged = False
    with quiet_skip_warnings():
        for t in range(1, steps + 1):
            idx = torch.randint(LINREG_N, (LINREG_BATCH,), generator=gen)
            loss = linreg_loss(w, data.x[idx], data.y[idx])
            if not math.isfinite(loss.item()):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if schedule is not None:
                schedule(t)
            optimizer_step(opt, loss)
            with torch.no_grad():
                curve[t] = linreg_loss(w, data.x, data.y).item() / loss0
            if not math.isfinite(curve[t]):
                diverged = True
                break
    score = math.log10(max(curve[-1], LINREG_FLOOR)) if not diverged else float("nan")
    return B0Run("linreg", method, b0, seed, score, diverged, curve)


def run_digits(method: str, b0: float, seed: int, epochs: int, data: Digits) -> B0Run:
    """Train the digits MLP; the score is the test accuracy in percent."""
    gen = seed_all(seed)
    model = make_mlp()
    opt, schedule = make_method(method, list(model.parameters()), ETA["digits"], b0)
    n = data.x_train.shape[0]
    t = 0
    diverged = False
    with quiet_skip_warnings():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, DIGITS_BATCH):
                idx = perm[i : i + DIGITS_BATCH]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                if not math.isfinite(loss.item()):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t += 1
                if schedule is not None:
                    schedule(t)
                optimizer_step(opt, loss)
            if diverged:
                break
    _, acc = evaluate(model, data.x_test, data.y_test)
    return B0Run("digits", method, b0, seed, float("nan") if diverged else 100 * acc, diverged)


@dataclass
class B0Study:
    runs: List[B0Run] = field(default_factory=list)
    seeds: Tuple[int, ...] = ()
    linreg_steps: int = 0
    digits_epochs: int = 0

    def cell(self, problem: str, method: str, b0: float) -> List[B0Run]:
        return [r for r in self.runs if (r.problem, r.method, r.b0) == (problem, method, b0)]


def run_b0_study(budget: Budget, progress: bool = True) -> B0Study:
    study = B0Study(seeds=budget.b0_seeds, linreg_steps=budget.linreg_steps,
                    digits_epochs=budget.b0_digits_epochs)
    digits = load_digits_split()
    jobs = [(p, m, b0, s) for p in ("linreg", "digits") for m in METHODS for b0 in B0S for s in budget.b0_seeds]
    for problem, method, b0, seed in tqdm(jobs, desc="2/3 AdaLoss vs b0", disable=not progress):
        if problem == "linreg":
            study.runs.append(run_linreg(method, b0, seed, budget.linreg_steps))
        else:
            study.runs.append(run_digits(method, b0, seed, budget.b0_digits_epochs, digits))
    return study


def linear_rate(curve: np.ndarray) -> Optional[Tuple[float, float]]:
    """Least-squares line through log10(relative loss) against the step, fitted
    after the transient (from the first step after the peak where the loss is
    <= 0.1 of its start) until it reaches the float64 floor. Returns (decades per
    100 steps, R^2), or None with fewer than 20 points to fit."""
    finite = np.isfinite(curve)
    if not finite.all():
        return None
    peak = int(np.argmax(curve))
    after = np.flatnonzero(curve[peak:] <= 0.1)
    if after.size == 0:
        return None
    start = peak + int(after[0])
    floor_hits = np.flatnonzero(curve[start:] <= LINREG_FLOOR)
    end = start + int(floor_hits[0]) if floor_hits.size else curve.size
    if end - start < 20:
        return None
    t = np.arange(start, end, dtype=np.float64)
    y = np.log10(curve[start:end])
    slope, intercept = np.polyfit(t, y, 1)
    resid = y - (slope * t + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return 100.0 * float(slope), r2
