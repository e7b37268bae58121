"""Study 1: AdamL against Adam, EAdam and AdaBelief on two toy functions.

Seed 001 says AdamL converges faster than these three on the Three-Hump Camel
(from x0 = (0, -4), "to verify global vs local optimum convergence") and on
Rosenbrock. The seeds give no learning rates, epsilons or iteration counts, so
every optimizer gets the same (lr, eps) grid and the same number of iterations,
and the report shows every grid point as well as each optimizer's best.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.optim import Optimizer
from tqdm import tqdm

from lossopt_cuda import AdamL

from .baselines import EAdam, adabelief_source, make_adabelief
from .budget import Budget
from .common import optimizer_step, quiet_skip_warnings
from .problems import TOY_PROBLEMS, ToyProblem

#: A run has converged once the objective stays within this of the minimum.
TOY_TOL = 1e-6
#: The package defaults (betas (0.9, 0.999), eps 1e-8; AdamL gamma=1, phi=1) except
#: lr and eps, which the grid of the budget sets.
DEFAULT_EPS = 1e-8

OptFactory = Callable[[List[torch.Tensor], float, float, float], Optimizer]


def _adaml(params: List[torch.Tensor], lr: float, eps: float, f_star: float) -> Optimizer:
    return AdamL(params, lr=lr, eps=eps, min_loss=f_star)


def _adam(params: List[torch.Tensor], lr: float, eps: float, f_star: float) -> Optimizer:
    return torch.optim.Adam(params, lr=lr, eps=eps)


def _eadam(params: List[torch.Tensor], lr: float, eps: float, f_star: float) -> Optimizer:
    return EAdam(params, lr=lr, eps=eps)


def _adabelief(params: List[torch.Tensor], lr: float, eps: float, f_star: float) -> Optimizer:
    return make_adabelief(params, lr=lr, eps=eps)


TOY_OPTIMIZERS: Dict[str, OptFactory] = {
    "AdamL": _adaml, "Adam": _adam, "EAdam": _eadam, "AdaBelief": _adabelief,
}


def implementations() -> Dict[str, str]:
    """Which implementation each optimizer of this study is, for the report."""
    return {
        "AdamL": "`lossopt_cuda.AdamL` (this package; default foreach/fused choice), "
                 "gamma=1, phi=1, `min_loss` = the function's minimum 0; eps weighs the non-adaptive term eps*l",
        "Adam": "`torch.optim.Adam` (torch); eps is added to sqrt(v_hat)",
        "EAdam": "written here from Yuan & Gao 2020 (no package on PyPI): "
                 "v = beta2 v + (1-beta2) g^2 + eps, bias-corrected, step lr m_hat/(sqrt(v_hat)+eps)",
        "AdaBelief": adabelief_source(),
    }


@dataclass
class ToyRun:
    problem: str
    optimizer: str
    lr: float
    eps: float
    curve: np.ndarray  # objective before each step, plus the final value (iters + 1)
    path: np.ndarray  # (iters + 1, 2) iterates, for the trajectory plot
    diverged: bool

    @property
    def final(self) -> float:
        return float(self.curve[-1])

    @property
    def final_x(self) -> Tuple[float, float]:
        return float(self.path[-1, 0]), float(self.path[-1, 1])

    def iters_to_tol(self, f_star: float = 0.0) -> Optional[int]:
        """Iterations after which the objective stays within TOY_TOL of the
        minimum to the end of the run (None if it does not end there)."""
        above = np.flatnonzero(~(self.curve - f_star <= TOY_TOL))
        if above.size == 0:
            return 0
        last = int(above[-1])
        return None if last == self.curve.size - 1 else last + 1


def run_toy(problem: ToyProblem, name: str, lr: float, eps: float, iters: int) -> ToyRun:
    """Minimise one toy function with one optimizer from the problem's x0 (float64)."""
    torch.manual_seed(0)  # nothing is random here; seeded anyway so that runs are reproducible
    x = torch.tensor(problem.x0, dtype=torch.float64, requires_grad=True)
    opt = TOY_OPTIMIZERS[name]([x], lr, eps, problem.minimum)
    curve = np.full(iters + 1, np.nan)
    path = np.full((iters + 1, 2), np.nan)
    diverged = False
    with quiet_skip_warnings():
        for k in range(iters):
            opt.zero_grad(set_to_none=True)
            f = problem.fn(x)
            curve[k], path[k] = f.item(), x.detach().numpy()
            if not np.isfinite(curve[k]):
                diverged = True
                break
            f.backward()
            optimizer_step(opt, f)
        else:
            with torch.no_grad():
                curve[iters], path[iters] = problem.fn(x).item(), x.detach().numpy()
            diverged = not np.isfinite(curve[iters])
    if diverged:  # keep the arrays' length; the report says "diverged"
        curve[np.isnan(curve)] = np.inf
    return ToyRun(problem.name, name, lr, eps, curve, path, diverged)


@dataclass
class ToyStudy:
    runs: List[ToyRun] = field(default_factory=list)
    iters: int = 0
    lrs: Tuple[float, ...] = ()
    eps: Tuple[float, ...] = ()

    def select(self, problem: str, optimizer: Optional[str] = None, eps: Optional[float] = None) -> List[ToyRun]:
        return [
            r for r in self.runs
            if r.problem == problem and optimizer in (None, r.optimizer) and eps in (None, r.eps)
        ]

    def best(self, problem: str, optimizer: str, eps: Optional[float] = None) -> ToyRun:
        """The optimizer's best grid point (optionally at one eps): the fewest
        iterations to converge; among runs that never do, the lowest final value."""
        return min(self.select(problem, optimizer, eps), key=speed_key)


def speed_key(r: ToyRun) -> Tuple[float, float]:
    """Sort key, fastest first: iterations to converge, then the final objective."""
    hit = r.iters_to_tol()
    final = r.final if np.isfinite(r.final) else np.inf
    return (hit if hit is not None else np.inf, final)


def run_toy_study(budget: Budget, progress: bool = True) -> ToyStudy:
    """Every (problem, optimizer, lr, eps) of the budget."""
    study = ToyStudy(iters=budget.toy_iters, lrs=budget.toy_lrs, eps=budget.toy_eps)
    jobs = [
        (p, n, lr, eps)
        for p in TOY_PROBLEMS for n in TOY_OPTIMIZERS for eps in budget.toy_eps for lr in budget.toy_lrs
    ]
    for problem, name, lr, eps in tqdm(jobs, desc="1/3 AdamL toy functions", disable=not progress):
        study.runs.append(run_toy(problem, name, lr, eps, budget.toy_iters))
    return study
