"""The PNG figures. Each function draws one figure from a study's results and
returns the file name it wrote (relative to the output folder)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .adalo_digits import AdaLoStudy  # noqa: E402
from .adaloss_b0 import B0S, LINREG_FLOOR, METHODS, B0Study  # noqa: E402
from .problems import TOY_PROBLEMS, three_hump_camel  # noqa: E402
from .toys import TOY_OPTIMIZERS, TOY_TOL, ToyStudy  # noqa: E402

#: Objective values are drawn down to this (a log axis cannot show 0).
PLOT_FLOOR = 1e-32
#: Line styles per optimizer, so that identical curves (Adam and EAdam often are) stay visible.
STYLES = {"AdamL": "-", "Adam": "--", "EAdam": ":", "AdaBelief": "-."}


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


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
    return _save(fig, out, "toy_objective.png")


def plot_thc_paths(study: ToyStudy, out: Path) -> str:
    """Three-Hump Camel contours with every optimizer's path at its best grid point
    (which minimum a run ends in is the claim's "global vs local")."""
    problem = TOY_PROBLEMS[0]
    xs, ys = np.meshgrid(np.linspace(-2.5, 2.5, 300), np.linspace(-4.5, 2.0, 300))
    import torch

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
    return _save(fig, out, "toy_three_hump_paths.png")


def plot_b0_table(study: B0Study, out: Path) -> str:
    """Final score against b0 for the four methods (mean and std over seeds);
    an x at the axis marks a cell where some seed diverged."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    titles = {
        "linreg": (f"least squares: log10(final / initial loss) after {study.linreg_steps} steps", "log10 loss ratio"),
        "digits": (f"digits MLP: test accuracy after {study.digits_epochs} epochs", "test accuracy (%)"),
    }
    for ax, problem in zip(axes, ("linreg", "digits")):
        for k, method in enumerate(METHODS):
            means, stds, bad = [], [], []
            for b0 in B0S:
                cell = study.cell(problem, method, b0)
                vals = np.array([r.score for r in cell if not r.diverged])
                means.append(vals.mean() if vals.size else np.nan)
                stds.append(vals.std(ddof=1) if vals.size > 1 else 0.0)
                bad.append(any(r.diverged for r in cell))
            shift = 1 + 0.04 * (k - 1.5)  # side by side on the log axis
            x = np.array(B0S) * shift
            line = ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=method)
            for xi, b in zip(x, bad):
                if b:
                    ax.plot(xi, 0, "x", color=line[0].get_color(), ms=10, mew=2, transform=ax.get_xaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel("b0")
        ax.set_title(titles[problem][0], fontsize=10)
        ax.set_ylabel(titles[problem][1])
        ax.legend(fontsize=8)
    axes[0].axhline(np.log10(LINREG_FLOOR), color="grey", ls=":", lw=1)
    return _save(fig, out, "adaloss_b0.png")


def plot_linreg_curves(study: B0Study, out: Path) -> str:
    """Least-squares loss against steps (log scale), one line per b0, seed-median:
    a straight line is the linear rate the AdaLoss paper proves."""
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.2 * len(METHODS), 3.8))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(B0S)))
    low, high = LINREG_FLOOR * 1e-4, 1e4  # fixed limits: diverging runs reach 1e300 first
    for ax, method in zip(axes, METHODS):
        for color, b0 in zip(colors, B0S):
            curves = np.array([r.curve for r in study.cell("linreg", method, b0)])
            curves = np.where(np.isfinite(curves), curves, np.nan)
            with warnings.catch_warnings():  # all-NaN steps (every seed diverged) plot as gaps
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(np.clip(curves, low, high), axis=0)
            ax.plot(median, color=color, label=f"b0={b0:g}", lw=1.3)
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("step")
    axes[0].set_ylabel("full loss / initial (median over seeds)")
    axes[0].legend(fontsize=8)
    return _save(fig, out, "adaloss_linreg_curves.png")


def plot_adalo(study: AdaLoStudy, out: Path) -> str:
    """Test accuracy, training loss and learning rate per epoch (mean over seeds)."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    epochs = np.arange(1, study.epochs + 1)
    styles = {"adversarial": "-", "compliant": "--", "Adam": "-"}
    for label in study.labels():
        runs = study.of(label)
        style = styles[runs[0].family]
        color = "black" if runs[0].family == "Adam" else None
        for ax, attr in zip(axes, ("test_acc", "train_loss", "lr")):
            data = np.array([getattr(r, attr) for r in runs])
            with warnings.catch_warnings():  # epochs after every seed diverged plot as gaps
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(data, axis=0)
            ax.plot(epochs, mean, style, color=color, label=label, lw=1.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_ylim(max(0.0, axes[0].get_ylim()[0]), 100)
    axes[1].set_ylabel("training cross-entropy")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("learning rate (AdaLo: lr_t)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"digits MLP, mean over seeds {list(study.seeds)}")
    return _save(fig, out, "adalo_digits.png")


def make_all(toy: ToyStudy, b0: B0Study, adalo: AdaLoStudy, out: Path) -> List[str]:
    return [
        plot_toy_curves(toy, out),
        plot_thc_paths(toy, out),
        plot_b0_table(b0, out),
        plot_linreg_curves(b0, out),
        plot_adalo(adalo, out),
    ]
