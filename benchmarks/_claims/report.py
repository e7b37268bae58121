"""``report.md``: tables and verdicts, every word of a verdict chosen by the numbers.

Nothing here states a conclusion that is not computed: each ``*_verdict``
function compares measured values and picks its wording from the comparison.
The rules of those comparisons (what "faster", "within noise" and "robust"
mean) are written into the report next to the tables.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .adalo_digits import (
    MODES, AdaLoStudy, DigitsRun, first_epoch_reaching, jitter, kappa_label, lr_against_constant_loss,
)
from .adalo_digits import implementations as adalo_impls
from .adaloss_b0 import (
    B0S, ETA, LINREG_FLOOR, LINREG_TARGET, METHODS, B0Run, B0Study, linear_rate,
)
from .adaloss_b0 import implementations as b0_impls
from .budget import Budget
from .common import fmt_pm, fmt_sci, mean_std
from .problems import (
    DIGITS_BATCH, DIGITS_HIDDEN, LINREG_BATCH, LINREG_D, LINREG_N, TOY_PROBLEMS, thc_basin,
)
from .toys import TOY_OPTIMIZERS, TOY_TOL, ToyRun, ToyStudy, speed_key
from .toys import implementations as toy_impls

HELD, NOT_HELD, PARTLY, UNDECIDED = "held", "did not hold", "partly held", "inconclusive"
#: On the toy functions "faster" means at least this fraction fewer iterations.
TOY_MARGIN = 0.10
#: Accuracy above which a digits run counts as trained (for "epochs to reach").
ACC_TARGET = 95.0
#: A least-squares run "converges linearly" when log10(loss) against steps fits a
#: line this well after the transient (see adaloss_b0.linear_rate).
MIN_R2 = 0.95


@dataclass
class Verdict:
    claim: str
    outcome: str
    evidence: str


# =========================================================================== helpers


def _within_noise(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    """Two (mean, std) pairs differ by no more than the larger std."""
    return abs(a[0] - b[0]) <= max(a[1], b[1])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _iters(r: ToyRun) -> str:
    hit = r.iters_to_tol()
    return str(hit) if hit is not None else "never"


def _count_phrase(k: int, n: int) -> str:
    return f"{k} of {n}"


# =========================================================================== study 1


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
    return _table(header, rows)


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
    return _table(["lr", "eps", *TOY_OPTIMIZERS], rows)


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


# =========================================================================== study 2


@dataclass
class Cell:
    mean: float
    std: float
    diverged: int
    n: int

    def text(self, digits: int = 2) -> str:
        if self.diverged == self.n:
            return f"N/A (diverged {self.diverged}/{self.n})"
        s = fmt_pm(self.mean, self.std, digits)
        return s + (f" ({self.diverged}/{self.n} diverged)" if self.diverged else "")


def _cell(runs: Sequence[B0Run]) -> Cell:
    mean, std = mean_std([r.score for r in runs if not r.diverged])
    return Cell(mean, std, sum(r.diverged for r in runs), len(runs))


def _b0_table(study: B0Study, problem: str) -> str:
    rows = [[f"{b0:g}"] + [_cell(study.cell(problem, m, b0)).text() for m in METHODS] for b0 in B0S]
    return _table(["b0", *METHODS], rows)


def _steps_table(study: B0Study) -> str:
    rows = []
    for b0 in B0S:
        row = [f"{b0:g}"]
        for m in METHODS:
            steps = [r.steps_to_target for r in study.cell("linreg", m, b0)]
            reached = [s for s in steps if s is not None]
            mean, std = mean_std([float(s) for s in reached])
            row.append(f"{fmt_pm(mean, std, 0)} ({len(reached)}/{len(steps)})" if reached else f"never (0/{len(steps)})")
        rows.append(row)
    return _table(["b0", *METHODS], rows)


def _rate_table(study: B0Study) -> str:
    rows = []
    for b0 in B0S:
        row = [f"{b0:g}"]
        for m in METHODS:
            fits = [linear_rate(r.curve) if not r.diverged else None for r in study.cell("linreg", m, b0)]
            ok = [f for f in fits if f is not None]
            if not ok:
                row.append("no fit")
                continue
            slope = mean_std([f[0] for f in ok])
            r2 = min(f[1] for f in ok)
            row.append(f"{slope[0]:.2f}±{slope[1]:.2f} (min R² {r2:.3f}, {len(ok)}/{len(fits)})")
        rows.append(row)
    return _table(["b0", *METHODS], rows)


def spread(study: B0Study, problem: str, method: str, b0s: Sequence[float] = B0S) -> Tuple[float, float]:
    """(max - min of the cell means over ``b0s``, the largest cell std); the spread
    is infinite when some seed diverged in some cell (the method failed there)."""
    cells = [_cell(study.cell(problem, method, b0)) for b0 in b0s]
    if any(c.diverged for c in cells):
        return math.inf, math.nan
    means = [c.mean for c in cells]
    return max(means) - min(means), max(c.std for c in cells)


def _compare_spreads(mine: Tuple[float, float], other: Tuple[float, float], unit: str) -> Tuple[str, str]:
    """How AdaLoss's spread compares with another method's: (words, "more"/"less"/"same")
    where "more" means AdaLoss is more robust."""
    if math.isinf(mine[0]) and math.isinf(other[0]):
        return "both diverged at some b0", "same"
    if math.isinf(other[0]):
        return "more robust (it diverged at some b0, AdaLoss did not)", "more"
    if math.isinf(mine[0]):
        return "less robust (AdaLoss diverged at some b0, it did not)", "less"
    if abs(mine[0] - other[0]) <= max(mine[1], other[1]):
        return f"as robust (spreads {mine[0]:.2f} vs {other[0]:.2f} {unit} differ by less than a seed std)", "same"
    if mine[0] < other[0]:
        return f"more robust (spread {mine[0]:.2f} vs {other[0]:.2f} {unit})", "more"
    return f"less robust (spread {mine[0]:.2f} vs {other[0]:.2f} {unit})", "less"


def b0_robust_verdict(study: B0Study, problem: str, title: str, unit: str) -> Verdict:
    """AdaLoss at least as robust to b0 as each baseline, strictly more than one."""
    mine = spread(study, problem, "AdaLoss")
    comparisons, more, less = [], [], []
    for m in METHODS[1:]:
        word, order = _compare_spreads(mine, spread(study, problem, m), unit)
        {"more": more, "less": less}.get(order, []).append(m)
        comparisons.append(f"vs {m}: {word}")
    if less:
        outcome = NOT_HELD if not more else PARTLY
    elif more:
        outcome = HELD
    else:
        outcome = UNDECIDED
    mine_txt = "diverged at some b0" if math.isinf(mine[0]) else f"{mine[0]:.2f} {unit} across b0"
    return Verdict(
        f"AdaLoss is robust to b0 ({title})",
        outcome,
        f"AdaLoss's spread: {mine_txt}; " + "; ".join(comparisons)
        + ". (Rule: held = at least as robust as every baseline and more robust than at least one.)",
    )


def _steps_cell(runs: Sequence[B0Run]) -> Optional[Cell]:
    """Least squares: steps to LINREG_TARGET as a cell, when every seed got there."""
    steps = [r.steps_to_target for r in runs]
    if any(s is None for s in steps):
        return None
    mean, std = mean_std([float(s) for s in steps])
    return Cell(mean, std, 0, len(steps))


def _small_b0_cells(study: B0Study, problem: str, b0: float) -> Tuple[Cell, Cell, bool, str]:
    """(AdaLoss cell, AdaGrad-Norm cell, higher is better, what is compared). On least
    squares the final losses both sit at the floor when both solve it, so the
    comparison is by steps to the target there, and by final loss otherwise."""
    a_runs, g_runs = study.cell(problem, "AdaLoss", b0), study.cell(problem, "AdaGrad-Norm", b0)
    if problem == "linreg":
        a_steps, g_steps = _steps_cell(a_runs), _steps_cell(g_runs)
        if a_steps is not None and g_steps is not None:
            return a_steps, g_steps, False, f"steps to {LINREG_TARGET:g}"
        return _cell(a_runs), _cell(g_runs), False, "log10 final loss ratio"
    return _cell(a_runs), _cell(g_runs), True, "test accuracy %"


def small_b0_verdict(study: B0Study, problem: str, title: str) -> Verdict:
    """The seed's table pattern at small b0: AdaLoss at b0 in {0.01, 0.1} against AdaGrad-Norm."""
    better, same, worse = [], [], []
    for b0 in (0.01, 0.1):
        a, g, higher_is_better, what = _small_b0_cells(study, problem, b0)
        item = f"b0={b0:g} ({what}: {a.text()} vs {g.text()})"
        if a.diverged or g.diverged:
            (worse if a.diverged else better).append(item)
        elif _within_noise((a.mean, a.std), (g.mean, g.std)):
            same.append(item)
        elif (a.mean > g.mean) == higher_is_better:
            better.append(item)
        else:
            worse.append(item)
    outcome = HELD if better and not worse and not same else NOT_HELD if worse or not better else PARTLY
    parts = []
    for word, items in (("better", better), ("within a seed std", same), ("worse", worse)):
        if items:
            parts.append(f"{word} at " + ", ".join(items))
    return Verdict(
        f"At small b0 AdaLoss beats AdaGrad-Norm, as in the seed's table ({title})",
        outcome,
        "AdaLoss vs AdaGrad-Norm: " + "; ".join(parts) + ".",
    )


def linear_rate_verdict(study: B0Study) -> Verdict:
    """AdaLoss's least-squares loss falls on a straight line in log scale at every b0."""
    lines, passed, total, undecided = [], 0, 0, 0
    for b0 in B0S:
        fits = [linear_rate(r.curve) if not r.diverged else None for r in study.cell("linreg", "AdaLoss", b0)]
        good = sum(f is not None and f[1] >= MIN_R2 and f[0] < 0 for f in fits)
        missing = sum(f is None for f in fits)
        passed += good
        total += len(fits)
        undecided += missing
        lines.append(f"b0={b0:g}: {good}/{len(fits)}" + (f" ({missing} not fittable)" if missing else ""))
    if passed == total:
        outcome = HELD
    elif passed + undecided == total:
        outcome = UNDECIDED
    else:
        outcome = NOT_HELD
    return Verdict(
        "AdaLoss converges linearly on realisable least squares (the paper's theorem)",
        outcome,
        f"Runs whose log10(loss) fits a falling straight line with R² >= {MIN_R2} after the transient: "
        + "; ".join(lines) + ".",
    )


def section_b0(study: B0Study) -> Tuple[str, List[Verdict]]:
    n_seeds = len(study.seeds)
    v_lin_robust = b0_robust_verdict(study, "linreg", "least squares", "decades")
    v_dig_robust = b0_robust_verdict(study, "digits", "digits MLP", "points")
    v_lin_small = small_b0_verdict(study, "linreg", "least squares")
    v_dig_small = small_b0_verdict(study, "digits", "digits MLP")
    v_rate = linear_rate_verdict(study)
    verdicts = [v_lin_robust, v_lin_small, v_rate, v_dig_robust, v_dig_small]
    parts = [
        "## 2. AdaLoss's robustness to b0",
        "",
        "**Seed claim** (002): with the step eta/b_t and b_0 anywhere in {0.01, 0.1, 1, 10, 100}, "
        "AdaLoss stays accurate (ViT-S/16 on CIFAR-100: 89.54-90.79 %), while AdaGrad-Norm drops at small "
        "b0 (61.79 % at b0 = 0.01) and SGD with a constant step eta/b0 fails (N/A) at b0 <= 0.1; "
        "the paper proves linear convergence for linear regression. Mean and std over 5 runs.",
        "",
        "Setup (the same for the four methods; only the rule for b_t differs):",
        "",
        f"* least squares: realisable (noiseless) y = X w*, X {LINREG_N} x {LINREG_D} Gaussian, "
        f"w* ~ N(0, I/{LINREG_D}), loss 0.5 mean((Xw - y)^2) on mini-batches of {LINREG_BATCH} drawn with "
        f"replacement, w from 0, float64, eta = {ETA['linreg']:g}, {study.linreg_steps} steps; "
        f"score = log10(full loss after the last step / at the start), floored at log10({LINREG_FLOOR:g}) = "
        f"{math.log10(LINREG_FLOOR):.0f} (differences below that are rounding);",
        f"* digits: the MLP 64-{DIGITS_HIDDEN}-10 (ReLU) of `examples/train_digits.py`, cross-entropy, mini-batches "
        f"of {DIGITS_BATCH}, eta = {ETA['digits']:g}, {study.digits_epochs} epochs; score = test accuracy (%);",
        f"* eta: {ETA['digits']:g} rather than the seed's 0.1, because the seed fine-tunes a pretrained model; see "
        "`ETA` in `_claims/adaloss_b0.py`; no weight decay and no momentum (the seed's runs use "
        "weight decay 1e-4, which matters for fine-tuning a large model, not here);",
        f"* seeds {list(study.seeds)} ({n_seeds} runs per cell); each seed sets the data (least squares), the "
        "model's initial weights (digits) and the mini-batch order, identically for the four methods;",
        "* \"diverged\" = a NaN or infinite loss; cells where every seed diverged read N/A, as in the seed; "
        "a method's *spread* is the max - min of its cell means over b0 (infinite if it diverged anywhere), and two "
        "spreads or means are \"within noise\" when they differ by less than the larger seed std involved.",
        "",
        f"### Least squares: log10(final loss / initial loss), mean±std over {n_seeds} seeds (lower is better)",
        "",
        _b0_table(study, "linreg"),
        "",
        f"Steps until the loss is {LINREG_TARGET:g} of its start, mean±std over the seeds that got there "
        "(how many in brackets):",
        "",
        _steps_table(study),
        "",
        "Rate after the transient: decades of loss per 100 steps, fitted to log10(loss) (mean±std over seeds; "
        "the smallest R² of the fits; how many runs could be fitted):",
        "",
        _rate_table(study),
        "",
    ]
    for v in (v_lin_robust, v_lin_small, v_rate):
        parts.append(f"* **{v.outcome}** — {v.claim}. {v.evidence}")
    parts += [
        "",
        f"### Digits MLP: test accuracy (%) after {study.digits_epochs} epochs, mean±std over {n_seeds} seeds",
        "",
        _b0_table(study, "digits"),
        "",
    ]
    for v in (v_dig_robust, v_dig_small):
        parts.append(f"* **{v.outcome}** — {v.claim}. {v.evidence}")
    parts += ["", "![score against b0](adaloss_b0.png)", "",
              "![least-squares loss curves](adaloss_linreg_curves.png)", ""]
    return "\n".join(parts), verdicts


# =========================================================================== study 3


@dataclass
class ConfigSummary:
    label: str
    family: str
    kappa_spec: Any
    kappa: Tuple[float, float]
    acc: Tuple[float, float]
    loss: Tuple[float, float]
    jitter: Tuple[float, float]
    epochs_to_target: str
    lr_first: float
    lr_last: float
    lr_peak_epoch: int
    diverged: int
    n: int


def summarise(runs: Sequence[DigitsRun], steps_per_epoch: int) -> ConfigSummary:
    ok = [r for r in runs if not r.diverged]
    hits = [first_epoch_reaching(r.test_acc, ACC_TARGET) for r in runs]
    reached = [h for h in hits if h is not None]
    lr = np.nanmean(np.array([r.lr for r in ok]), axis=0) if ok else np.full(1, np.nan)
    return ConfigSummary(
        label=runs[0].label, family=runs[0].family, kappa_spec=runs[0].kappa_spec,
        kappa=mean_std([r.kappa for r in runs]) if runs[0].kappa is not None else (math.nan, math.nan),
        acc=mean_std([r.test_acc[-1] for r in ok]),
        loss=mean_std([r.train_loss[-1] for r in ok]),
        jitter=mean_std([jitter(r.batch_losses, steps_per_epoch) for r in ok]),
        epochs_to_target=(f"{np.mean(reached):.1f} ({len(reached)}/{len(runs)})" if reached else f"never (0/{len(runs)})"),
        lr_first=float(lr[0]), lr_last=float(lr[-1]),
        lr_peak_epoch=int(np.nanargmax(lr)) + 1 if np.isfinite(lr).any() else 0,
        diverged=len(runs) - len(ok), n=len(runs),
    )


def _adalo_table(summaries: Sequence[ConfigSummary]) -> str:
    rows = []
    for s in summaries:
        kappa = "" if math.isnan(s.kappa[0]) else (
            f"{s.kappa[0]:.3g}" + (f"±{s.kappa[1]:.2g}" if s.kappa[1] > 0 else "")
        )
        rows.append([
            s.label, kappa, fmt_pm(s.acc[0], s.acc[1]), fmt_pm(s.loss[0], s.loss[1], 3),
            s.epochs_to_target, fmt_pm(s.jitter[0], s.jitter[1], 3),
            f"{s.lr_first:.3g} → {s.lr_last:.3g}", f"{s.diverged}/{s.n}",
        ])
    return _table(
        ["configuration", "kappa used", "final test acc (%)", "final train loss", f"epochs to {ACC_TARGET:g} % test",
         "loss jitter", "lr: epoch 1 → last", "diverged"],
        rows,
    )


def _mode_summaries(summaries: Sequence[ConfigSummary], mode: str) -> List[ConfigSummary]:
    """The mode's configurations sorted by the kappa actually used."""
    return sorted([s for s in summaries if s.family == mode], key=lambda s: s.kappa[0])


def adalo_vs_adam_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    adalo = [s for s in summaries if s.family != "Adam" and not math.isnan(s.acc[0])]
    adam = [s for s in summaries if s.family == "Adam" and not math.isnan(s.acc[0])]
    best_adalo = max(adalo, key=lambda s: s.acc[0])
    best_adam = max(adam, key=lambda s: s.acc[0])
    default = [s for s in adalo if s.family == "adversarial" and s.kappa_spec == 3.0]
    if _within_noise(best_adalo.acc, best_adam.acc):
        outcome, word = HELD, "within a seed std of"
    elif best_adalo.acc[0] > best_adam.acc[0]:
        outcome, word = HELD, "above"
    else:
        outcome, word = NOT_HELD, "below"
    evidence = (
        f"Best AdaLo ({best_adalo.label}) {fmt_pm(*best_adalo.acc)} % is {word} the best Adam "
        f"({best_adam.label}) {fmt_pm(*best_adam.acc)} % (best of {len(adalo)} AdaLo configurations against "
        f"best of {len(adam)} Adam learning rate(s), which favours AdaLo)."
    )
    if default:
        d = default[0]
        rel = "within a seed std of" if _within_noise(d.acc, best_adam.acc) else (
            "above" if d.acc[0] > best_adam.acc[0] else "below")
        evidence += f" The seed's default (adversarial, kappa=3) reached {fmt_pm(*d.acc)} %, {rel} Adam."
    return Verdict("AdaLo, with no learning-rate schedule, trains as well as Adam (digits test accuracy)",
                   outcome, evidence)


def _is_best(s: ConfigSummary, group: Sequence[ConfigSummary]) -> str:
    """'best', 'within noise of the best' or 'worse than the best' by final test accuracy."""
    best = max(group, key=lambda x: x.acc[0] if not math.isnan(x.acc[0]) else -1)
    if s is best:
        return "best"
    if not math.isnan(s.acc[0]) and _within_noise(s.acc, best.acc):
        return "within noise of the best"
    return "worse than the best"


def kappa_rule_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """kappa = 0.2-0.3 x initial loss (the seed's rule for ImageNet/CIFAR)."""
    parts, ok = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        rules = [s for s in group if isinstance(s.kappa_spec, str)]
        if not rules:
            continue
        best = max(group, key=lambda x: x.acc[0] if not math.isnan(x.acc[0]) else -1)
        for s in rules:
            rank = _is_best(s, group)
            ok.append(rank != "worse than the best")
            parts.append(f"{mode}: {kappa_label(s.kappa_spec)} (kappa≈{s.kappa[0]:.2f}) {fmt_pm(*s.acc)} % is {rank}"
                         + ("" if rank == "best" else f" ({best.label}: {fmt_pm(*best.acc)} %)"))
    outcome = HELD if ok and all(ok) else NOT_HELD if ok and not any(ok) else PARTLY if ok else UNDECIDED
    return Verdict("The kappa rule of thumb kappa = 0.2-0.3 x initial loss gives the best kappa",
                   outcome, "; ".join(parts) + ".")


def kappa_default_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """kappa = 3 as the starting point for small data sets."""
    parts, ok = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        three = [s for s in group if s.kappa_spec == 3.0]
        if not three:
            continue
        rank = _is_best(three[0], group)
        ok.append(rank != "worse than the best")
        best = max(group, key=lambda x: x.acc[0] if not math.isnan(x.acc[0]) else -1)
        parts.append(f"{mode}: kappa=3 {fmt_pm(*three[0].acc)} % is {rank}"
                     + ("" if rank == "best" else f" ({best.label}: {fmt_pm(*best.acc)} %)"))
    outcome = HELD if ok and all(ok) else NOT_HELD if ok and not any(ok) else PARTLY if ok else UNDECIDED
    return Verdict("For a small data set, kappa = 3 (the default) is a good starting point",
                   outcome, "; ".join(parts) + ".")


def _trend(values: Sequence[float]) -> str:
    """'decreasing', 'increasing', 'overall down', 'overall up' or 'flat' along the sequence."""
    v = [x for x in values if not math.isnan(x)]
    if len(v) < 2:
        return "undetermined"
    diffs = np.diff(v)
    if (diffs < 0).all():
        return "decreasing"
    if (diffs > 0).all():
        return "increasing"
    return "overall down" if v[-1] < v[0] else "overall up" if v[-1] > v[0] else "flat"


def kappa_noise_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """'Increase kappa if the loss curve is noisy': the jitter must fall as kappa grows."""
    parts, trends = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        trend = _trend([s.jitter[0] for s in group])
        trends.append(trend)
        parts.append(f"{mode}: jitter " + ", ".join(f"{s.jitter[0]:.3f} (kappa≈{s.kappa[0]:.2g})" for s in group)
                     + f" — {trend} as kappa grows")
    outcome = HELD if all(t == "decreasing" for t in trends) else (
        PARTLY if any(t in ("decreasing", "overall down") for t in trends) else
        UNDECIDED if all(t == "undetermined" for t in trends) else NOT_HELD)
    return Verdict("A larger kappa makes the loss curve less noisy (\"increase kappa if the loss curve is noisy\")",
                   outcome, "; ".join(parts) + ".")


def kappa_speed_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """'Decrease kappa if convergence is too slow': the final training loss must
    grow with kappa (a smaller kappa converges further in the same epochs)."""
    parts, trends = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        trend = _trend([s.loss[0] for s in group])
        trends.append(trend)
        parts.append(f"{mode}: final train loss " + ", ".join(f"{s.loss[0]:.3f} (kappa≈{s.kappa[0]:.2g})" for s in group)
                     + f" — {trend} as kappa grows")
    outcome = HELD if all(t == "increasing" for t in trends) else (
        PARTLY if any(t in ("increasing", "overall up") for t in trends) else NOT_HELD)
    return Verdict("A smaller kappa converges faster (\"decrease kappa if convergence is too slow\")",
                   outcome, "; ".join(parts) + ".")


def lr_decay_verdict(study: AdaLoStudy) -> Verdict:
    """'The effective learning rate decreases automatically as training converges':
    lr_t at the last epoch below its value after the first epoch, per run."""
    if study.epochs < 2:
        return Verdict("AdaLo's effective learning rate decreases automatically as training converges",
                       UNDECIDED, "One epoch only: no trend to measure.")
    parts, fractions = [], []
    for mode in MODES:
        runs = [r for r in study.runs if r.family == mode and not r.diverged]
        down = sum(r.lr[-1] < r.lr[0] for r in runs)
        fractions.append(down / len(runs) if runs else math.nan)
        ratio = np.nanmedian([r.lr[-1] / r.lr[0] for r in runs]) if runs else math.nan
        own = np.nanmedian([lr_against_constant_loss(r) for r in runs]) if runs else math.nan
        effect = "raised" if own > 1 else "lowered" if own < 1 else "did not change"
        parts.append(
            f"{mode}: lr_t fell from epoch 1 to the last in {down}/{len(runs)} runs (median last/first ratio "
            f"{ratio:.2f}); against a loss frozen at L0 (same steps, same EMA warm-up) the falling loss "
            f"{effect} the final lr_t by a median factor {own:.2f}"
        )
    outcome = HELD if all(f == 1 for f in fractions) else NOT_HELD if all(f == 0 for f in fractions) else PARTLY
    return Verdict("AdaLo's effective learning rate decreases automatically as training converges",
                   outcome, "; ".join(parts) + ". (By construction adversarial lr_t = EMA(1/(2+L))/kappa rises as "
                   "L falls, and it also rises while the zero-initialised EMA warms up; compliant lr_t = "
                   "(1 - EMA)/kappa falls on both counts.)")


def section_adalo(study: AdaLoStudy) -> Tuple[str, List[Verdict]]:
    summaries = [summarise(study.of(label), study.steps_per_epoch) for label in study.labels()]
    verdicts = [
        adalo_vs_adam_verdict(summaries), kappa_rule_verdict(summaries), kappa_default_verdict(summaries),
        kappa_noise_verdict(summaries), kappa_speed_verdict(summaries), lr_decay_verdict(study),
    ]
    l0 = mean_std([r.initial_loss for r in study.runs])
    parts = [
        "## 3. AdaLo on digits: modes, kappa and the rule of thumb",
        "",
        "**Seed claims** (000): no scheduler needed; \"the effective learning rate decreases automatically as "
        "training converges\"; kappa rule of thumb: \"kappa = 0.2 ~ 0.3 × initial_loss\" for ImageNet / "
        "CIFAR-10 / CIFAR-100, and for a smaller data set \"start with kappa = 3.0 (default) and increase if "
        "loss curve is noisy, decrease if convergence is too slow\"; two modes, adversarial (loss up, lr down) "
        "and compliant (loss up, lr up).",
        "",
        f"Setup: the digits MLP 64-{DIGITS_HIDDEN}-10 (ReLU), mini-batches of {DIGITS_BATCH} "
        f"({study.steps_per_epoch} steps per epoch), {study.epochs} epochs, seeds {list(study.seeds)}; AdaLo with "
        "the seed's defaults (betas (0.9, 0.999), weight_decay 1e-2, eps 1e-8), kappa in "
        f"{{{', '.join(kappa_label(k) for k in study.kappas)}}}, where L0 is each run's initial training loss "
        f"(measured: {fmt_pm(*l0, 3)}); Adam at lr {{{', '.join(f'{x:g}' for x in study.adam_lrs)}}}. "
        "Loss jitter = std of the mini-batch loss relative to its one-epoch moving average over the last third of "
        "training (NaN when the run is shorter than three epochs). Values are mean±std over seeds; \"within "
        "noise\" = closer than the larger std.",
        "",
        _adalo_table(summaries),
        "",
    ]
    for v in verdicts:
        parts.append(f"* **{v.outcome}** — {v.claim}. {v.evidence}")
    parts += ["", "![AdaLo on digits](adalo_digits.png)", ""]
    return "\n".join(parts), verdicts


# =========================================================================== whole report


def _implementations(study: AdaLoStudy) -> str:
    impls: Dict[str, str] = {}
    impls.update({f"{k} (study 1)": v for k, v in toy_impls().items()})
    impls.update({f"{k} (study 2)": v for k, v in b0_impls().items()})
    impls.update({f"{k} (study 3)": v for k, v in adalo_impls(study.adam_lrs).items()})
    return _table(["optimizer", "implementation"], [[k, v] for k, v in impls.items()])


def build(
    budget: Budget, toy: ToyStudy, b0: B0Study, adalo: AdaLoStudy,
    figures: Sequence[str], seconds: float, threads: int,
) -> str:
    """The whole report.md."""
    s1, v1 = section_toys(toy)
    s2, v2 = section_b0(b0)
    s3, v3 = section_adalo(adalo)
    verdicts = v1 + v2 + v3
    summary = _table(["claim", "verdict", "evidence"],
                     [[v.claim, f"**{v.outcome}**", v.evidence] for v in verdicts])
    counts = {o: sum(v.outcome == o for v in verdicts) for o in (HELD, PARTLY, NOT_HELD, UNDECIDED)}
    header = [
        "# Seed claims, measured",
        "",
        f"Generated by `benchmarks/seed_claims.py` ({budget.name} preset) on "
        f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}: torch {torch.__version__}, CPU "
        f"({platform.processor() or platform.machine()}), {threads} thread(s), {seconds:.0f} s of runs. "
        "Every verdict below is computed from the numbers in the tables by the rule stated next to it; "
        "nothing is written in advance.",
        "",
        f"Of {len(verdicts)} checks: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n) + ".",
    ]
    if budget.name != "full":
        header += ["", f"**This is the {budget.name} preset**: fewer iterations and a smaller grid than the full run "
                   "(`python benchmarks/seed_claims.py`); verdicts may change with the full budget."]
    return "\n".join(header + [
        "",
        "## Implementations",
        "",
        _implementations(adalo),
        "",
        "## Summary",
        "",
        summary,
        "",
        s1, s2, s3,
        "## Caveats",
        "",
        "* The seeds' experiments are CIFAR/ImageNet-scale; these are CPU-sized stand-ins (digits, a 2-D "
        "function, a 20-dimensional least-squares problem). A verdict here says what happens on these "
        "problems, not on the seeds' ones.",
        "* AdaLoss and AdaGrad-Norm (as written here and in the paper) add the current loss / squared gradient "
        "norm to b^2 before taking the step, so a b0^2 far below the first loss (or ||g||^2) hardly changes even "
        "the first step; the official AdaGrad-Norm code used for the seed's table is a per-row variant whose "
        "accumulator starts at b0^4, which may explain part of the gap to the seed's AdaGrad-Norm column.",
        "* Only the seeds' stated settings are reproduced; everything the seeds leave open (learning-rate "
        "grids, eta, x0 for Rosenbrock, iteration counts) is stated above and is the same for every optimizer "
        "in a comparison.",
        "* Figures: " + ", ".join(f"`{f}`" for f in figures) + "; the numbers behind the tables are in `results.json`.",
        "",
    ])


def numbers(toy: ToyStudy, b0: B0Study, adalo: AdaLoStudy) -> Dict[str, Any]:
    """The measured values behind the report, JSON-ready."""
    def clean(x: float) -> Optional[float]:
        return float(x) if x is not None and math.isfinite(x) else None

    return {
        "toy": [
            {"problem": r.problem, "optimizer": r.optimizer, "lr": r.lr, "eps": r.eps,
             "final": clean(r.final), "iters_to_tol": r.iters_to_tol(), "final_x": list(r.final_x),
             "diverged": r.diverged}
            for r in toy.runs
        ],
        "adaloss_b0": [
            {"problem": r.problem, "method": r.method, "b0": r.b0, "seed": r.seed, "score": clean(r.score),
             "diverged": r.diverged, "steps_to_target": r.steps_to_target}
            for r in b0.runs
        ],
        "adalo_digits": [
            {"label": r.label, "seed": r.seed, "kappa": r.kappa, "initial_loss": r.initial_loss,
             "test_acc": [clean(x) for x in r.test_acc], "train_loss": [clean(x) for x in r.train_loss],
             "lr": [clean(x) for x in r.lr], "diverged": r.diverged}
            for r in adalo.runs
        ],
    }
