"""Study 1: AdamL against Adam, EAdam and AdaBelief on two toy functions.

Seed 001 says AdamL converges faster than these three on the Three-Hump Camel
(from x0 = (0, -4), "to verify global vs local optimum convergence") and on
Rosenbrock. The seeds give no learning rates, epsilons or iteration counts, so
every optimizer gets the same (lr, eps) grid and the same number of iterations,
and the report shows every grid point as well as each optimizer's best.

This module owns the study: its runs, its numbers in ``results.json``, its
verdicts, tables and report section, and its two figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.optim import Optimizer
from tqdm import tqdm

from lossopt_cuda import AdamL

from .baselines import EAdam, adabelief_source, make_adabelief
from .budget import Budget
from .common import finite_or_none, fmt_sci, optimizer_step, quiet_skip_warnings
from .figures import save_figure, plt
from .problems import TOY_PROBLEMS, ToyProblem, thc_basin, three_hump_camel
from .verdict import HELD, NOT_HELD, PARTLY, UNDECIDED, Verdict, table

#: A run has converged once the objective stays within this of the minimum.
TOY_TOL = 1e-6
#: On the toy functions "faster" means at least this fraction fewer iterations.
TOY_MARGIN = 0.10
#: The package defaults (betas (0.9, 0.999), eps 1e-8; AdamL gamma=1, phi=1) except
#: lr and eps, which the grid of the budget sets.
DEFAULT_EPS = 1e-8
#: Objective values are drawn down to this (a log axis cannot show 0).
PLOT_FLOOR = 1e-32
#: Line styles per optimizer, so that identical curves (Adam and EAdam often are) stay visible.
STYLES = {"AdamL": "-", "Adam": "--", "EAdam": ":", "AdaBelief": "-."}


# =========================================================================== runs


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


# =========================================================================== numbers (results.json)


def numbers(study: ToyStudy) -> List[Dict[str, Any]]:
    """The measured values behind the study's tables, JSON-ready."""
    return [
        {"problem": r.problem, "optimizer": r.optimizer, "lr": r.lr, "eps": r.eps,
         "final": finite_or_none(r.final), "iters_to_tol": r.iters_to_tol(), "final_x": list(r.final_x),
         "diverged": r.diverged}
        for r in study.runs
    ]


# =========================================================================== report section


def _iters(r: ToyRun) -> str:
    hit = r.iters_to_tol()
    return str(hit) if hit is not None else "never"


def _count_phrase(k: int, n: int) -> str:
    return f"{k} of {n}"


def _toy_best_table(study: ToyStudy, problem: str) -> str:
    rows = []
    is_thc = problem == TOY_PROBLEMS[0].name
    for name in TOY_OPTIMIZERS:
        for label, eps in (("best of grid", None), ("best at eps=1e-8", 1e-8)):
            if eps is not None and eps not in study.eps:
                continue
            r = study.best(problem, name, eps)
            row = [name, label, f"{r.lr:g}", f"{r.eps:g}", _iters(r), fmt_sci(r.final)]
            if is_thc:
                row.append(thc_basin(r.final_x, r.final) if not r.diverged else "diverged")
            rows.append(row)
    header = ["optimizer", "selection", "lr", "eps", f"iterations until f - f* stays <= {TOY_TOL:g}", "final f - f*"]
    if is_thc:
        header.append("ends at")
    return table(header, rows)


def _toy_grid_table(study: ToyStudy, problem: str) -> str:
    """Every grid point: iterations to converge (or the final value), and for the
    Three-Hump Camel the minimum reached (G global, L local)."""
    is_thc = problem == TOY_PROBLEMS[0].name
    rows = []
    for eps in study.eps:
        for lr in study.lrs:
            row = [f"{lr:g}", f"{eps:g}"]
            for name in TOY_OPTIMIZERS:
                (r,) = [x for x in study.select(problem, name, eps) if x.lr == lr]
                text = "diverged" if r.diverged else (
                    f"{r.iters_to_tol()} it" if r.iters_to_tol() is not None else f"f={fmt_sci(r.final, 1)}"
                )
                if is_thc and not r.diverged:
                    basin = thc_basin(r.final_x, r.final)
                    text += " G" if basin.startswith("global") else " L" if basin.startswith("local") else ""
                row.append(text)
            rows.append(row)
    return table(["lr", "eps", *TOY_OPTIMIZERS], rows)


def _race(mine: ToyRun, other: ToyRun) -> str:
    """'faster', 'tied' or 'slower': AdamL against one other optimizer. Faster means
    converging in at least TOY_MARGIN fewer iterations (or converging when the other
    does not); runs are deterministic, so the margin guards against grid luck, not noise."""
    a, b = mine.iters_to_tol(), other.iters_to_tol()
    if a is None and b is None:
        return "tied"
    if b is None:
        return "faster"
    if a is None:
        return "slower"
    if a <= (1 - TOY_MARGIN) * b:
        return "faster"
    if b <= (1 - TOY_MARGIN) * a:
        return "slower"
    return "tied"


def toy_speed_verdict(study: ToyStudy, problem: str, eps: Optional[float] = None) -> Verdict:
    """AdamL faster than each of the others, each at its own best grid point."""
    best = {name: study.best(problem, name, eps) for name in TOY_OPTIMIZERS}
    mine = best["AdamL"]
    races = {n: _race(mine, r) for n, r in best.items() if n != "AdamL"}
    scope = "over the whole (lr, eps) grid" if eps is None else f"at eps={eps:g}, the default of every package, lr searched"
    desc = "; ".join(f"{n} {_iters(r)} (lr={r.lr:g}, eps={r.eps:g})" for n, r in best.items())
    faster = [n for n, w in races.items() if w == "faster"]
    tied = [n for n, w in races.items() if w == "tied"]
    slower = [n for n, w in races.items() if w == "slower"]
    if mine.iters_to_tol() is None and all(r.iters_to_tol() is None for r in best.values()):
        outcome = UNDECIDED
        lead = f"No optimizer converged to {TOY_TOL:g} within {study.iters} iterations"
    else:
        outcome = HELD if len(faster) == len(races) else PARTLY if faster else NOT_HELD
        bits = []
        for word, names in (("faster than", faster), ("tied with (within the margin)", tied), ("slower than", slower)):
            if names:
                bits.append(f"{word} {', '.join(names)}")
        lead = "AdamL was " + "; ".join(bits)
    return Verdict(
        f"AdamL converges faster than Adam, EAdam and AdaBelief on {problem} ({scope})",
        outcome,
        f"{lead}. Iterations until f - f* stays <= {TOY_TOL:g}, each at its best grid point: {desc}. "
        f"(Faster = at least {100 * TOY_MARGIN:.0f} % fewer iterations.)",
    )


def toy_grid_wins(study: ToyStudy, problem: str) -> str:
    """At how many grid points AdamL was (strictly) the fastest of the four."""
    points = [(lr, eps) for eps in study.eps for lr in study.lrs]
    wins = converged = 0
    for lr, eps in points:
        runs = {r.optimizer: r for r in study.select(problem, eps=eps) if r.lr == lr}
        mine = speed_key(runs["AdamL"])
        converged += runs["AdamL"].iters_to_tol() is not None
        if mine[0] < math.inf and all(mine < speed_key(r) for n, r in runs.items() if n != "AdamL"):
            wins += 1
    return (
        f"At the same (lr, eps), AdamL was strictly the fastest of the four at "
        f"{_count_phrase(wins, len(points))} grid points, and converged at all at {_count_phrase(converged, len(points))}."
    )


def thc_basin_verdict(study: ToyStudy) -> Verdict:
    """From (0, -4): how often each optimizer ends at the global minimum."""
    problem = TOY_PROBLEMS[0].name
    counts: Dict[str, int] = {}
    total = len(study.lrs) * len(study.eps)
    for name in TOY_OPTIMIZERS:
        counts[name] = sum(
            thc_basin(r.final_x, r.final).startswith("global")
            for r in study.select(problem, name) if not r.diverged
        )
    others = max(c for n, c in counts.items() if n != "AdamL")
    if counts["AdamL"] > others:
        outcome = HELD
    elif counts["AdamL"] == others:
        outcome = UNDECIDED
    else:
        outcome = NOT_HELD
    desc = ", ".join(f"{n} {_count_phrase(c, total)}" for n, c in counts.items())
    return Verdict(
        "From x0 = (0, -4) on the Three-Hump Camel, AdamL reaches the global rather than a local minimum",
        outcome,
        f"Grid points ending at the global minimum (0, 0): {desc}. "
        + ("AdamL did so more often than each of the others."
           if outcome == HELD else
           "AdamL did so as often as the best of the others." if outcome == UNDECIDED else
           "At least one of the others did so more often than AdamL."),
    )


def section_toys(study: ToyStudy) -> Tuple[str, List[Verdict]]:
    verdicts: List[Verdict] = []
    parts = [
        "## 1. AdamL on the Three-Hump Camel and Rosenbrock functions",
        "",
        "**Seed claim** (001, 003): AdamL converges faster than Adam, EAdam and AdaBelief on the "
        "Three-Hump Camel function, started at x0 = (0, -4) \"to verify global vs local optimum "
        "convergence\", and on Rosenbrock. The seeds give no learning rates, epsilons, gamma/phi or "
        "iteration counts, so:",
        "",
        f"* every optimizer runs {study.iters} iterations of full-gradient steps in float64 at every point "
        f"of the same grid lr in {{{', '.join(f'{x:g}' for x in study.lrs)}}} x eps in "
        f"{{{', '.join(f'{x:g}' for x in study.eps)}}} (eps means something different in each rule, see "
        "Implementations, which is why it is searched for all four); betas (0.9, 0.999); AdamL gamma=1, phi=1 "
        "(package defaults) and `min_loss` = 0, the known minimum of both functions;",
        "* " + "; ".join(f"{p.name}: {p.why_x0}" for p in TOY_PROBLEMS) + ";",
        f"* speed = iterations until f - f* stays <= {TOY_TOL:g} to the end of the run; an optimizer's "
        "\"best\" grid point is its fastest (or, if it never converges, its lowest final value); AdamL counts as "
        f"faster than another optimizer when it needs at least {100 * TOY_MARGIN:.0f} % fewer iterations.",
        "",
    ]
    for problem in TOY_PROBLEMS:
        parts += [f"### {problem.name}", "", _toy_best_table(study, problem.name), "", "All grid points "
                  "(iterations to converge, or the final f - f* when it never did"
                  + ("; G = ended at the global minimum, L = at a local one" if problem is TOY_PROBLEMS[0] else "")
                  + "):", "", _toy_grid_table(study, problem.name), ""]
        for eps in (None, 1e-8):
            if eps is not None and eps not in study.eps:
                continue
            v = toy_speed_verdict(study, problem.name, eps)
            verdicts.append(v)
            parts += [f"* **{v.outcome}** — {v.claim}. {v.evidence}"]
        parts += [f"* {toy_grid_wins(study, problem.name)}", ""]
    v = thc_basin_verdict(study)
    verdicts.append(v)
    parts += [f"* **{v.outcome}** — {v.claim}. {v.evidence}", "",
              "![objective against iterations](toy_objective.png)", "",
              "![Three-Hump Camel paths](toy_three_hump_paths.png)", ""]
    return "\n".join(parts), verdicts


# =========================================================================== figures


def plot_toy_curves(study: ToyStudy, out: Path) -> str:
    """Objective against iterations (log scale), each optimizer at its best grid point."""
    fig, axes = plt.subplots(1, len(TOY_PROBLEMS), figsize=(6 * len(TOY_PROBLEMS), 4.2))
    for ax, problem in zip(np.atleast_1d(axes), TOY_PROBLEMS):
        for name in TOY_OPTIMIZERS:
            run = study.best(problem.name, name)
            curve = np.clip(run.curve - problem.minimum, PLOT_FLOOR, None)
            ax.plot(curve, STYLES[name], label=f"{name} (lr={run.lr:g}, eps={run.eps:g})", lw=1.4)
        ax.axhline(TOY_TOL, color="grey", ls=":", lw=1, label=f"tolerance {TOY_TOL:g}")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("f(x) - f*")
        ax.set_title(f"{problem.name}, x0 = {problem.x0}; best of the (lr, eps) grid")
        ax.legend(fontsize=8)
    return save_figure(fig, out, "toy_objective.png")


def plot_thc_paths(study: ToyStudy, out: Path) -> str:
    """Three-Hump Camel contours with every optimizer's path at its best grid point
    (which minimum a run ends in is the claim's "global vs local")."""
    problem = TOY_PROBLEMS[0]
    xs, ys = np.meshgrid(np.linspace(-2.5, 2.5, 300), np.linspace(-4.5, 2.0, 300))
    zs = three_hump_camel(torch.tensor(np.stack([xs, ys]))).numpy()
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.contour(xs, ys, np.log10(zs + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    for name in TOY_OPTIMIZERS:
        run = study.best(problem.name, name)
        path = run.path[np.isfinite(run.path).all(axis=1)]
        ax.plot(path[:, 0], path[:, 1], STYLES[name], lw=1.2, label=f"{name} (lr={run.lr:g}, eps={run.eps:g})")
    ax.plot(*problem.x0, "ko", label="x0")
    ax.plot(0, 0, "k*", ms=12, label="global minimum")
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-4.5, 2.0)
    ax.set_title("Three-Hump Camel: paths at each optimizer's best grid point")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, out, "toy_three_hump_paths.png")
